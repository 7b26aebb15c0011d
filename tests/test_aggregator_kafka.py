"""The aggregator worker (``python -m aggregator``) against a real broker.

One worker process serves the module (faust starts in ~2 s); the last tests stop it with
SIGTERM and restart it to check the table is recovered from its changelog.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from livestream.kafka.serde import decode_command, encode_key, encode_value, session_partition
from livestream.kafka.testing import create_test_topics, latest_values
from schemas.records import (
    ChunkResult,
    DeadLetter,
    EndSession,
    Event,
    IngestState,
    PurgeSession,
    SessionChunk,
    SessionEvent,
    SessionHeader,
    SessionLifecycle,
    SessionStatus,
    Severity,
    StartSession,
    chunk_id_for,
    describe_event,
    event_id_for,
    format_mmss,
)
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

REPO_ROOT = Path(__file__).resolve().parents[1]
STATE_TIMEOUT_S = 45.0
CHUNK_S = 4.0


# --------------------------------------------------------------------------- worker process


class AggregatorProcess:
    """``python -m aggregator`` as a subprocess, logging to a file the tests can read."""

    def __init__(self, bootstrap: str, topics: Topics, log_path: Path, **settings: str) -> None:
        self.log_path = log_path
        # The worker's own temporary directory, so a test can see what it leaves there.
        self.tmpdir = log_path.parent / f"{log_path.stem}-tmp"
        self.tmpdir.mkdir()
        env = {
            **os.environ,
            "TMPDIR": str(self.tmpdir),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "LIVESTREAM_TOPIC_PREFIX": topics.prefix,
            "LIVESTREAM_AGGREGATOR_LOG_LEVEL": "info",
            **{f"LIVESTREAM_AGGREGATOR_{name.upper()}": value for name, value in settings.items()},
        }
        self._log_file = log_path.open("ab")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aggregator"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode


@pytest.fixture(scope="module")
async def agg_topics(kafka_bootstrap: str) -> Topics:
    """Topics of their own, so no other test's worker joins this consumer group."""
    return await create_test_topics(kafka_bootstrap)


@pytest.fixture(scope="module")
def aggregator(
    kafka_bootstrap: str, agg_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AggregatorProcess]:
    log_path = tmp_path_factory.mktemp("aggregator") / "worker.log"
    worker = AggregatorProcess(kafka_bootstrap, agg_topics, log_path)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


# --------------------------------------------------------------------------- records


def start_cmd(session_id: str) -> StartSession:
    return StartSession(
        session_id=session_id,
        stream_id=f"stream-{session_id}",
        name=f"camera {session_id}",
        source_url="https://example.test/live.m3u8",
        rapid_review_query="detect a cat",
        created_by="tester",
    )


def lifecycle(session_id: str, state: IngestState, chunks_published: int = 0) -> SessionLifecycle:
    return SessionLifecycle(
        session_id=session_id,
        stream_id=f"stream-{session_id}",
        state=state,
        chunks_published=chunks_published,
    )


def cat_event(session_id: str, chunk_index: int, start: float, end: float, confidence: float) -> Event:
    return Event(
        event_id=event_id_for(session_id, chunk_index, "cat", start),
        session_id=session_id,
        stream_id=f"stream-{session_id}",
        type="detection",
        label="cat",
        description=describe_event("cat", start, end, confidence),
        severity=Severity.HIGH,
        confidence=confidence,
        stream_time=start,
        start_time=start,
        end_time=end,
        capture_time=start,
        captured_at=datetime.now(UTC),
        chunk_index=chunk_index,
        chunk_relative_time=start - chunk_index * CHUNK_S,
        hls_cumulative_offset=0.0,
        t_start=format_mmss(start),
        t_end=format_mmss(end),
        analysis_id=f"a-{chunk_index}",
        chunk_id=chunk_id_for(session_id, chunk_index),
        query="detect a cat",
    )


def chunk_result(session_id: str, chunk_index: int, events: list[Event]) -> ChunkResult:
    return ChunkResult(
        session_id=session_id,
        stream_id=f"stream-{session_id}",
        chunk_id=chunk_id_for(session_id, chunk_index),
        chunk_index=chunk_index,
        analysis_id=f"a-{chunk_index}",
        start_time=chunk_index * CHUNK_S,
        end_time=(chunk_index + 1) * CHUNK_S,
        frame_count=8,
        status="ok",
        model="test-detector",
        targets=["cat"],
        events=events,
        inference_ms=5.0,
    )


async def send(producer: AIOKafkaProducer, topic: str, session_id: str, value: bytes) -> None:
    await producer.send_and_wait(topic, key=encode_key(session_id), value=value)


async def states_until(
    bootstrap: str,
    topics: Topics,
    session_id: str,
    done: Callable[[list[SessionHeader]], bool],
    timeout_s: float = STATE_TIMEOUT_S,
) -> list[SessionHeader]:
    """Every state published for ``session_id`` (from the topic's start) once ``done`` holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.session_state, p) for p in range(topics.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        states: list[SessionHeader] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                states.extend(
                    SessionHeader.model_validate_json(r.value)
                    for r in records
                    if r.key == encode_key(session_id) and r.value is not None
                )
            if states and done(states):
                return states
        raise AssertionError(
            f"no satisfying state for {session_id} within {timeout_s}s; last: "
            f"{states[-1].status if states else None}"
        )
    finally:
        await consumer.stop()


def finished(states: list[SessionHeader]) -> bool:
    return states[-1].status.terminal


async def session_records(
    bootstrap: str, topics: Topics, session_id: str
) -> tuple[dict[str, bytes | None], dict[str, bytes | None]]:
    """Latest chunk and event records of a session, read from the session's partition."""
    partition = session_partition(session_id, topics.partitions)
    chunks = await latest_values(bootstrap, topics.session_chunks, partition, f"{session_id}/chunk/")
    events = await latest_values(bootstrap, topics.session_events, partition, f"{session_id}/event/")
    return chunks, events


def distinct_changes(states: list[SessionHeader]) -> list[SessionHeader]:
    """The states up to the first terminal one, without consecutive repeats (re-publications)."""
    changes: list[SessionHeader] = []
    for state in states:
        if not changes or state != changes[-1]:
            changes.append(state)
        if state.status.terminal:
            break
    assert all(s == changes[-1] for s in states[states.index(changes[-1]) :]), "state changed after terminal"
    return changes


# --------------------------------------------------------------------------- tests


async def test_session_folds_to_finished_with_merged_events(
    kafka_bootstrap: str, agg_topics: Topics, aggregator: AggregatorProcess, producer: AIOKafkaProducer
) -> None:
    sid = "sess-full"
    await send(producer, agg_topics.session_commands, sid, encode_value(start_cmd(sid)))
    # Topics are consumed in no fixed order relative to each other; like ingest, which only
    # reports on a session it was told to start, wait for the start to be folded in.
    await states_until(kafka_bootstrap, agg_topics, sid, lambda s: True)
    print(
        f"aggregator: first state {time.monotonic() - aggregator.started_at:.1f}s after spawning the worker"
    )

    await send(producer, agg_topics.session_lifecycle, sid, encode_value(lifecycle(sid, IngestState.ACTIVE)))
    # Chunk 2 before chunk 0, a redelivery, and ingest's final total before the last result:
    # the session must not be FINISHED before chunk 1's result is in.
    first = chunk_result(sid, 0, [cat_event(sid, 0, 2.0, 4.0, 0.7)])
    for result in (chunk_result(sid, 2, []), first, first):
        await send(producer, agg_topics.chunk_results, sid, encode_value(result))
    await send(
        producer, agg_topics.session_lifecycle, sid, encode_value(lifecycle(sid, IngestState.ENDED, 3))
    )
    last = chunk_result(sid, 1, [cat_event(sid, 1, 4.0, 6.5, 0.93)])
    await send(producer, agg_topics.chunk_results, sid, encode_value(last))

    states = await states_until(kafka_bootstrap, agg_topics, sid, finished)
    final = states[-1]
    assert final.status is SessionStatus.FINISHED
    assert final.name == f"camera {sid}"
    assert final.chunk_count == 3 and final.chunks_expected == 3
    assert final.ended_at is not None
    assert final.open_events == [] and final.pending_results == [] and final.event_count == 1
    chunks, events = await session_records(kafka_bootstrap, agg_topics, sid)
    summaries = [SessionChunk.model_validate_json(v).chunk for v in chunks.values() if v is not None]
    assert sorted((c.chunk_index, c.status) for c in summaries) == [(0, "ok"), (1, "ok"), (2, "ok")]
    [record] = [SessionEvent.model_validate_json(v) for v in events.values() if v is not None]
    assert (record.number, record.lifecycle) == (0, "closed")
    assert record.cursor == final.events_cursor < final.cursor
    cat = record.event
    assert (cat.start_time, cat.end_time, cat.confidence) == (2.0, 6.5, 0.93)
    assert cat.event_id == event_id_for(sid, 0, "cat", 2.0)
    assert cat.description == "cat visible from 00:02 to 00:06 (max confidence 0.93)"
    # At most one header per change (records folded in one batch publish the batch's last
    # header; redeliveries and replays re-publish it unchanged); cursors only grow and only the
    # last header is terminal.
    changes = distinct_changes(states)
    assert 1 <= len(changes) <= 6
    assert [s.status.terminal for s in changes] == [False] * (len(changes) - 1) + [True]
    assert [s.cursor for s in changes] == sorted(s.cursor for s in changes)


async def test_poison_records_are_skipped(
    kafka_bootstrap: str, agg_topics: Topics, aggregator: AggregatorProcess, producer: AIOKafkaProducer
) -> None:
    sid = "sess-poison"
    # Same key as the session, so they sit in its partitions ahead of its good records.
    await send(producer, agg_topics.chunk_results, sid, b"\x00not json")
    await send(producer, agg_topics.session_commands, sid, b'{"kind": "explode"}')
    await producer.send_and_wait(agg_topics.session_lifecycle, key=encode_key(sid), value=None)
    await send(producer, agg_topics.session_commands, "another-key", encode_value(start_cmd(sid)))
    await send(producer, agg_topics.session_commands, sid, encode_value(start_cmd(sid)))
    end = EndSession(session_id=sid, stream_id=f"stream-{sid}")
    await send(producer, agg_topics.session_commands, sid, encode_value(end))
    await states_until(kafka_bootstrap, agg_topics, sid, lambda s: s[-1].status is SessionStatus.ENDING)
    await send(
        producer, agg_topics.session_lifecycle, sid, encode_value(lifecycle(sid, IngestState.ENDED, 0))
    )

    states = distinct_changes(await states_until(kafka_bootstrap, agg_topics, sid, finished))
    # The start and the end may be folded in one batch (one header for both).
    assert [s.status for s in states][-2:] == [SessionStatus.ENDING, SessionStatus.FINISHED]
    assert states[0].status in (SessionStatus.INITIALIZING, SessionStatus.ENDING)
    assert states[-1].chunk_count == 0

    poison_lines = {
        line.split("] ", 3)[-1] for line in aggregator.log().splitlines() if "skipping poison record" in line
    }
    assert len(poison_lines) == 4, poison_lines  # a replay after a rebalance logs the same line again
    assert any(agg_topics.chunk_results in line and "offset=" in line for line in poison_lines)
    assert any("record key is not its session_id" in line for line in poison_lines)
    assert aggregator.process.poll() is None

    # Each was dead-lettered (a replay may write a letter again: same source offset).
    letters = await dead_letters(kafka_bootstrap, agg_topics)
    sources = {
        (d.source_topic, d.source_partition, d.source_offset): d for d in letters if d.service == "aggregator"
    }
    assert len(sources) == 4, sources
    by_topic = {topic: d for (topic, _, _), d in sources.items()}
    assert by_topic[agg_topics.chunk_results].value == b"\x00not json"
    assert by_topic[agg_topics.session_lifecycle].value is None
    assert all(d.error_type == "RecordError" and d.attempts == 1 for d in sources.values())
    assert {d.key for d in sources.values()} == {sid, "another-key"}


async def dead_letters(bootstrap: str, topics: Topics) -> list[DeadLetter]:
    """Every dead letter on the topics' dead-letter topic so far."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.dead_letter, p) for p in range(topics.partitions)]
        consumer.assign(partitions)
        # Explicit offsets: a seek_to_beginning after end_offsets may resolve to the end.
        begins = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, begins[tp])
        found: list[DeadLetter] = []
        for tp in partitions:
            while await consumer.position(tp) < ends[tp]:
                for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                    found.extend(DeadLetter.model_validate_json(r.value) for r in records)
        return found
    finally:
        await consumer.stop()


async def test_sigterm_exits_cleanly_and_restart_recovers_table(
    kafka_bootstrap: str,
    agg_topics: Topics,
    aggregator: AggregatorProcess,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    sid = "sess-restart"
    await send(producer, agg_topics.session_commands, sid, encode_value(start_cmd(sid)))
    await states_until(kafka_bootstrap, agg_topics, sid, lambda s: True)
    await send(producer, agg_topics.chunk_results, sid, encode_value(chunk_result(sid, 0, [])))
    await states_until(kafka_bootstrap, agg_topics, sid, lambda s: s[-1].chunk_count == 1)
    stop_started = time.monotonic()
    assert aggregator.stop() == 0
    print(f"aggregator: stopped in {time.monotonic() - stop_started:.1f}s")
    assert "Traceback" not in aggregator.log()
    # faust's data directory (unused by the memory store) was a temporary one, removed at exit,
    # not ``<app id>-data`` in the working directory.
    assert list(aggregator.tmpdir.iterdir()) == []
    assert not (REPO_ROOT / f"{agg_topics.prefix}-aggregator-data").exists()

    restarted = AggregatorProcess(kafka_bootstrap, agg_topics, tmp_path / "restarted.log")
    try:
        # The rest of the session, folded into the recovered header: it finishes with its name
        # and both chunks; an empty table would make it a nameless placeholder waiting for chunk 0.
        await send(producer, agg_topics.chunk_results, sid, encode_value(chunk_result(sid, 1, [])))
        await send(
            producer, agg_topics.session_lifecycle, sid, encode_value(lifecycle(sid, IngestState.ENDED, 2))
        )
        states = await states_until(kafka_bootstrap, agg_topics, sid, finished)
        print(f"aggregator: restart answered {time.monotonic() - restarted.started_at:.1f}s after start")
        final = states[-1]
        assert final.status is SessionStatus.FINISHED
        assert final.name == f"camera {sid}"
        assert final.chunk_count == 2
        # The table's changelog record of a session is in the session's partition (the worker
        # that owns an input partition restores the same changelog partition).
        changelog = f"{agg_topics.prefix}-aggregator-sessions-changelog"
        partition = session_partition(sid, agg_topics.partitions)
        assert (await latest_values(kafka_bootstrap, changelog, partition, sid)).get(sid)
    finally:
        assert restarted.stop() == 0


async def test_lost_chunk_ends_at_the_deadline_and_retention_purges_every_record(
    kafka_bootstrap: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    topics = await create_test_topics(kafka_bootstrap)
    worker = AggregatorProcess(
        kafka_bootstrap,
        topics,
        tmp_path / "worker.log",
        ending_timeout_s="2",
        retention_s="4",
        timer_interval_s="0.5",
    )
    sid = "sess-lost-chunk"
    try:
        await send(producer, topics.session_commands, sid, encode_value(start_cmd(sid)))
        await states_until(kafka_bootstrap, topics, sid, lambda s: True)
        for index, events in ((0, [cat_event(sid, 0, 1.0, 2.0, 0.8)]), (2, [])):
            await send(producer, topics.chunk_results, sid, encode_value(chunk_result(sid, index, events)))
        # Ingest published 3 chunks; the result of chunk 1 is lost.
        await send(
            producer, topics.session_lifecycle, sid, encode_value(lifecycle(sid, IngestState.ENDED, 3))
        )
        states = await states_until(kafka_bootstrap, topics, sid, finished)
        final = states[-1]
        assert final.status is SessionStatus.FINISHED
        assert final.status_reason == "the results of 1 chunk(s) never arrived: 1"
        assert final.missing_chunks == [1]
        waited = (final.ended_at - final.ending_since).total_seconds()  # type: ignore[operator]
        assert 2.0 <= waited < 10.0
        chunks, events = await session_records(kafka_bootstrap, topics, sid)
        statuses = {k: SessionChunk.model_validate_json(v).chunk.status for k, v in chunks.items() if v}
        assert statuses == {f"{sid}/chunk/0": "ok", f"{sid}/chunk/1": "missing", f"{sid}/chunk/2": "ok"}
        assert len(events) == 1

        # Retention: 4 s after it ended, the session is removed from every topic the aggregator
        # writes, and a purge command tells ingest to remove its checkpoint and recording.
        deadline = time.monotonic() + 30
        partition = session_partition(sid, topics.partitions)
        while True:
            headers = await latest_values(kafka_bootstrap, topics.session_state, partition, sid)
            if headers.get(sid, b"") is None:
                break
            assert time.monotonic() < deadline, "the session was not purged"
            await asyncio.sleep(0.5)
        chunks, events = await session_records(kafka_bootstrap, topics, sid)
        assert set(chunks) == {f"{sid}/chunk/{i}" for i in range(3)}
        assert set(events) == {f"{sid}/event/0"}
        assert all(value is None for value in [*chunks.values(), *events.values()])
        commands = await latest_values(kafka_bootstrap, topics.session_commands, partition, sid)
        assert isinstance(decode_command(commands[sid]), PurgeSession)
        assert "Traceback" not in worker.log()
    finally:
        assert worker.stop() == 0


async def test_worker_refuses_missing_topics(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LIVESTREAM_TOPIC_PREFIX": "no-such-prefix-for-aggregator",
        "LIVESTREAM_AGGREGATOR_STARTUP_TIMEOUT_S": "1",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aggregator"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "input topics do not exist" in result.stderr
