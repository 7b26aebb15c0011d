"""Analyzer service on a real broker with the real ONNX detector and real photos."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from PIL import Image
from skimage import data as skdata

from analyzer.detector import ObjectDetector
from analyzer.models import default_model_path
from analyzer.scoring import ScoringPolicy
from analyzer.service import AnalyzerService, ChunkAnalyzer
from analyzer.settings import AnalyzerSettings
from livestream.kafka.serde import decode_value, encode_key, encode_value
from livestream.kafka.testing import create_test_topics
from schemas.records import ChunkRecord, ChunkResult, Event, Frame, chunk_id_for
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model]


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def chunk(session: str, index: int, images: list[np.ndarray], query: str | None) -> ChunkRecord:
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


@pytest.fixture(scope="module")
async def running_analyzer(kafka_bootstrap: str) -> AsyncIterator[Topics]:
    topics = await create_test_topics(kafka_bootstrap)
    settings = AnalyzerSettings(
        kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix, group_id=f"{topics.prefix}-an"
    )
    detector = ObjectDetector.load(default_model_path())
    service = AnalyzerService(settings, ChunkAnalyzer(detector, ScoringPolicy()))
    task = asyncio.create_task(service.run())
    yield topics
    service.stop()
    await asyncio.wait_for(task, 30)


async def produce(bootstrap: str, topic: str, records: list[ChunkRecord | bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        for record in records:
            if isinstance(record, bytes):
                await producer.send_and_wait(topic, record, key=b"poison")
            else:
                await producer.send_and_wait(topic, encode_value(record), key=encode_key(record.session_id))
    finally:
        await producer.stop()


async def collect(bootstrap: str, topic: str, model: type, count: int, within_s: float = 90) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: list = []
    try:
        async with asyncio.timeout(within_s):
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    found.extend(decode_value(model, r.value) for r in records)
    finally:
        await consumer.stop()
    return found


async def test_chunks_become_events_and_results(kafka_bootstrap: str, running_analyzer: Topics) -> None:
    topics = running_analyzer
    cat, coffee, gray = skdata.chelsea(), skdata.coffee(), np.full((300, 400, 3), 128, np.uint8)
    await produce(
        kafka_bootstrap,
        topics.chunks,
        [
            b"not json",  # a poison record is skipped, not fatal
            chunk("s-cat", 0, [gray, cat, cat, cat, gray, gray, gray, gray], "is there a cat or a cup?"),
            chunk("s-cat", 1, [coffee, coffee, gray, gray], "is there a cat or a cup?"),
            chunk("s-bad", 0, [gray], "detect unicorns"),
        ],
    )
    results = {r.chunk_id: r for r in await collect(kafka_bootstrap, topics.chunk_results, ChunkResult, 3)}
    first, second = results[chunk_id_for("s-cat", 0)], results[chunk_id_for("s-cat", 1)]
    assert first.status == "ok" and first.targets == ["cat", "cup"] and first.frame_count == 8
    [cat_event] = first.events
    assert (cat_event.label, cat_event.start_time, cat_event.end_time) == ("cat", 0.5, 2.0)
    assert cat_event.confidence > 0.6 and cat_event.t_start == "00:00" and cat_event.t_end == "00:02"
    assert [(e.label, e.start_time) for e in second.events] == [("cup", 4.0)]
    bad = results[chunk_id_for("s-bad", 0)]
    assert bad.status == "failed" and "query refused" in (bad.error or "") and "unicorns" in (bad.error or "")

    events = await collect(kafka_bootstrap, topics.events, Event, 2)
    assert {e.event_id for e in events} == {cat_event.event_id, second.events[0].event_id}
    assert all(e.session_id == "s-cat" for e in events)


async def test_undecodable_chunks_of_a_readable_session_get_failed_results(
    kafka_bootstrap: str, running_analyzer: Topics
) -> None:
    """So the session can finish: the aggregator waits for a result per published chunk."""
    topics = running_analyzer
    good = chunk("s-broken", 0, [skdata.chelsea()], "a cat")
    raw = json.loads(encode_value(good))
    bad_frames = {**raw, "chunk_index": 1, "start_time": 4.0, "end_time": 8.0}
    bad_frames["frames"] = [{**raw["frames"][0], "jpeg": "not base64 at all!"}]
    bad_field = {**raw, "chunk_index": 2, "capture_time": "yesterday", "start_time": "4"}
    del bad_field["end_time"]
    foreign = {**bad_frames, "session_id": "s-other", "chunk_index": 3}  # key says s-broken: untrusted
    records = [
        (b"s-broken", json.dumps(bad_frames).encode()),
        (b"s-broken", json.dumps(bad_field).encode()),
        (b"s-broken", json.dumps(foreign).encode()),
        (b"s-broken", json.dumps({"session_id": "s-broken", "stream_id": "cams"}).encode()),  # no index
        (b"s-broken", encode_value(good)),  # same partition, after the rest: all were handled
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topics.chunks, value, key=key)
    finally:
        await producer.stop()

    results: list[ChunkResult] = []
    async with asyncio.timeout(90):
        while chunk_id_for("s-broken", 0) not in {r.chunk_id for r in results}:
            found = await collect(kafka_bootstrap, topics.chunk_results, ChunkResult, len(results) + 1)
            results = [r for r in found if r.session_id in {"s-broken", "s-other"}]
    by_index = {r.chunk_index: r for r in results}
    assert sorted(by_index) == [0, 1, 2]  # the foreign and the index-less records were skipped
    assert by_index[0].status == "ok"
    for index, (start, end) in ((1, (4.0, 8.0)), (2, (0.0, 0.0))):
        failed = by_index[index]
        assert failed.status == "failed" and failed.error and "undecodable ChunkRecord" in failed.error
        assert (failed.session_id, failed.stream_id) == ("s-broken", "cams")
        assert failed.chunk_id == chunk_id_for("s-broken", index)
        assert (failed.start_time, failed.end_time) == (start, end)
        assert (failed.events, failed.frame_count, failed.targets) == ([], 0, [])


async def test_a_second_replica_takes_over_partitions_and_no_chunk_is_lost(kafka_bootstrap: str) -> None:
    """Scale-out is the consumer group's: a replica joining mid-stream shares the partitions."""
    topics = await create_test_topics(kafka_bootstrap)
    detector = ObjectDetector.load(default_model_path())
    group = f"{topics.prefix}-scale"

    def replica(name: str) -> AnalyzerService:
        settings = AnalyzerSettings(
            kafka_bootstrap_servers=kafka_bootstrap,
            topic_prefix=topics.prefix,
            group_id=group,
            instance_id=name,
        )
        return AnalyzerService(settings, ChunkAnalyzer(detector, ScoringPolicy(), analyzer_id=name))

    cat = skdata.chelsea()
    sessions = [f"scale-{i}" for i in range(12)]  # spread over all partitions
    first, second = replica("replica-a"), replica("replica-b")
    tasks = [asyncio.create_task(first.run())]
    try:
        batch = [chunk(s, 0, [cat], "a cat") for s in sessions]
        await produce(kafka_bootstrap, topics.chunks, batch)
        results = await collect(kafka_bootstrap, topics.chunk_results, ChunkResult, len(batch))
        assert {r.analyzer_id for r in results} == {"replica-a"}

        tasks.append(asyncio.create_task(second.run()))
        produced = list(batch)
        for index in range(1, 30):  # keep the stream flowing until the new replica shares it
            more = [chunk(s, index, [cat], "a cat") for s in sessions]
            await produce(kafka_bootstrap, topics.chunks, more)
            produced += more
            results = await collect(kafka_bootstrap, topics.chunk_results, ChunkResult, len(produced))
            if "replica-b" in {r.analyzer_id for r in results}:
                break
        # Redeliveries after the rebalance may add duplicates: wait for every chunk, not a count.
        wanted = {c.chunk_id for c in produced}
        async with asyncio.timeout(90):
            while {r.chunk_id for r in results} != wanted:
                results = await collect(kafka_bootstrap, topics.chunk_results, ChunkResult, len(results) + 1)
    finally:
        first.stop()
        second.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

    assert {r.analyzer_id for r in results} == {"replica-a", "replica-b"}
    # Every chunk has a result: redeliveries may duplicate, never lose.
    assert {r.chunk_id for r in results} == {c.chunk_id for c in produced}
    assert all(r.status == "ok" and [e.label for e in r.events] == ["cat"] for r in results)
