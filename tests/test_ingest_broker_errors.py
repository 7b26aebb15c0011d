"""Ingest on a real broker when the broker or a command misbehaves.

* Poison commands: an undecodable one, and a StartSession whose handling keeps raising an
  unexpected error, land in the dead-letter topic; the second is reported FAILED; the partition
  moves on (the next command is handled).
* Produce errors: a few failed chunk sends are retried (nothing lost, none out of order); errors
  that outlast ``broker_outage_limit_s`` stop the service with ``BrokerOutageError`` without a
  final report, and the next instance resumes the session from its checkpoint and ends it with
  every chunk.

Faults are injected into a real producer (``FlakyProducer``) talking to the real broker, as in
``test_dead_letter_analyzer``: the broker itself is restarted in ``test_crash_broker``.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

import ingest.service as ingest_service
from ingest.errors import BrokerOutageError
from ingest.service import IngestService, read_open_checkpoints
from ingest.settings import IngestSettings
from livestream.kafka.serde import decode_value, encode_key, encode_value
from livestream.testsource import LiveHlsSource, short_script
from schemas.records import ChunkRecord, DeadLetter, IngestState, SessionLifecycle, StartSession
from schemas.topics import Topics

pytestmark = pytest.mark.kafka


class FlakyProducer(AIOKafkaProducer):
    """A real producer whose first ``failures`` sends to one topic fail like a broker timeout."""

    topic = ""
    failures = 0
    failed = 0

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> Any:
        if topic == FlakyProducer.topic and FlakyProducer.failed < FlakyProducer.failures:
            FlakyProducer.failed += 1
            raise KafkaTimeoutError("injected: no acknowledgement in time")
        return await super().send(topic, *args, **kwargs)


def settings_for(bootstrap: str, topics: Topics, storage: Path, **overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "topic_prefix": topics.prefix,
        "group_id": f"ingest-test-{uuid.uuid4().hex[:8]}",
        "storage_dir": storage,
        "chunk_seconds": 2.0,
        "http_retries": 0,
        "http_backoff_seconds": 0.05,
        "live_edge_segments": 1000,  # from the first segment: every run sees the whole script
        "retry_backoff_s": 0.05,
        "retry_backoff_max_s": 0.2,
        **overrides,
    }
    return IngestSettings(**values)


def start(session_id: str, url: str) -> StartSession:
    return StartSession(
        session_id=session_id,
        stream_id=f"st-{session_id}",
        name=session_id,
        source_url=url,
        rapid_review_query="q",
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def read(bootstrap: str, topic_names: list[str], done: Any, within_s: float = 60.0) -> list[Any]:
    """Every record of these topics from the start, until ``done(records)``."""
    consumer = AIOKafkaConsumer(*topic_names, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + within_s
    try:
        while not done(records):
            assert time.monotonic() < deadline, f"timed out with {len(records)} records"
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return records


def lifecycle_of(records: list[Any], topics: Topics, session_id: str) -> list[SessionLifecycle]:
    reports = [
        decode_value(SessionLifecycle, r.value) for r in records if r.topic == topics.session_lifecycle
    ]
    return [r for r in reports if r.session_id == session_id]


def chunks_of(records: list[Any], topics: Topics, session_id: str) -> list[ChunkRecord]:
    chunks = [decode_value(ChunkRecord, r.value) for r in records if r.topic == topics.chunks]
    return [c for c in chunks if c.session_id == session_id]


def final(records: list[Any], topics: Topics, session_id: str) -> SessionLifecycle | None:
    ended = [r for r in lifecycle_of(records, topics, session_id) if r.state is not IngestState.ACTIVE]
    return ended[-1] if ended else None


async def test_poison_commands_are_dead_lettered_and_the_partition_moves_on(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_id, next_id = (f"{name}-{uuid.uuid4().hex[:6]}" for name in ("poison", "next"))
    original = IngestService.start_session
    calls = {"poison": 0}

    def start_session(self: IngestService, command: StartSession, **kwargs: Any) -> Any:
        if command.session_id == poison_id:
            calls["poison"] += 1
            raise RuntimeError("injected bug while starting a session")
        return original(self, command, **kwargs)

    monkeypatch.setattr(IngestService, "start_session", start_session)
    settings = settings_for(kafka_bootstrap, topics, tmp_path, max_attempts=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    stop = asyncio.Event()
    try:
        # One partition for all three (same key), so "moves on" is about this partition.
        key = encode_key(poison_id)
        await producer.send_and_wait(topics.session_commands, b"\xff not json", key=key, partition=0)
        await producer.send_and_wait(
            topics.session_commands,
            encode_value(start(poison_id, "http://127.0.0.1:1/x.m3u8")),
            key=key,
            partition=0,
        )
        refused = start(next_id, f"http://127.0.0.1:{closed_port()}/x.m3u8")
        await producer.send_and_wait(topics.session_commands, encode_value(refused), key=key, partition=0)
        async with IngestService(settings) as service:
            running = asyncio.create_task(service.run(stop))
            records = await read(
                kafka_bootstrap,
                [topics.dead_letter, topics.session_lifecycle],
                lambda found: final(found, topics, next_id) is not None,
            )
            stop.set()
            await asyncio.wait_for(running, 10)
    finally:
        await producer.stop()

    letters = [decode_value(DeadLetter, r.value) for r in records if r.topic == topics.dead_letter]
    assert [(letter.source_partition, letter.attempts, letter.error_type) for letter in letters] == [
        (0, 1, "RecordError"),
        (0, 2, "RuntimeError"),
    ]
    assert letters[1].session_id == poison_id and letters[0].session_id is None
    assert letters[0].value == b"\xff not json" and letters[1].source_offset == letters[0].source_offset + 1
    assert all(
        letter.service == "ingest" and letter.source_topic == topics.session_commands for letter in letters
    )
    assert calls["poison"] == 2
    poison_final = final(records, topics, poison_id)
    assert poison_final is not None and poison_final.state is IngestState.FAILED
    assert poison_final.reason is not None and "dead-letter" in poison_final.reason
    next_final = final(records, topics, next_id)  # the partition moved on past the poison
    assert next_final is not None and next_final.state is IngestState.FAILED
    assert next_final.reason is not None and "Connection refused" in next_final.reason


async def test_produce_errors_are_retried_then_the_outage_limit_stops_ingest_and_the_session_resumes(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = f"outage-{uuid.uuid4().hex[:6]}"
    source = LiveHlsSource(short_script(2.0), segment_seconds=1.0, realtime=True)
    monkeypatch.setattr(ingest_service, "AIOKafkaProducer", FlakyProducer)
    monkeypatch.setattr(FlakyProducer, "topic", topics.chunks)
    monkeypatch.setattr(FlakyProducer, "failed", 0)
    # Two failed sends: retried within the limit. Then every send fails: past the limit.
    monkeypatch.setattr(FlakyProducer, "failures", 2)
    settings = settings_for(kafka_bootstrap, topics, tmp_path, broker_outage_limit_s=1.5)
    commands = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await commands.start()
    await asyncio.to_thread(source.start)
    try:
        await commands.send_and_wait(
            topics.session_commands, encode_value(start(session_id, source.url)), key=encode_key(session_id)
        )
        async with IngestService(settings) as service:
            running = asyncio.create_task(service.run(asyncio.Event()))
            records = await read(kafka_bootstrap, [topics.chunks], lambda found: len(found) >= 1)
            assert FlakyProducer.failed == 2  # the first chunk went out after two retries
            monkeypatch.setattr(FlakyProducer, "failures", 10**9)  # the broker is "gone" for chunks
            began = time.monotonic()
            with pytest.raises(BrokerOutageError, match="while trying to publish a chunk"):
                await asyncio.wait_for(running, 30)
            gave_up_after = time.monotonic() - began
        assert gave_up_after < 10, gave_up_after
        open_sessions = await _open_checkpoints(kafka_bootstrap, topics)
        assert session_id in open_sessions  # no final report: it resumes after the restart
        assert (
            final(await read(kafka_bootstrap, [topics.session_lifecycle], lambda _: True), topics, session_id)
            is None
        )

        # The restarted service (the broker is back) resumes the session and ends it with
        # every chunk of the script, each index once or more (duplicates are de-duplicated
        # downstream by chunk_id), none missing.
        monkeypatch.setattr(FlakyProducer, "failures", 0)
        restarted = settings_for(kafka_bootstrap, topics, tmp_path, group_id=settings.group_id)
        stop = asyncio.Event()
        async with IngestService(restarted) as service:
            running = asyncio.create_task(service.run(stop))
            records = await read(
                kafka_bootstrap,
                [topics.chunks, topics.session_lifecycle],
                lambda found: final(found, topics, session_id) is not None,
            )
            stop.set()
            await asyncio.wait_for(running, 10)
    finally:
        await asyncio.to_thread(source.stop)
        await commands.stop()

    ended = final(records, topics, session_id)
    assert ended is not None and ended.state is IngestState.ENDED, ended
    indexes = sorted({c.chunk_index for c in chunks_of(records, topics, session_id)})
    assert indexes == list(range(ended.chunks_published)) and ended.chunks_published >= 2


async def _open_checkpoints(bootstrap: str, topics: Topics) -> set[str]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await reader.start()
    try:
        opened = await read_open_checkpoints(
            reader, topics.ingest_checkpoints, list(range(topics.partitions))
        )
    finally:
        await reader.stop()
    return {checkpoint.session_id for _, checkpoint in opened}
