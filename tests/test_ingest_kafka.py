"""The ingest service on a real broker, following real live HLS streams served over HTTP.

One service instance handles several sessions at once (as in production): a live stream that
ends by itself, an unreachable URL, a URL that is not a playlist, a looping stream ended by
EndSession, and one still running when the service shuts down (suspended, not failed: it
resumes from its checkpoint on the next instance, see ``test_ingest_resume``).
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from PIL import Image

from ingest.service import IngestService, read_open_checkpoints
from ingest.settings import IngestSettings
from livestream.kafka.serde import decode_value, encode_key, encode_value
from livestream.testsource import LiveHlsSource, short_script
from schemas.records import ChunkRecord, EndSession, IngestState, SessionLifecycle, StartSession
from schemas.topics import Topics

pytestmark = pytest.mark.kafka

SEGMENT_SECONDS = 1.0
SCENE_SECONDS = 2.0  # short_script: cat 0-2 s, gray 2-4 s, cup 4-6 s
CHUNK_SECONDS = 2.0


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Observed:
    """Everything ingest published, read back from the topics."""

    def __init__(self) -> None:
        self.lifecycle: dict[str, list[SessionLifecycle]] = defaultdict(list)
        self.chunks: dict[str, list[ChunkRecord]] = defaultdict(list)

    def final(self, session_id: str) -> SessionLifecycle | None:
        reports = [r for r in self.lifecycle[session_id] if r.state is not IngestState.ACTIVE]
        return reports[-1] if reports else None


async def read_until(
    consumer: AIOKafkaConsumer, topics: Topics, seen: Observed, done: Callable[[], bool], within_s: float = 60
) -> None:
    deadline = time.monotonic() + within_s
    while not done():
        assert time.monotonic() < deadline, f"timed out; lifecycle so far: {dict(seen.lifecycle)}"
        batches = await consumer.getmany(timeout_ms=200)
        for messages in batches.values():
            for message in messages:
                if message.topic == topics.chunks:
                    chunk = decode_value(ChunkRecord, message.value)
                    assert message.key == encode_key(chunk.session_id)
                    seen.chunks[chunk.session_id].append(chunk)
                else:
                    report = decode_value(SessionLifecycle, message.value)
                    seen.lifecycle[report.session_id].append(report)


async def open_checkpoint_ids(bootstrap: str, topics: Topics) -> set[str]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await reader.start()
    try:
        opened = await read_open_checkpoints(
            reader, topics.ingest_checkpoints, list(range(topics.partitions))
        )
        return {checkpoint.session_id for _, checkpoint in opened}
    finally:
        await reader.stop()


def start(session_id: str, url: str) -> StartSession:
    return StartSession(
        session_id=session_id,
        stream_id=f"st-{session_id}",
        name=session_id,
        source_url=url,
        rapid_review_query="q",
    )


def assert_contiguous(chunks: list[ChunkRecord], final: SessionLifecycle) -> None:
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert final.chunks_published == len(chunks)
    for chunk in chunks:
        assert chunk.start_time == pytest.approx(chunk.chunk_index * CHUNK_SECONDS)
        assert chunk.hls_cumulative_offset == chunk.start_time
        assert all(chunk.start_time <= f.stream_time < chunk.end_time + 1e-6 for f in chunk.frames)
        for frame in chunk.frames:
            image = Image.open(io.BytesIO(frame.jpeg))
            assert image.format == "JPEG" and image.size == (frame.width, frame.height)


async def test_ingest_service_follows_live_streams_and_reports_lifecycle(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    settings = IngestSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topics.prefix,
        group_id=f"ingest-test-{uuid.uuid4().hex[:8]}",
        storage_dir=tmp_path,
        chunk_seconds=CHUNK_SECONDS,
        http_retries=1,
        http_backoff_seconds=0.05,
        live_edge_segments=2,
    )
    run_id = uuid.uuid4().hex[:6]
    ended_id, refused_id, bogus_id, user_id, shutdown_id, stale_id = (
        f"{name}-{run_id}" for name in ("ended", "refused", "bogus", "user", "shutdown", "stale")
    )
    seen = Observed()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    consumer = AIOKafkaConsumer(
        topics.session_lifecycle,
        topics.chunks,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
    )
    finite = LiveHlsSource(short_script(SCENE_SECONDS), segment_seconds=SEGMENT_SECONDS, realtime=True)
    looping = LiveHlsSource(short_script(SCENE_SECONDS), segment_seconds=SEGMENT_SECONDS, loop=True)
    stop_service = asyncio.Event()
    await producer.start()
    await consumer.start()
    try:
        async with IngestService(settings) as service:
            service_task = asyncio.create_task(service.run(stop_service))
            await asyncio.to_thread(finite.start)
            await asyncio.to_thread(looping.start)

            async def send(command: StartSession | EndSession) -> None:
                await producer.send_and_wait(
                    topics.session_commands, key=encode_key(command.session_id), value=encode_value(command)
                )

            await send(start(ended_id, finite.url))
            await send(start(refused_id, f"http://127.0.0.1:{closed_port()}/x.m3u8"))
            await send(start(bogus_id, f"{finite.base_url}/segment_000000.ts"))
            await send(start(user_id, looping.url))
            await send(start(user_id, looping.url))  # duplicate: ignored while running
            # A start request that waited an hour (ingest was down, or a replay) is refused, visibly.
            hour_old = start(stale_id, finite.url).model_copy(
                update={"requested_at": datetime.now(UTC) - timedelta(hours=1)}
            )
            await send(hour_old)

            # A running session is ended by the user once it has published a chunk.
            await read_until(consumer, topics, seen, lambda: len(seen.chunks[user_id]) >= 2)
            await send(EndSession(session_id=user_id, stream_id=f"st-{user_id}"))
            await read_until(
                consumer,
                topics,
                seen,
                lambda: all(seen.final(s) for s in (ended_id, refused_id, bogus_id, user_id, stale_id)),
            )

            # A session still running at shutdown is suspended: no final report, checkpoint kept.
            await send(start(shutdown_id, looping.url))
            await read_until(consumer, topics, seen, lambda: len(seen.chunks[shutdown_id]) >= 1)
            stop_service.set()
            await asyncio.wait_for(service_task, timeout=10)
        await read_until(consumer, topics, seen, lambda: True)
        open_after_shutdown = await open_checkpoint_ids(kafka_bootstrap, topics)
    finally:
        await asyncio.to_thread(finite.stop)
        await asyncio.to_thread(looping.stop)
        await consumer.stop()
        await producer.stop()

    # --- the live stream that ended by itself
    ended = seen.final(ended_id)
    assert ended is not None
    assert [r.state for r in seen.lifecycle[ended_id]] == [IngestState.ACTIVE, IngestState.ENDED]
    assert ended.ended_by == "stream"
    chunks = seen.chunks[ended_id]
    assert len(chunks) >= 2
    assert_contiguous(chunks, ended)
    # Stream time 0 is the first segment ingested (joined at the live edge): map frames back to
    # the script's time and check the scene they show.
    first_sequence = chunks[0].media_sequences[0]
    for chunk in chunks:
        for frame in chunk.frames:
            script_time = first_sequence * SEGMENT_SECONDS + frame.stream_time
            pixels = np.asarray(Image.open(io.BytesIO(frame.jpeg)), dtype=np.float32)
            if 2.2 < script_time < 3.8:
                assert pixels.std() < 6, f"expected the gray scene at {script_time:.2f}s"
            elif script_time < 1.8 or 4.2 < script_time < 5.8:
                assert pixels.std() > 20, f"expected a photo at {script_time:.2f}s"
    last_end = chunks[-1].end_time
    expected_end = (finite.total_segments or 0) * SEGMENT_SECONDS - first_sequence * SEGMENT_SECONDS
    assert last_end == pytest.approx(expected_end, abs=0.05)
    assert ended.manifest_path is not None
    manifest_text = await asyncio.to_thread(Path(ended.manifest_path).read_text)
    assert "#EXT-X-ENDLIST" in manifest_text

    # --- sources that cannot be read
    refused = seen.final(refused_id)
    assert refused is not None and [r.state for r in seen.lifecycle[refused_id]] == [IngestState.FAILED]
    assert refused.reason is not None and "Connection refused" in refused.reason
    bogus = seen.final(bogus_id)
    assert bogus is not None and bogus.state is IngestState.FAILED
    assert bogus.reason is not None and "not an HLS playlist: no #EXTM3U header" in bogus.reason
    assert seen.chunks[refused_id] == [] and seen.chunks[bogus_id] == []
    stale = seen.final(stale_id)
    assert stale is not None and [r.state for r in seen.lifecycle[stale_id]] == [IngestState.FAILED]
    assert stale.reason is not None and "start the session again" in stale.reason
    assert seen.chunks[stale_id] == []

    # --- ended by the user (the duplicate StartSession did not start a second session)
    by_user = seen.final(user_id)
    assert by_user is not None
    assert [r.state for r in seen.lifecycle[user_id]] == [IngestState.ACTIVE, IngestState.ENDED]
    assert by_user.ended_by == "user"
    assert_contiguous(seen.chunks[user_id], by_user)

    # --- suspended by service shutdown; only it is left open
    assert seen.final(shutdown_id) is None
    assert [r.state for r in seen.lifecycle[shutdown_id]] == [IngestState.ACTIVE]
    assert open_after_shutdown == {shutdown_id}
    indexes = [c.chunk_index for c in seen.chunks[shutdown_id]]
    assert indexes == list(range(len(indexes)))
