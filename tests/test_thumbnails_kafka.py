"""Event thumbnails on the real stack: stored by the analyzer, served signed, merged away, purged.

The four services run as processes on a real broker (``livestream.stack``); the source is the
live scripted test stream on loopback, with scenes longer than a chunk so that detections merge
across chunks (and thumbnails are merged away). The test reads what a user reads (the API, the
signed URLs, without a key) and checks the blob store (the stack's local recording directory)
directly.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from PIL import Image

from analyzer.thumbnails import pixel_box
from ingest.storage import directory_name, thumbnail_key
from livestream.blobstore import BlobStore
from livestream.blobstore.local import LocalBlobStore
from livestream.blobstore.testing import REGION, dummy_aws_credentials, moto_s3_server
from livestream.kafka.admin import ensure_topics
from livestream.kafka.testing import TopicRecorder
from livestream.stack import Stack, stack_for_tests
from livestream.testsource import LiveHlsSource, short_script
from schemas.records import ChunkRecord, Event, Frame, PurgeSession, SessionEvent
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model]

CHUNK_SECONDS = 2.0
SCENE_SECONDS = 6.0  # three chunks per scene: the cat and the cup are each merged across chunks
QUERY = "detect a cat or a cup"
PLAYBACK_SECRET = secrets.token_hex(24)


@pytest.fixture(scope="module")
def thumbnail_topics(kafka_bootstrap: str) -> Topics:
    topics = Topics(prefix=f"thumb{secrets.token_hex(4)}", partitions=3)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.specs()))
    return topics


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, thumbnail_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with stack_for_tests(
        kafka_bootstrap,
        thumbnail_topics.prefix,
        tmp_path_factory.mktemp("thumbnail-stack"),
        extra_env={
            "LIVESTREAM_INGEST_CHUNK_SECONDS": str(CHUNK_SECONDS),
            "LIVESTREAM_API_PLAYBACK_SECRET": PLAYBACK_SECRET,
            # The default grace before merged-away thumbnails are deleted (10 s) stays: the test's
            # own consumer looks at each thumbnail as its event arrives, well within it.
        },
    ) as stack:
        yield stack


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(0.3)


def rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def outline_difference(
    thumbnail: np.ndarray, raw: np.ndarray, box: tuple[float, float, float, float]
) -> float:
    """Mean absolute difference of the two pictures along the box's outline (3 pixels wide)."""
    height, width = raw.shape[:2]
    left, top, right, bottom = pixel_box(box, width, height)
    mask = np.zeros((height, width), dtype=bool)
    mask[top : bottom + 1, left : left + 3] = mask[top : bottom + 1, max(left, right - 2) : right + 1] = True
    mask[top : top + 3, left : right + 1] = mask[max(top, bottom - 2) : bottom + 1, left : right + 1] = True
    return float(np.abs(thumbnail[mask] - raw[mask]).mean())


def inside_difference(
    thumbnail: np.ndarray, raw: np.ndarray, box: tuple[float, float, float, float]
) -> float:
    """Mean absolute difference in the middle of the box (untouched by the drawing)."""
    height, width = raw.shape[:2]
    left, top, right, bottom = pixel_box(box, width, height)
    dx, dy = (right - left) // 4, (bottom - top) // 4
    region = (slice(top + dy, bottom - dy + 1), slice(left + dx, right - dx + 1))
    return float(np.abs(thumbnail[region] - raw[region]).mean())


def tampered(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    sig = query["sig"][0]
    forged = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    return f"{parts.scheme}://{parts.netloc}{parts.path}?expires={query['expires'][0]}&sig={forged}"


class ThumbnailWatcher:
    """A consumer of the raw events topic that looks for each event's thumbnail as it arrives:
    the analyzer stores it before it produces the event, so it is there already."""

    def __init__(self, bootstrap: str, topic: str, store: BlobStore) -> None:
        self.seen: dict[str, bool] = {}  # event_id -> its thumbnail existed when the event arrived
        self._bootstrap, self._topic, self._store = bootstrap, topic, store
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            self._topic, bootstrap_servers=self._bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        self._ready.set()
        try:
            while not self._stop.is_set():
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for record in records:
                        event = Event.model_validate_json(record.value)
                        if event.thumbnail_event_id is not None:
                            key = thumbnail_key(event.session_id, event.thumbnail_event_id)
                            self.seen[event.event_id] = self._store.stat(key) is not None
        finally:
            await consumer.stop()

    def __enter__(self) -> ThumbnailWatcher:
        self._thread.start()
        assert self._ready.wait(30), "the thumbnail watcher did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


async def produce_purge(bootstrap: str, topic: str, session_id: str, stream_id: str) -> None:
    """What the aggregator's retention timer sends once a session's retention ran out."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        command = PurgeSession(session_id=session_id, stream_id=stream_id, reason="test")
        await producer.send_and_wait(topic, command.to_bytes(), key=session_id.encode())
    finally:
        await producer.stop()


def test_every_event_has_a_signed_annotated_thumbnail_and_only_those_are_kept(
    stack: Stack, kafka_bootstrap: str, thumbnail_topics: Topics
) -> None:
    check_thumbnails(stack, LocalBlobStore(stack.run_dir / "segments"), kafka_bootstrap, thumbnail_topics)


def test_thumbnails_in_an_s3_bucket(
    kafka_bootstrap: str, thumbnail_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same with every service on an S3-compatible bucket (moto's server on loopback): the
    analyzer writes, the aggregator deletes, the API serves and ingest's purge removes there."""
    topics = Topics(prefix=f"{thumbnail_topics.prefix}s3", partitions=3)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.specs()))
    with dummy_aws_credentials(), moto_s3_server() as s3:
        storage = {
            "LIVESTREAM_STORAGE_BACKEND": "s3",
            "LIVESTREAM_STORAGE_S3_BUCKET": s3.bucket,
            "LIVESTREAM_STORAGE_S3_PREFIX": "thumbs-test/",
            "LIVESTREAM_STORAGE_S3_ENDPOINT_URL": s3.endpoint_url,
            "LIVESTREAM_STORAGE_S3_REGION": REGION,
            "LIVESTREAM_STORAGE_S3_PATH_STYLE": "true",
        }
        with stack_for_tests(
            kafka_bootstrap,
            topics.prefix,
            tmp_path_factory.mktemp("thumbnail-s3-stack"),
            extra_env={
                "LIVESTREAM_INGEST_CHUNK_SECONDS": str(CHUNK_SECONDS),
                "LIVESTREAM_API_PLAYBACK_SECRET": PLAYBACK_SECRET,
                **storage,
            },
        ) as stack:
            check_thumbnails(stack, s3.store("thumbs-test/"), kafka_bootstrap, topics)


def check_thumbnails(stack: Stack, store: BlobStore, kafka_bootstrap: str, thumbnail_topics: Topics) -> None:
    """Run a session on ``stack`` and check its thumbnails, reading the blob store ``store``."""
    api = httpx.Client(base_url=stack.api_url, headers={"X-API-Key": stack.api_key}, timeout=30)
    with (
        TopicRecorder(kafka_bootstrap, thumbnail_topics.chunks) as chunk_topic,
        TopicRecorder(kafka_bootstrap, thumbnail_topics.events) as raw_topic,
        TopicRecorder(kafka_bootstrap, thumbnail_topics.session_events) as merged_topic,
        ThumbnailWatcher(kafka_bootstrap, thumbnail_topics.events, store) as watcher,
        LiveHlsSource(short_script(SCENE_SECONDS)) as source,
    ):
        started = api.post(
            "/api/live/start-session",
            data={"source_url": source.url, "name": "thumbs", "rapid_review_query": QUERY},
        ).json()
        stream_id, session_id = started["stream_id"], started["session_id"]
        session_url = f"/api/live/live-sessions/{stream_id}/{session_id}"
        session = wait_until(
            lambda: (s := api.get(session_url).json())["status"] in ("FINISHED", "FAILED") and s,
            180,
            "the session's end",
        )
        # Both consumers have every raw event of the session before they stop.
        wait_until(
            lambda: (
                {
                    e.event_id
                    for v in raw_topic.values
                    if (e := Event.model_validate_json(v)).session_id == session_id
                }
                <= set(watcher.seen)
            ),
            30,
            "the watcher catching up",
        )
        # One partition per session, in order: once the final versions' thumbnails are recorded,
        # every earlier record of the session is too.
        final_thumbnails = {e["thumbnail_event_id"] for e in session["events"]}
        wait_until(
            lambda: (
                final_thumbnails
                <= {SessionEvent.model_validate_json(v).event.thumbnail_event_id for v in merged_topic.values}
            ),
            30,
            "the session-events recorder catching up",
        )
    assert session["status"] == "FINISHED", session.get("status_reason")
    events = session["events"]
    assert {e["label"] for e in events} >= {"cat", "cup"}
    frames: dict[float, Frame] = {
        frame.stream_time: frame
        for value in chunk_topic.values
        if (chunk := ChunkRecord.model_validate_json(value)).session_id == session_id
        for frame in chunk.frames
    }
    raw_events = {
        event.event_id: event
        for value in raw_topic.values
        if (event := Event.model_validate_json(value)).session_id == session_id
    }

    # ---- each merged event: a signed URL to an annotated JPEG of its best frame
    with httpx.Client(timeout=30) as browser:  # no API key: the signature is the credential
        for event in events:
            url, thumbnail_event_id = event["thumbnail_url"], event["thumbnail_event_id"]
            assert url and thumbnail_event_id, event
            assert url.startswith(
                f"{stack.api_url}/playback/{session_id}/thumbs/{thumbnail_event_id}.jpg?expires="
            )
            # The merged event shows its most confident detection (the best frame of all it merged).
            merged = [r for r in raw_events.values() if r.label == event["label"]]
            best = raw_events[thumbnail_event_id]
            assert best.confidence == event["confidence"] and best.thumbnail_time == event["thumbnail_time"]
            assert event["start_time"] <= best.thumbnail_time <= event["end_time"], merged
            response = browser.get(url)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "image/jpeg"
            with Image.open(io.BytesIO(response.content)) as image:
                assert image.format == "JPEG"
                frame = frames[best.thumbnail_time]
                assert image.size == (frame.width, frame.height)
            assert best.box is not None
            thumbnail, raw = rgb(response.content), rgb(frame.jpeg)
            drawn, untouched = (
                outline_difference(thumbnail, raw, best.box),
                inside_difference(thumbnail, raw, best.box),
            )
            assert drawn > 40 and untouched < 15, (event["label"], drawn, untouched)
            # Tampered or moved to another session: 403, as for playlists.
            assert browser.get(tampered(url)).status_code == 403
            other = url.replace(f"/playback/{session_id}/", f"/playback/{secrets.token_hex(16)}/")
            assert browser.get(other).status_code == 403
    # The /events page and the SSE feed carry the URLs too.
    page = api.get(f"{session_url}/events", params={"limit": 1000}).json()["events"]
    assert all(record["event"]["thumbnail_url"] for record in page) and len(page) == len(events)
    with api.stream("GET", f"{session_url}/events/stream") as feed:
        for line in feed.iter_lines():
            if line.startswith("data:") and '"thumbnail_event_id"' in line:
                assert '"thumbnail_url": "http' in line
                break

    # ---- the blob store keeps exactly the merged events' thumbnails
    every_raw = {event_id for event_id, event in raw_events.items() if event.thumbnail_event_id == event_id}
    assert every_raw == set(raw_events), "every raw detection got a thumbnail"
    # Stored before the event that names it was produced: never a URL to a missing picture.
    assert {e: watcher.seen.get(e) for e in every_raw} == dict.fromkeys(every_raw, True)
    # Every thumbnail a merged event's record ever showed is kept: the final versions' and the
    # ones an event moved away from to a more confident sighting (an earlier record, already on
    # SSE feeds, names it; aggregator.tracked); only thumbnails no record showed are deleted.
    shown = {
        record.event.thumbnail_event_id
        for value in merged_topic.values
        if (record := SessionEvent.model_validate_json(value)).session_id == session_id
    }
    kept = shown - {None}
    assert {e["thumbnail_event_id"] for e in events} <= kept
    merged_away = every_raw - kept
    assert merged_away, "the scenes span several chunks, so some detections were merged away"
    prefix = f"{directory_name(session_id)}/thumbs/"

    def stored() -> set[str]:
        return {key.removeprefix(prefix).removesuffix(".jpg") for key in store.list(prefix)}

    wait_until(lambda: stored() == kept, 30, f"only the kept thumbnails (stored {stored()}, kept {kept})")

    # ---- the purge removes them with the recording
    asyncio.run(produce_purge(kafka_bootstrap, thumbnail_topics.session_commands, session_id, stream_id))
    wait_until(
        lambda: not list(store.list(f"{directory_name(session_id)}/")), 60, "the purge of the recording"
    )
    assert not (Path(stack.run_dir) / "segments" / directory_name(session_id)).exists()
    api.close()
