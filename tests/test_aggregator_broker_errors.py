"""The aggregator worker when the broker refuses its writes (retried, then a non-zero exit) and
when a fold raises (the record is dead-lettered and skipped).

Faults are injected in the worker process: in front of faust's real producer (a wrapper around
its ``send``: the first N sends to one topic fail as a broker error would, with faust's
``ProducerSendError``), and around the fold (raises for one session's chunk results).
Everything else is the real worker on the real broker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from livestream.kafka.serde import encode_key, encode_value
from schemas.records import (
    EndSession,
    IngestState,
    SessionHeader,
    SessionLifecycle,
    SessionStatus,
    StartSession,
)
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

REPO_ROOT = Path(__file__).resolve().parents[1]

# Runs the worker with faust's producer failing the first $FAULT_COUNT sends (-1: all of them)
# to topics named like $FAULT_TOPIC.
FAULTY_WORKER = """
import os, sys
from faust.exceptions import ProducerSendError
from faust.transport.drivers import aiokafka as driver

topic, left = os.environ["FAULT_TOPIC"], [int(os.environ["FAULT_COUNT"])]
real_send = driver.Producer.send

async def send(self, name, *args, **kwargs):
    if name == topic and left[0] != 0:
        left[0] -= 1
        print(f"injected fault on {name}", flush=True)
        raise ProducerSendError("injected: broker unavailable")
    return await real_send(self, name, *args, **kwargs)

driver.Producer.send = send

import aggregator.app
real_fold, doomed = aggregator.app.fold, os.environ.get("FAULT_FOLD_SESSION")

def fold(before, record, *args):
    if record.session_id == doomed and getattr(record, "chunk_index", None) == 1:
        raise ZeroDivisionError("injected: a bug in the fold")
    return real_fold(before, record, *args)

aggregator.app.fold = fold
from aggregator.__main__ import main
sys.exit(main())
"""


class FaultyWorker:
    def __init__(
        self, bootstrap: str, topics: Topics, log_path: Path, fault_topic: str, count: int, **env: str
    ):
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", FAULTY_WORKER],
            cwd=REPO_ROOT,
            env={
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "LIVESTREAM_TOPIC_PREFIX": topics.prefix,
                "LIVESTREAM_AGGREGATOR_LOG_LEVEL": "info",
                "LIVESTREAM_AGGREGATOR_RETRY_BACKOFF_S": "0.1",
                "LIVESTREAM_AGGREGATOR_RETRY_BACKOFF_MAX_S": "0.5",
                "FAULT_TOPIC": fault_topic,
                "FAULT_COUNT": str(count),
                "FAULT_FOLD_SESSION": env.pop("fault_fold_session", ""),
                **{f"LIVESTREAM_AGGREGATOR_{k.upper()}": v for k, v in env.items()},
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


def start_cmd(session_id: str) -> StartSession:
    return StartSession(
        session_id=session_id,
        stream_id=f"stream-{session_id}",
        name=session_id,
        source_url="https://example.test/live.m3u8",
        rapid_review_query="detect a cat",
        created_by="tester",
    )


async def last_state(bootstrap: str, topics: Topics, session_id: str, status: SessionStatus) -> SessionHeader:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.session_state, p) for p in range(topics.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async with asyncio.timeout(45):
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        if record.key == encode_key(session_id) and record.value is not None:
                            header = SessionHeader.model_validate_json(record.value)
                            if header.status is status:
                                return header
    finally:
        await consumer.stop()


async def test_failed_batch_writes_are_retried(
    kafka_bootstrap: str, topics: Topics, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    sid = "sess-retried"
    worker = FaultyWorker(kafka_bootstrap, topics, tmp_path / "worker.log", topics.session_state, 3)
    try:
        await producer.send_and_wait(
            topics.session_commands, encode_value(start_cmd(sid)), key=encode_key(sid)
        )
        await producer.send_and_wait(
            topics.session_commands,
            encode_value(EndSession(session_id=sid, stream_id=f"stream-{sid}")),
            key=encode_key(sid),
        )
        ended = SessionLifecycle(session_id=sid, stream_id=f"stream-{sid}", state=IngestState.ENDED)
        await producer.send_and_wait(topics.session_lifecycle, encode_value(ended), key=encode_key(sid))
        final = await last_state(kafka_bootstrap, topics, sid, SessionStatus.FINISHED)
        assert final.chunk_count == 0
        assert worker.process.poll() is None, worker.log()
    finally:
        code = worker.stop()
    log = worker.log()
    assert log.count("injected fault") == 3 and log.count("batch write failed") == 3, log
    assert code == 0, log


async def test_a_broker_refusing_writes_past_the_limit_stops_the_worker_non_zero(
    kafka_bootstrap: str, topics: Topics, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    sid = "sess-outage"
    worker = FaultyWorker(
        kafka_bootstrap, topics, tmp_path / "worker.log", topics.session_state, -1, broker_outage_limit_s="2"
    )
    try:
        await producer.send_and_wait(
            topics.session_commands, encode_value(start_cmd(sid)), key=encode_key(sid)
        )
        started = time.monotonic()
        code = await asyncio.to_thread(worker.process.wait, 60)
    finally:
        worker.stop()
    log = worker.log()
    assert code not in (0, None), log
    assert "BrokerOutageError" in log and "while trying to write a batch" in log, log
    print(f"worker exited {code} {time.monotonic() - started:.1f}s after the record was produced")


async def test_a_record_whose_fold_raises_is_dead_lettered_and_skipped(
    kafka_bootstrap: str, topics: Topics, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    from aiokafka import AIOKafkaConsumer as Consumer

    from schemas.records import ChunkResult, DeadLetter, chunk_id_for

    sid = "sess-bug"
    worker = FaultyWorker(
        kafka_bootstrap, topics, tmp_path / "worker.log", "none", 0, **{"fault_fold_session": sid}
    )

    def result(index: int) -> bytes:
        return encode_value(
            ChunkResult(
                session_id=sid,
                stream_id=f"stream-{sid}",
                chunk_id=chunk_id_for(sid, index),
                chunk_index=index,
                analysis_id=f"a-{index}",
                start_time=index * 4.0,
                end_time=index * 4.0 + 4.0,
                frame_count=1,
                status="ok",
                model="m",
                targets=[],
                events=[],
                inference_ms=1.0,
            )
        )

    results = [result(index) for index in range(3)]
    try:
        key = encode_key(sid)
        await producer.send_and_wait(topics.session_commands, encode_value(start_cmd(sid)), key=key)
        await last_state(kafka_bootstrap, topics, sid, SessionStatus.INITIALIZING)
        for value in results:
            await producer.send_and_wait(topics.chunk_results, value, key=key)
        ended = SessionLifecycle(
            session_id=sid, stream_id=f"stream-{sid}", state=IngestState.ENDED, chunks_published=3
        )
        await producer.send_and_wait(topics.session_lifecycle, encode_value(ended), key=key)
        await producer.send_and_wait(
            topics.session_commands,
            encode_value(EndSession(session_id=sid, stream_id=f"stream-{sid}")),
            key=key,
        )
        consumer = Consumer(
            topics.dead_letter, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            async with asyncio.timeout(45):
                record = await consumer.getone()
        finally:
            await consumer.stop()
        # Chunk 1 is never folded, so the session waits for its ending deadline (not awaited
        # here); the worker goes on.
        assert worker.process.poll() is None, worker.log()
    finally:
        worker.stop()
    letter = DeadLetter.model_validate_json(record.value)
    assert (letter.service, letter.source_topic, letter.session_id) == (
        "aggregator",
        topics.chunk_results,
        sid,
    )
    assert (letter.error_type, letter.error) == ("ZeroDivisionError", "injected: a bug in the fold")
    assert letter.value == results[1]
