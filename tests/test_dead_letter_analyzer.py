"""The analyzer's failure rules on a real broker: poison chunks, transient errors, produce errors.

Faults are injected in front of the real pieces: a ``ChunkAnalyzer`` subclass that raises for
chosen chunks (around the real detector), and a real ``AIOKafkaProducer`` whose first sends to
the chunk-results topic fail as a broker timeout would.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaTimeoutError
from PIL import Image
from skimage import data as skdata

import analyzer.service as analyzer_service
from analyzer.detector import ObjectDetector
from analyzer.errors import DetectorError
from analyzer.models import default_model_path
from analyzer.scoring import ScoringPolicy
from analyzer.service import AnalyzerService, ChunkAnalyzer
from analyzer.settings import AnalyzerSettings
from livestream.kafka.serde import decode_value, encode_key, encode_value
from schemas.records import ChunkRecord, ChunkResult, DeadLetter, Frame, chunk_id_for
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.timeout(120)]

CAT = skdata.chelsea()
GRAY = np.full((120, 160, 3), 128, np.uint8)


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def chunk(session: str, index: int, images: list[np.ndarray], query: str) -> ChunkRecord:
    start = index * 4.0
    return ChunkRecord(
        session_id=session,
        stream_id="cams",
        chunk_id=chunk_id_for(session, index),
        chunk_index=index,
        start_time=start,
        end_time=start + 4.0,
        hls_cumulative_offset=start,
        capture_time=start,
        captured_at=datetime.now(UTC),
        media_sequences=[index],
        rapid_review_query=query,
        frames=[
            Frame(stream_time=start + i * 0.5, width=im.shape[1], height=im.shape[0], jpeg=jpeg(im))
            for i, im in enumerate(images)
        ],
    )


class FaultyAnalyzer(ChunkAnalyzer):
    """The real analyzer, except that chosen (session, chunk index) raise their planned errors.

    ``faults[(session, index)]`` is a list of exceptions raised by successive analyses of that
    chunk; once it is used up the chunk is analysed normally.
    """

    def __init__(self, detector: ObjectDetector, faults: dict[tuple[str, int], list[Exception]]) -> None:
        super().__init__(detector, ScoringPolicy(), analyzer_id="faulty")
        self._faults = faults
        self._lock = threading.Lock()
        self.calls: dict[tuple[str, int], int] = {}

    def analyze(self, chunk: ChunkRecord) -> ChunkResult:
        where = (chunk.session_id, chunk.chunk_index)
        with self._lock:
            self.calls[where] = self.calls.get(where, 0) + 1
            planned = self._faults.get(where)
            fault = planned.pop(0) if planned else None
        if fault is not None:
            raise fault
        return super().analyze(chunk)

    def analyze_many(self, chunks: Sequence[ChunkRecord]) -> list[ChunkResult]:
        # A batch holding a chunk with a planned fault fails as a whole, as a real poison chunk
        # would: the service then analyses its chunks one by one (``analyze``), where the fault
        # is raised and counted per chunk.
        with self._lock:
            if any(self._faults.get((c.session_id, c.chunk_index)) for c in chunks):
                raise RuntimeError("a chunk of the batch has a planned fault")
        return super().analyze_many(chunks)


@pytest.fixture(scope="module")
def detector() -> ObjectDetector:
    return ObjectDetector.load(default_model_path())


def settings_for(bootstrap: str, topics: Topics, **overrides: Any) -> AnalyzerSettings:
    return AnalyzerSettings(
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=topics.prefix,
        group_id=f"{topics.prefix}-an",
        retry_backoff_s=0.05,
        retry_backoff_max_s=0.2,
        **overrides,
    )


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_until(bootstrap: str, topic: str, model: type, done: Any, within_s: float = 60) -> list:
    """Everything on ``topic`` (decoded as ``model``) once ``done(found)`` holds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: list = []
    try:
        async with asyncio.timeout(within_s):
            while not done(found):
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    found.extend(decode_value(model, r.value) for r in records)
    finally:
        await consumer.stop()
    return found


async def everything_on(bootstrap: str, topic: str, partitions: int, model: type) -> list:
    """Everything on ``topic`` now (read up to the end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list = []
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        begins = await consumer.beginning_offsets(assigned)
        ends = await consumer.end_offsets(assigned)
        for tp in assigned:
            consumer.seek(tp, begins[tp])
        async with asyncio.timeout(30):
            for tp in assigned:
                while await consumer.position(tp) < ends[tp]:
                    for records in (await consumer.getmany(tp, timeout_ms=300)).values():
                        found.extend(decode_value(model, r.value) for r in records)
    finally:
        await consumer.stop()
    return found


def by_index(results: list[ChunkResult], session: str) -> dict[int, ChunkResult]:
    return {r.chunk_index: r for r in results if r.session_id == session}


async def stop_all(*services_and_tasks: tuple[AnalyzerService, asyncio.Task[None]]) -> None:
    for service, _ in services_and_tasks:
        service.stop()
    await asyncio.wait_for(asyncio.gather(*(task for _, task in services_and_tasks)), 30)


async def start(service: AnalyzerService) -> tuple[AnalyzerService, asyncio.Task[None]]:
    return service, asyncio.create_task(service.run())


async def test_a_poison_chunk_is_dead_lettered_and_its_partition_moves_on(
    kafka_bootstrap: str, topics: Topics, detector: ObjectDetector
) -> None:
    session = "s-poison"
    analyzer = FaultyAnalyzer(detector, {(session, 1): [RuntimeError(f"boom {i}") for i in range(10)]})
    running = await start(AnalyzerService(settings_for(kafka_bootstrap, topics, max_attempts=3), analyzer))
    try:
        records = [chunk(session, i, [CAT] if i != 1 else [GRAY], "a cat") for i in range(3)]
        await produce(
            kafka_bootstrap, topics.chunks, [(encode_key(session), encode_value(r)) for r in records]
        )
        results = await read_until(
            kafka_bootstrap,
            topics.chunk_results,
            ChunkResult,
            lambda found: len(by_index(found, session)) == 3,
        )
        letters = await read_until(
            kafka_bootstrap, topics.dead_letter, DeadLetter, lambda found: len(found) >= 1
        )
    finally:
        await stop_all(running)

    chunks = by_index(results, session)
    assert chunks[0].status == "ok" and [e.label for e in chunks[0].events] == ["cat"]
    assert chunks[2].status == "ok" and [e.label for e in chunks[2].events] == ["cat"]  # analysed after
    poisoned = chunks[1]
    assert poisoned.status == "failed" and poisoned.events == []
    assert poisoned.chunk_id == chunk_id_for(session, 1) and (poisoned.start_time, poisoned.end_time) == (
        4.0,
        8.0,
    )
    assert "after 3 attempts" in (poisoned.error or "") and "RuntimeError: boom 2" in (poisoned.error or "")
    assert analyzer.calls[(session, 1)] == 3

    [letter] = letters
    source = await source_record(
        kafka_bootstrap, topics.chunks, letter.source_partition, letter.source_offset
    )
    assert (letter.service, letter.source_topic, letter.session_id, letter.key) == (
        "analyzer",
        topics.chunks,
        session,
        session,
    )
    assert (letter.error_type, letter.error, letter.attempts) == ("RuntimeError", "boom 2", 3)
    assert letter.value == source and decode_value(ChunkRecord, source).chunk_index == 1


async def source_record(bootstrap: str, topic: str, partition: int, offset: int) -> bytes | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        record = await asyncio.wait_for(consumer.getone(tp), 10)
        return record.value
    finally:
        await consumer.stop()


async def test_a_transient_inference_error_is_retried_and_leaves_no_dead_letter(
    kafka_bootstrap: str, topics: Topics, detector: ObjectDetector
) -> None:
    session = "s-flaky"
    oom = DetectorError("inference failed: RuntimeException: CUDA out of memory", retryable=True)
    exhausted = [DetectorError("inference failed: Fail: device lost", retryable=True) for _ in range(5)]
    analyzer = FaultyAnalyzer(detector, {(session, 0): [oom], (session, 1): exhausted})
    settings = settings_for(kafka_bootstrap, topics, transient_attempts=3)
    running = await start(AnalyzerService(settings, analyzer))
    try:
        records = [chunk(session, i, [CAT], "a cat") for i in range(2)]
        await produce(
            kafka_bootstrap, topics.chunks, [(encode_key(session), encode_value(r)) for r in records]
        )
        results = await read_until(
            kafka_bootstrap,
            topics.chunk_results,
            ChunkResult,
            lambda found: len(by_index(found, session)) == 2,
        )
    finally:
        await stop_all(running)

    chunks = by_index(results, session)
    assert chunks[0].status == "ok" and [e.label for e in chunks[0].events] == ["cat"]
    assert analyzer.calls[(session, 0)] == 2  # failed once, succeeded on the retry
    # Retries used up: a failed result, not a dead letter (the error is not the record's fault).
    assert chunks[1].status == "failed" and "device lost" in (chunks[1].error or "")
    assert "after 3 attempts" in (chunks[1].error or "") and analyzer.calls[(session, 1)] == 3
    assert await everything_on(kafka_bootstrap, topics.dead_letter, topics.partitions, DeadLetter) == []


async def test_undecodable_records_are_dead_lettered(
    kafka_bootstrap: str, topics: Topics, detector: ObjectDetector
) -> None:
    session = "s-garbled"
    good = encode_value(chunk(session, 1, [CAT], "a cat"))
    readable_but_broken = good.replace(b'"chunk_index":1', b'"chunk_index":0').replace(
        b'"jpeg":"', b'"jpeg":"!!'
    )
    running = await start(
        AnalyzerService(settings_for(kafka_bootstrap, topics), ChunkAnalyzer(detector, ScoringPolicy()))
    )
    try:
        await produce(
            kafka_bootstrap,
            topics.chunks,
            [
                (b"\xffnot-a-session", b"not json"),
                (encode_key(session), readable_but_broken),
                (encode_key(session), good),
            ],
        )
        letters = await read_until(
            kafka_bootstrap, topics.dead_letter, DeadLetter, lambda found: len(found) >= 2
        )
        results = await read_until(
            kafka_bootstrap,
            topics.chunk_results,
            ChunkResult,
            lambda found: len(by_index(found, session)) == 2,
        )
    finally:
        await stop_all(running)

    by_value = {letter.value: letter for letter in letters}
    garbage = by_value[b"not json"]
    assert (garbage.session_id, garbage.key, garbage.error_type, garbage.attempts) == (
        None,
        "ff6e6f742d612d73657373696f6e",  # not UTF-8: hex
        "RecordError",
        1,
    )
    broken = by_value[readable_but_broken]
    assert (broken.session_id, broken.key, broken.error_type) == (session, session, "RecordError")
    assert "undecodable ChunkRecord" in broken.error
    chunks = by_index(results, session)
    assert chunks[0].status == "failed" and chunks[1].status == "ok"


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


async def test_produce_errors_are_retried(
    kafka_bootstrap: str, topics: Topics, detector: ObjectDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = "s-timeout"
    monkeypatch.setattr(FlakyProducer, "topic", topics.chunk_results)
    monkeypatch.setattr(FlakyProducer, "failures", 2)
    monkeypatch.setattr(FlakyProducer, "failed", 0)
    monkeypatch.setattr(analyzer_service, "AIOKafkaProducer", FlakyProducer)
    running = await start(
        AnalyzerService(settings_for(kafka_bootstrap, topics), ChunkAnalyzer(detector, ScoringPolicy()))
    )
    try:
        record = chunk(session, 0, [CAT], "a cat")
        await produce(kafka_bootstrap, topics.chunks, [(encode_key(session), encode_value(record))])
        results = await read_until(
            kafka_bootstrap,
            topics.chunk_results,
            ChunkResult,
            lambda found: len(by_index(found, session)) == 1,
        )
    finally:
        await stop_all(running)

    assert FlakyProducer.failed == 2
    [result] = results
    assert result.status == "ok" and [e.label for e in result.events] == ["cat"]


def test_the_retry_rule_flags_onnxruntime_runtime_failures_only() -> None:
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

    from analyzer.detector import is_transient_inference_error

    assert is_transient_inference_error(Fail("CUDA failure 2: out of memory"))
    assert is_transient_inference_error(RuntimeException("CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_transient_inference_error(InvalidArgument("Unexpected input data type"))
    assert not is_transient_inference_error(RuntimeError("not onnxruntime's"))
