"""Analyzer service: a consumer group on the chunk topic producing events and chunk results.

Per chunk record, in this order:
  1. decode + inference in a worker thread (the event loop keeps heartbeating Kafka);
  2. produce the chunk's events to the events topic, then its ChunkResult (which repeats the
     events) to the chunk-results topic, and await the broker's acks for all of them;
  3. commit the chunk's offset.
A crash before 3 redelivers the chunk to some analyzer of the group, which re-produces the
same records: event ids are deterministic (``schemas.records.event_id_for``) and the
aggregator folds chunk results idempotently by chunk index, so the guarantee is
at-least-once delivery with idempotent consumers; consumers of the events topic de-duplicate
by ``event_id``. A crash after 3 loses nothing. A chunk that cannot be analysed (bad JPEG,
unsupported query) still gets a ``failed`` ChunkResult so its session can finish.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import CommitFailedError, IllegalStateError
from PIL import Image

from analyzer.detector import ObjectDetector
from analyzer.models import MODEL_INPUT_SIZE
from analyzer.query import parse_query
from analyzer.scoring import FrameDetections, ScoringPolicy, score_chunk
from analyzer.settings import AnalyzerSettings
from livestream.errors import LivestreamError, RecordError
from livestream.kafka.serde import decode_value, encode_key, encode_value
from schemas.records import ChunkRecord, ChunkResult
from schemas.topics import Topics

log = logging.getLogger("analyzer")


class ChunkAnalyzer:
    """Pure-ish core: one ChunkRecord in, one ChunkResult (with events) out. No Kafka."""

    def __init__(
        self, detector: ObjectDetector, policy: ScoringPolicy, analyzer_id: str | None = None
    ) -> None:
        self._detector = detector
        self._policy = policy
        self._analyzer_id = analyzer_id

    def analyze(self, chunk: ChunkRecord) -> ChunkResult:
        analysis_id = uuid.uuid4().hex
        started = time.perf_counter()
        targets: list[str] = []
        try:
            query = parse_query(chunk.rapid_review_query)
            targets = list(query.targets)
            policy = self._policy
            if query.score_floor is not None and query.score_floor > policy.threshold:
                # An open query (no targets named) reports only confident detections.
                policy = replace(policy, threshold=query.score_floor)
            images = [_decode_jpeg(frame.jpeg) for frame in chunk.frames]
            detections = self._detector.detect(images) if images else []
            frames = [
                FrameDetections(frame.stream_time, dets)
                for frame, dets in zip(chunk.frames, detections, strict=True)
            ]
            events = score_chunk(chunk, frames, targets, analysis_id, policy)
            status, error = "ok", None
        except (LivestreamError, OSError, ValueError) as exc:
            # Logged once here, where the failure becomes a failed ChunkResult.
            log.warning("chunk %s of session %s failed: %s", chunk.chunk_id, chunk.session_id, exc)
            events, status, error = [], "failed", str(exc)
        return ChunkResult(
            session_id=chunk.session_id,
            stream_id=chunk.stream_id,
            chunk_id=chunk.chunk_id,
            chunk_index=chunk.chunk_index,
            analysis_id=analysis_id,
            start_time=chunk.start_time,
            end_time=chunk.end_time,
            frame_count=len(chunk.frames),
            status=status,
            error=error,
            model=self._detector.model_name,
            analyzer_id=self._analyzer_id,
            targets=targets,
            events=events,
            inference_ms=round((time.perf_counter() - started) * 1000, 1),
        )


def _decode_jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        # The detector resizes every frame to its input size; let libjpeg decode at the
        # smallest DCT scale still at least that large (up to 8x less work on big frames).
        image.draft("RGB", (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE))
        return np.asarray(image.convert("RGB"))


class AnalyzerService:
    """Kafka edge around ``ChunkAnalyzer``; see the module docstring for the guarantees."""

    def __init__(self, settings: AnalyzerSettings, analyzer: ChunkAnalyzer) -> None:
        self._settings = settings
        self._analyzer = analyzer
        self._topics = Topics(prefix=settings.topic_prefix)
        # One inference at a time per process: onnxruntime already uses the cores; scale
        # out with more replicas in the consumer group.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        settings = self._settings
        consumer = AIOKafkaConsumer(
            self._topics.chunks,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=settings.group_id,
            client_id=settings.instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.max_poll_records,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=settings.instance_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        try:
            await producer.start()
            await consumer.start()
            log.info("analyzer consuming %s as group %s", self._topics.chunks, settings.group_id)
            await self._loop(consumer, producer)
        finally:
            # Stopping a client that never started is a no-op; one that half-started still
            # holds connections.
            await consumer.stop()
            await producer.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _loop(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for partition, records in batches.items():
                for record in records:
                    if self._stopping.is_set():
                        return
                    await self._handle(record, producer)
                    try:
                        await consumer.commit({partition: record.offset + 1})
                    except (CommitFailedError, IllegalStateError) as exc:
                        # The partition moved to another replica while this chunk was analysed
                        # (scale-out, a slow poll): its new owner redelivers the chunk and
                        # re-produces the same records, which consumers de-duplicate.
                        log.warning("chunk offset %d of %s not committed: %s", record.offset, partition, exc)

    async def _handle(self, record: ConsumerRecord, producer: AIOKafkaProducer) -> None:
        try:
            chunk = decode_value(ChunkRecord, record.value, topic=record.topic, offset=record.offset)
        except RecordError as exc:
            # A poison record has no trustworthy session to report to: log and move on.
            log.error("skipping undecodable chunk record: %s", exc)
            return
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, self._analyzer.analyze, chunk)
        key = encode_key(chunk.session_id)
        sends = [await producer.send(self._topics.events, encode_value(e), key=key) for e in result.events]
        sends.append(await producer.send(self._topics.chunk_results, encode_value(result), key=key))
        await asyncio.gather(*sends)
        log.info(
            "session %s chunk %d: %d frames, %d events, %.0f ms (%s)",
            chunk.session_id,
            chunk.chunk_index,
            result.frame_count,
            len(result.events),
            result.inference_ms,
            result.status,
        )


__all__ = ["AnalyzerService", "ChunkAnalyzer"]
