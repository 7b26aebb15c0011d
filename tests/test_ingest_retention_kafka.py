"""Retention on a real broker: PurgeSession removes a session from ingest; SessionDeadline is ignored.

One ingest service runs a session that ends by itself (a real live HLS source) and one that is
still running (a looping source); then the aggregator's commands arrive: a deadline (ignored), and
purges of both sessions and of one ingest never saw. Afterwards each purged session's recording
directory is gone and the last record of its key on the compacted checkpoints topic is a
tombstone, and every command's offset is committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ingest.service import IngestService
from ingest.settings import IngestSettings
from ingest.storage import directory_name
from livestream.kafka.serde import decode_value, encode_key, encode_value
from livestream.testsource import LiveHlsSource, short_script
from schemas.records import (
    EndSession,
    IngestState,
    PurgeSession,
    SessionDeadline,
    SessionLifecycle,
    StartSession,
)
from schemas.topics import Topics

pytestmark = pytest.mark.kafka

Command = StartSession | EndSession | SessionDeadline | PurgeSession


async def wait_for(condition: Callable[[], bool], what: str, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def read_topic(bootstrap: str, topic: str, partitions: int) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of ``topic`` up to its current end, in offset order per partition."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await reader.start()
    try:
        tps = [TopicPartition(topic, number) for number in range(partitions)]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        found: list[tuple[bytes | None, bytes | None]] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        async with asyncio.timeout(30):
            while remaining:
                for tp, messages in (await reader.getmany(*remaining, timeout_ms=300)).items():
                    found += [(m.key, m.value) for m in messages if m.offset < ends[tp]]
                remaining = {tp for tp in remaining if await reader.position(tp) < ends[tp]}
        return found
    finally:
        await reader.stop()


async def checkpoint_history(bootstrap: str, topics: Topics) -> dict[str, list[bytes | None]]:
    history: dict[str, list[bytes | None]] = defaultdict(list)
    for key, value in await read_topic(bootstrap, topics.ingest_checkpoints, topics.partitions):
        assert key is not None
        history[key.decode()].append(value)
    return history


async def uncommitted_commands(bootstrap: str, topics: Topics, group_id: str) -> dict[int, int]:
    """Partitions of the commands topic whose committed offset is behind its end: {partition: lag}."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await reader.start()
    try:
        committed = await admin.list_consumer_group_offsets(group_id)
        tps = [TopicPartition(topics.session_commands, n) for n in range(topics.partitions)]
        ends = await reader.end_offsets(tps)
        lag = {tp.partition: ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps}
        return {partition: behind for partition, behind in lag.items() if behind > 0}
    finally:
        await reader.stop()
        await admin.close()


async def test_purge_removes_recordings_and_checkpoints_and_deadlines_are_ignored(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ingest.service")
    settings = IngestSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topics.prefix,
        group_id=f"ingest-purge-{uuid.uuid4().hex[:8]}",
        storage_dir=tmp_path,
        chunk_seconds=2.0,
        http_retries=1,
        http_backoff_seconds=0.05,
        shutdown_timeout_seconds=5,
    )
    run_id = uuid.uuid4().hex[:6]
    ended_id, running_id, unknown_id = (f"{name}-{run_id}" for name in ("ended", "running", "unknown"))
    lifecycle: dict[str, list[SessionLifecycle]] = defaultdict(list)
    chunk_counts: dict[str, int] = defaultdict(int)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    observer = AIOKafkaConsumer(
        topics.session_lifecycle,
        topics.chunks,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
    )
    # Already ended (every segment listed), so its session runs through it at once.
    finite = LiveHlsSource(short_script(2.0), segment_seconds=1.0, realtime=False, window=100)
    looping = LiveHlsSource(short_script(2.0), segment_seconds=1.0, loop=True)

    async def observe(until: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not until():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {dict(lifecycle)}"
            for messages in (await observer.getmany(timeout_ms=200)).values():
                for message in messages:
                    assert message.key is not None
                    if message.topic == topics.chunks:
                        chunk_counts[message.key.decode()] += 1
                    else:
                        report = decode_value(SessionLifecycle, message.value)
                        lifecycle[report.session_id].append(report)

    async def send(command: Command) -> None:
        await producer.send_and_wait(
            topics.session_commands, key=encode_key(command.session_id), value=encode_value(command)
        )

    def start(session_id: str, url: str) -> StartSession:
        return StartSession(
            session_id=session_id, stream_id=f"st-{session_id}", name=session_id, source_url=url
        )

    stop = asyncio.Event()
    await producer.start()
    await observer.start()
    await asyncio.to_thread(finite.start)
    await asyncio.to_thread(looping.start)
    try:
        assert await asyncio.to_thread(finite.wait_finished, 60)
        async with IngestService(settings) as service:
            running = asyncio.create_task(service.run(stop))
            await send(start(ended_id, finite.url))
            await send(start(running_id, looping.url))
            await observe(
                lambda: (
                    any(r.state is IngestState.ENDED for r in lifecycle[ended_id])
                    and chunk_counts[running_id] >= 1
                ),
                "the finite session to end and the looping one to publish",
            )
            ended_dir, running_dir = (tmp_path / directory_name(s) for s in (ended_id, running_id))
            recorded = await asyncio.to_thread(
                lambda: [any(d.glob("seg*.ts")) for d in (ended_dir, running_dir)]
            )
            assert recorded == [True, True]
            before = await checkpoint_history(kafka_bootstrap, topics)
            assert before[ended_id][-1] is None  # the session's own tombstone, once it ended
            assert before[running_id][-1] is not None  # still running: its checkpoint is open

            # The aggregator's commands: its own deadline timer (ignored here), then the purges.
            await send(SessionDeadline(session_id=ended_id, stream_id=f"st-{ended_id}"))
            for session_id in (ended_id, running_id, unknown_id):
                await send(PurgeSession(session_id=session_id, stream_id=f"st-{session_id}"))
            await wait_for(
                lambda: not ended_dir.exists() and not running_dir.exists() and not service.sessions,
                "the purged recordings to be deleted",
            )
            await wait_for_async_empty(
                lambda: uncommitted_commands(kafka_bootstrap, topics, settings.group_id),
                "every command's offset to be committed",
            )
            assert running_id not in service._tasks
            stop.set()
            await asyncio.wait_for(running, timeout=10)
        await observe(lambda: True, "late reports")
        after = await checkpoint_history(kafka_bootstrap, topics)
    finally:
        await asyncio.to_thread(finite.stop)
        await asyncio.to_thread(looping.stop)
        await observer.stop()
        await producer.stop()

    # Each purged key ends with a tombstone written by the purge, so compaction drops the key: no
    # ingest instance resumes a purged session. The ended session's key got just that record; the
    # running one also got its last checkpoints (its clean suspension writes one) before it.
    assert len(after[ended_id]) == len(before[ended_id]) + 1
    assert len(after[running_id]) >= len(before[running_id]) + 1
    for session_id in (ended_id, running_id):
        assert after[session_id][-1] is None
    assert after[unknown_id] == [None]  # purging an unknown session is harmless
    # The running session was stopped without a final report: it is gone, not ENDED or FAILED.
    assert [r.state for r in lifecycle[running_id]] == [IngestState.ACTIVE]
    assert [r.state for r in lifecycle[ended_id]] == [IngestState.ACTIVE, IngestState.ENDED]
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []

    # The deadline was ignored quietly: a debug line, no warning or error about it.
    ingest_records = [r for r in caplog.records if r.name.startswith("ingest")]
    assert any(r.levelno == logging.DEBUG and "deadline" in r.getMessage() for r in ingest_records)
    assert not [r for r in ingest_records if r.levelno >= logging.ERROR]
    warnings = [r.getMessage() for r in ingest_records if r.levelno == logging.WARNING]
    assert not [w for w in warnings if "deadline" in w or ended_id in w]
    assert f"session {running_id} is purged (retention) while still running here: stopping it" in warnings


async def wait_for_async_empty(
    probe: Callable[[], Awaitable[dict[int, int]]], what: str, within_s: float = 30
) -> None:
    deadline = time.monotonic() + within_s
    while remaining := await probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {remaining}"
        await asyncio.sleep(0.2)
