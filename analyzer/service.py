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
by ``event_id``. A crash after 3 loses nothing.

A chunk that cannot be analysed (bad JPEG, unsupported query) still gets a ``failed`` ChunkResult
so its session can finish (the aggregator waits for a result per published chunk). So does a
chunk record that cannot even be decoded (a bad field, bad base64 frames), as long as its raw
JSON still names its session, stream and chunk index and its key is that session
(``chunk_identity``); only a record without a readable session is logged and skipped, since
there is no session to report it to.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

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
from schemas.records import ChunkRecord, ChunkResult, chunk_id_for
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

    def failed_result(self, chunk: ChunkIdentity, error: str) -> ChunkResult:
        """The ``failed`` result of a chunk that could not be decoded (nothing was analysed)."""
        return ChunkResult(
            session_id=chunk.session_id,
            stream_id=chunk.stream_id,
            chunk_id=chunk_id_for(chunk.session_id, chunk.chunk_index),
            chunk_index=chunk.chunk_index,
            analysis_id=uuid.uuid4().hex,
            start_time=chunk.start_time,
            end_time=chunk.end_time,
            frame_count=0,
            status="failed",
            error=error,
            model=self._detector.model_name,
            analyzer_id=self._analyzer_id,
            targets=[],
            events=[],
            inference_ms=0.0,
        )


@dataclass(frozen=True)
class ChunkIdentity:
    """What an undecodable chunk record still says about itself: enough to report it failed."""

    session_id: str
    stream_id: str
    chunk_index: int
    start_time: float
    end_time: float


def chunk_identity(key: bytes | None, value: bytes | None) -> ChunkIdentity | None:
    """The identity of a chunk record that failed to decode, read from its raw JSON, or None.

    Needs ``session_id``, ``stream_id`` (strings) and ``chunk_index`` (an integer >= 0), and the
    record's key must be that session id: a record whose key disagrees with its value cannot be
    trusted to belong to that session. Times that are unreadable become 0.0.
    """
    if key is None or value is None:
        return None
    try:
        raw = json.loads(value)
    except ValueError:  # not JSON, or not UTF-8
        return None
    if not isinstance(raw, dict):
        return None
    session_id, stream_id, index = raw.get("session_id"), raw.get("stream_id"), raw.get("chunk_index")
    if not (isinstance(session_id, str) and session_id and isinstance(stream_id, str)):
        return None
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return None
    if key != encode_key(session_id):
        return None
    return ChunkIdentity(
        session_id, stream_id, index, _seconds(raw.get("start_time")), _seconds(raw.get("end_time"))
    )


def _seconds(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


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
            identity = chunk_identity(record.key, record.value)
            if identity is None:
                # No trustworthy session to report to: log and move on.
                log.error("skipping undecodable chunk record: %s", exc)
                return
            # Its session waits for a result per chunk: report this one failed so it can finish.
            log.warning(
                "chunk %d of session %s is undecodable, reported failed: %s",
                identity.chunk_index,
                identity.session_id,
                exc,
            )
            result = self._analyzer.failed_result(identity, str(exc))
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, self._analyzer.analyze, chunk)
        key = encode_key(result.session_id)
        sends = [await producer.send(self._topics.events, encode_value(e), key=key) for e in result.events]
        sends.append(await producer.send(self._topics.chunk_results, encode_value(result), key=key))
        await asyncio.gather(*sends)
        log.info(
            "session %s chunk %d: %d frames, %d events, %.0f ms (%s)",
            result.session_id,
            result.chunk_index,
            result.frame_count,
            len(result.events),
            result.inference_ms,
            result.status,
        )


__all__ = ["AnalyzerService", "ChunkAnalyzer", "ChunkIdentity", "chunk_identity"]
