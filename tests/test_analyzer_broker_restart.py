"""The analyzer survives its broker going away and coming back (a killed, restarted broker).

Runs a broker of its own (``LocalKafkaBroker``, restarted in place on the same address and data),
so the shared test broker is never disturbed.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from PIL import Image
from skimage import data as skdata

from analyzer.detector import ObjectDetector
from analyzer.errors import BrokerOutageError
from analyzer.models import default_model_path
from analyzer.scoring import ScoringPolicy
from analyzer.service import AnalyzerService, ChunkAnalyzer
from analyzer.settings import AnalyzerSettings
from livestream.kafka.broker import LocalKafkaBroker
from livestream.kafka.serde import decode_value, encode_key, encode_value
from livestream.kafka.testing import create_test_topics
from schemas.records import ChunkRecord, ChunkResult, Frame, chunk_id_for

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.timeout(240)]


def cat_chunk(session: str, index: int) -> ChunkRecord:
    buffer = io.BytesIO()
    image = skdata.chelsea()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85)
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
        rapid_review_query="a cat",
        frames=[
            Frame(stream_time=start, width=image.shape[1], height=image.shape[0], jpeg=buffer.getvalue())
        ],
    )


class SlowAnalyzer(ChunkAnalyzer):
    """The real analyzer; chunk 1 takes a second longer, so the broker can die meanwhile."""

    def __init__(self, detector: ObjectDetector) -> None:
        super().__init__(detector, ScoringPolicy())
        self.slow_chunk_started = threading.Event()

    def analyze_many(self, chunks: Sequence[ChunkRecord]) -> list[ChunkResult]:
        if any(chunk.chunk_index == 1 for chunk in chunks):
            self.slow_chunk_started.set()
            time.sleep(1.0)
        return super().analyze_many(chunks)


@pytest.fixture
async def own_broker() -> AsyncIterator[LocalKafkaBroker]:
    broker = await asyncio.to_thread(LocalKafkaBroker().start)
    yield broker
    await asyncio.to_thread(broker.stop)


async def produce_chunk(bootstrap: str, topic: str, index: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        record = cat_chunk("s-restart", index)
        await producer.send_and_wait(topic, encode_value(record), key=encode_key(record.session_id))
    finally:
        await producer.stop()


async def results_for(
    bootstrap: str, topic: str, indexes: set[int], within_s: float = 90
) -> dict[int, ChunkResult]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[int, ChunkResult] = {}
    try:
        async with asyncio.timeout(within_s):
            while not indexes <= set(found):
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    for record in records:
                        result = decode_value(ChunkResult, record.value)
                        found[result.chunk_index] = result
    finally:
        await consumer.stop()
    return found


async def test_the_analyzer_survives_a_broker_restart(own_broker: LocalKafkaBroker) -> None:
    bootstrap = own_broker.bootstrap_servers
    topics = await create_test_topics(bootstrap)
    settings = AnalyzerSettings(
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=topics.prefix,
        group_id=f"{topics.prefix}-an",
        retry_backoff_s=0.1,
        retry_backoff_max_s=1.0,
        broker_outage_limit_s=120,
    )
    analyzer = SlowAnalyzer(ObjectDetector.load(default_model_path()))
    service = AnalyzerService(settings, analyzer)
    task = asyncio.create_task(service.run())
    try:
        await produce_chunk(bootstrap, topics.chunks, 0)
        assert (await results_for(bootstrap, topics.chunk_results, {0}))[0].status == "ok"

        # Chunk 1 is being analysed when the broker dies: its results are produced (and its
        # offset committed) while the broker is gone, or once it is back.
        await produce_chunk(bootstrap, topics.chunks, 1)
        assert await asyncio.to_thread(analyzer.slow_chunk_started.wait, 30)
        assert own_broker.pid is not None
        os.kill(own_broker.pid, signal.SIGKILL)
        await asyncio.sleep(3)
        assert not task.done()
        await asyncio.to_thread(own_broker.restart)

        await produce_chunk(bootstrap, topics.chunks, 2)
        results = await results_for(bootstrap, topics.chunk_results, {0, 1, 2})
        for index in (1, 2):
            assert results[index].status == "ok" and [e.label for e in results[index].events] == ["cat"]
        assert not task.done()
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)


async def test_the_analyzer_exits_once_the_broker_stays_away_past_the_limit(
    own_broker: LocalKafkaBroker,
) -> None:
    bootstrap = own_broker.bootstrap_servers
    topics = await create_test_topics(bootstrap)
    settings = AnalyzerSettings(
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=topics.prefix,
        group_id=f"{topics.prefix}-an",
        retry_backoff_s=0.1,
        retry_backoff_max_s=1.0,
        broker_outage_limit_s=4,
    )
    service = AnalyzerService(
        settings, ChunkAnalyzer(ObjectDetector.load(default_model_path()), ScoringPolicy())
    )
    task = asyncio.create_task(service.run())
    try:
        await produce_chunk(bootstrap, topics.chunks, 0)
        await results_for(bootstrap, topics.chunk_results, {0})
        assert own_broker.pid is not None
        os.kill(own_broker.pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(BrokerOutageError, match="broker errors for"):
            await asyncio.wait_for(task, 60)
        assert time.monotonic() - killed >= 4
    finally:
        service.stop()
        if not task.done():
            await asyncio.wait_for(task, 30)
