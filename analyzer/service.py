"""Analyzer service: a consumer group on the chunk topic producing events and chunk results.

Chunk records are handled in batches of up to ``batch_max_chunks`` (of any sessions and
partitions: what one poll returns, topped up for ``batch_max_wait_ms``). Per batch, in order:
  1. decode + inference in a worker thread (the event loop keeps heartbeating Kafka): every
     frame of every chunk in one detector call (``ChunkAnalyzer.analyze_many``);
  1b. the events' thumbnails rendered and stored in the blob store, in the same worker thread
     (``analyzer.thumbnails``), so no produced event names a thumbnail that is not stored;
  2. produce each chunk's events to the events topic, then its ChunkResult (which repeats the
     events) to the chunk-results topic, and await the broker's acks for all of the batch;
  3. commit the batch's offsets (the highest of each partition, plus one).
Steps 2-3 of a batch run while the next batch is analysed (step 1), never before the previous
batch's step 3: commits stay in order per partition and the model is not idle while acks come.
A crash before 3 redelivers the batch's chunks to some analyzer of the group, which re-produces the
same records (and rewrites the same thumbnails, keyed by event id): event ids are deterministic
(``schemas.records.event_id_for``) and the aggregator folds chunk results idempotently by chunk
index, so the guarantee is at-least-once delivery with idempotent consumers; consumers of the
events topic de-duplicate by ``event_id``. A crash after 3 loses nothing.

A chunk that cannot be analysed (bad JPEG, unsupported query) still gets a ``failed`` ChunkResult
so its session can finish (the aggregator waits for a result per published chunk). So does a
chunk record that cannot even be decoded (a bad field, bad base64 frames), as long as its raw
JSON still names its session, stream and chunk index and its key is that session
(``chunk_identity``); only a record without a readable session is logged and skipped, since
there is no session to report it to. Every undecodable record also goes to the dead-letter
topic (``DeadLetter``, attempts=1) before its failed result.

Failure rules (settings in ``AnalyzerSettings``):
  * Handled errors (bad frames, unsupported query, non-retryable detector errors): a ``failed``
    ChunkResult at once; deterministic, so retrying would only repeat them.
  * Transient inference errors (``DetectorError.retryable``, onnxruntime runtime failures such as
    a GPU out of memory; the rule is in ``analyzer.detector.TRANSIENT_ORT_ERRORS``): retried with
    exponential backoff (``retry_backoff_s`` doubling up to ``retry_backoff_max_s``), at most
    ``transient_attempts`` analyses; then a ``failed`` ChunkResult naming the error.
  * Unexpected errors (any other exception out of the analysis: a bug, a library failure): the
    chunk is analysed again with backoff, at most ``max_attempts`` times, in place (the partition
    waits, bounded). Then the chunk is a poison record:
      a. a ``DeadLetter`` (the record, the error, its topic/partition/offset) is produced to the
         dead-letter topic and acknowledged;
      b. a ``failed`` ChunkResult for its chunk is produced and acknowledged;
      c. its offset is committed, so the partition moves on.
    A crash between a and b redelivers the chunk: it is retried ``max_attempts`` times again and
    dead-lettered again (a duplicate dead letter with the same source offset). A crash between b
    and c does the same and also repeats the failed result, which the aggregator folds once per
    chunk index. Attempts are counted in this process only: a chunk that kills the process itself
    (a segfault, the OOM killer) is not caught by this rule and comes back after every restart.
  * Broker errors: produces (events, results, dead letters) and commits failing with a
    ``KafkaError`` (timeouts, a leader moving, the broker gone) are retried with the same backoff;
    fetch errors too; polls, commits and client stops are bounded in time (aiokafka would wait for
    a coordinator forever), and an idle analyzer probes the broker for metadata every few seconds,
    so an outage counts even with no chunk in hand. Once errors have lasted
    ``broker_outage_limit_s`` without a success in between, the service stops with
    ``BrokerOutageError`` (exit status 2) for its supervisor to restart it; the chunk in hand is
    then redelivered. Re-producing a chunk's records after a timeout may duplicate them on the
    broker, which the idempotent consumers absorb.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import simplejpeg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, KafkaTimeoutError
from PIL import Image

from analyzer import metrics
from analyzer.classifier import ImageClassifier
from analyzer.detector import Detection, ObjectDetector
from analyzer.errors import BrokerOutageError, DetectorError, QueryError
from analyzer.judge import (
    ClassifierLike,
    FrameInput,
    detector_labels,
    duration_note,
    is_tracked,
    judge_chunk,
    min_duration_s,
    needs_classifier,
    needs_crops,
    needs_pixels,
    reported_targets,
    targets_of,
)
from analyzer.models import MODEL_INPUT_SIZE
from analyzer.scoring import ReportedTarget, ScoringPolicy, score_judged, sightings_of
from analyzer.settings import AnalyzerSettings
from analyzer.thumbnails import ThumbnailWriter
from analyzer.unchanged import expand, reuse_plan
from analyzer.understanding.runtime import shared_interpreter
from livestream.errors import LivestreamError, RecordError
from livestream.kafka.resilience import Backoff, BrokerWatch, probe_metadata, stop_client
from livestream.kafka.serde import decode_value, encode_key, encode_value, key_text
from livestream.metrics import MetricsServer, start_metrics_server
from livestream.stages import StageTimes, observe, stages_from_headers
from schemas.interpretation import Interpretation, Target
from schemas.records import (
    ChunkRecord,
    ChunkResult,
    DeadLetter,
    Event,
    Sighting,
    TrackedTarget,
    chunk_id_for,
)
from schemas.topics import CHUNK_TOPIC_MAX_MESSAGE_BYTES, Topics

log = logging.getLogger("analyzer")

# The largest record this producer sends: a dead letter carries a whole chunk record.
MAX_REQUEST_BYTES = CHUNK_TOPIC_MAX_MESSAGE_BYTES + 64 * 1024
# A dead letter keeps the record's value when its base64 form (4/3 of it) fits in one record
# with room for the rest; a larger value is left out (it stays readable at its source offset
# for the chunk topic's retention) and the dead letter says so.
DEAD_LETTER_MAX_VALUE_BYTES = (MAX_REQUEST_BYTES - 16 * 1024) * 3 // 4
# While idle, the broker is probed this often (at most; a quarter of the outage limit if shorter).
IDLE_PROBE_INTERVAL_S = 10.0
# A poll (asked to return within 0.5 s) or probe that takes longer than this is given up.
POLL_GUARD_S = 2.0
COMMIT_GUARD_S = 10.0
DEFAULT_DECODE_THREADS = 2
# Distinct queries whose interpretation is kept (records without one: schema version < 5).
INTERPRETATION_CACHE_SIZE = 256


class ChunkAnalyzer:
    """Pure-ish core: one ChunkRecord in, one ChunkResult (with events) out. No Kafka.

    Per chunk: the session's interpretation (``chunk.interpretation``; records older than schema
    version 5 have none, so their query is interpreted here, once per distinct query) -> frames
    decoded -> detector (frames unchanged since their chunk's last inferred one reuse its
    detections instead, ``analyzer.unchanged``) -> ``analyzer.judge`` (colours, sizes, counts,
    relations, absence, and the image classifier on the crops and frames that need it, in one
    batch) -> ``analyzer.scoring`` events labelled with the query's phrases. All of it runs in
    the caller's thread: the service's inference executor, never the event loop.

    The classifier is loaded on first use (``load_classifier``) so that sessions without
    classifier targets never pay for it; the interpreter likewise (``interpret``).
    """

    def __init__(
        self,
        detector: ObjectDetector,
        policy: ScoringPolicy,
        analyzer_id: str | None = None,
        *,
        classifier: ClassifierLike | None = None,
        load_classifier: Callable[[], ClassifierLike] | None = None,
        interpret: Callable[[str | None], Interpretation] | None = None,
        decode_threads: int = DEFAULT_DECODE_THREADS,
        unchanged_max_change: float = 0.0,
    ) -> None:
        self._detector = detector
        # Frames unchanged since the chunk's last inferred one reuse its detections
        # (analyzer.unchanged; AnalyzerSettings.unchanged_max_change); 0: every frame is inferred.
        self._unchanged_max_change = unchanged_max_change
        # JPEG decoding releases the GIL (libjpeg): a chunk's frames decode side by side.
        self._decode_pool = ThreadPoolExecutor(max_workers=max(1, decode_threads), thread_name_prefix="jpeg")
        self._policy = policy
        self._analyzer_id = analyzer_id
        self._classifier = classifier
        self._load_classifier = load_classifier or ImageClassifier.load
        self._classifier_lock = threading.Lock()
        # Deterministic per query string, so a small cache spares the embedder on every chunk.
        self._interpret = functools.lru_cache(maxsize=INTERPRETATION_CACHE_SIZE)(
            interpret or _shared_interpret
        )

    def interpretation_of(self, chunk: ChunkRecord) -> Interpretation:
        """The chunk's interpretation: the session's, or its query's for records that lack one."""
        if chunk.interpretation is not None:
            return chunk.interpretation
        return self._interpret(chunk.rapid_review_query)

    def classifier(self) -> ClassifierLike:
        with self._classifier_lock:
            if self._classifier is None:
                self._classifier = self._load_classifier()
            return self._classifier

    def analyze(self, chunk: ChunkRecord) -> ChunkResult:
        """One chunk's result, as ``analyze_many`` gives it (the service's one-at-a-time path)."""
        return self._analyze_chunks([chunk])[0]

    def analyze_many(self, chunks: Sequence[ChunkRecord]) -> list[ChunkResult]:
        """The results of ``chunks``, analysed together (see ``_analyze_chunks``)."""
        return self._analyze_chunks(chunks)

    def _analyze_chunks(self, chunks: Sequence[ChunkRecord]) -> list[ChunkResult]:
        """The results of ``chunks`` (any sessions), their frames detected in one batch.

        Per chunk: interpretation and JPEG decoding (in the decode pool), then one detector call
        for every frame of every chunk (the detector splits it into ``max_batch`` runs), then per
        chunk the judge, scoring and sightings. A chunk's handled failure (a bad JPEG, a refused
        query) is its own ``failed`` result and spares the others. A retryable detector error
        (``DetectorError.retryable``) or any unexpected exception propagates for the whole
        batch: the service then analyses the batch's chunks one at a time under its retry rules,
        so a poison chunk is found and dead-lettered alone.
        """
        started = time.perf_counter()
        prepared: list[_Prepared | ChunkResult] = []
        for chunk in chunks:
            try:
                prepared.append(self._prepare(chunk))
            except (LivestreamError, OSError, ValueError) as exc:
                prepared.append(self._failed(chunk, exc, started))
        ready = [p for p in prepared if isinstance(p, _Prepared)]
        images = [image for p in ready for image, r in zip(p.images, p.reuse, strict=True) if r is None]
        # Each frame asks only for the classes its query's judge reads (analyzer.detector, class heads).
        labels = [p.detector_labels for p in ready for reuse in p.reuse if reuse is None]
        detected = time.perf_counter()
        try:
            detections = self._detector.detect(images, labels=labels) if images else []
        except DetectorError as exc:
            if exc.retryable:
                raise  # the service retries it with backoff (AnalyzerService._analyze)
            # Deterministic for this input: each chunk of the batch reports it.
            return [
                p if isinstance(p, ChunkResult) else self._failed(p.chunk, exc, started) for p in prepared
            ]
        detector_ms = (time.perf_counter() - detected) * 1000
        metrics.FRAMES_INFERRED.inc(len(images))
        metrics.FRAMES_UNCHANGED.inc(sum(len(p.images) for p in ready) - len(images))
        position = 0
        results: list[ChunkResult] = []
        for item in prepared:
            if isinstance(item, ChunkResult):
                results.append(item)
                continue
            count = item.reuse.count(None)
            share = detector_ms * count / len(images) if images else 0.0
            own = expand(item.reuse, detections[position : position + count])
            position += count
            try:
                results.append(self._finish(item, own, share))
            except (LivestreamError, OSError, ValueError) as exc:
                if isinstance(exc, DetectorError) and exc.retryable:
                    raise
                results.append(self._failed(item.chunk, exc, item.started))
        return results

    def _prepare(self, chunk: ChunkRecord) -> _Prepared:
        started = time.perf_counter()
        interpretation = self.interpretation_of(chunk)
        if not interpretation.accepted:
            # The API refuses such queries at start; an older record may still carry one.
            raise QueryError(f"query refused: {'; '.join(interpretation.warnings)}")
        all_targets = targets_of(interpretation)
        reported = [
            ReportedTarget(index, label, _notes(all_targets[index]))
            for index, label in reported_targets(interpretation)
        ]
        tracked = [
            TrackedTarget(label=r.label, min_duration_s=min_duration_s(all_targets[r.index]))
            for r in reported
            if is_tracked(all_targets[r.index])
        ]
        # Crops for the classifier want every pixel; the detector alone is happy with 300x300.
        decode = functools.partial(_decode_jpeg, full_size=needs_crops(interpretation))
        images = list(self._decode_pool.map(decode, [frame.jpeg for frame in chunk.frames]))
        reuse = reuse_plan(images, self._unchanged_max_change)
        return _Prepared(
            chunk, interpretation, detector_labels(interpretation), reported, tracked, images, reuse, started
        )

    def _finish(
        self, item: _Prepared, detections: Sequence[Sequence[Detection]], detector_ms: float
    ) -> ChunkResult:
        finishing = time.perf_counter()
        chunk, interpretation = item.chunk, item.interpretation
        analysis_id = uuid.uuid4().hex
        pixels = needs_pixels(interpretation)
        frames = [
            FrameInput(frame.stream_time, dets, image if pixels else None)
            for frame, dets, image in zip(chunk.frames, detections, item.images, strict=True)
        ]
        classifier = self.classifier() if needs_classifier(interpretation) and frames else None
        thresholds = self._policy.thresholds(open_query=interpretation.open_query, options=chunk.options)
        zones = chunk.options.zones if chunk.options is not None else None
        judged = judge_chunk(interpretation, frames, classifier, thresholds, zones)
        events = score_judged(chunk, judged, item.reported, analysis_id, self._policy)
        own_ms = (time.perf_counter() - finishing) * 1000 + item.prepare_ms
        return self._result(
            chunk,
            analysis_id,
            targets=[r.label for r in item.reported],
            events=events,
            tracked=item.tracked,
            sightings=sightings_of(judged, item.reported),
            # Its own decode, judge and scoring, and its frames' share of the batch's detector call.
            inference_ms=own_ms + detector_ms,
        )

    def _failed(self, chunk: ChunkRecord, exc: Exception, started: float) -> ChunkResult:
        # Logged once here, where the failure becomes a failed ChunkResult.
        log.warning("chunk %s of session %s failed: %s", chunk.chunk_id, chunk.session_id, exc)
        result = self._result(
            chunk, uuid.uuid4().hex, inference_ms=(time.perf_counter() - started) * 1000, error=str(exc)
        )
        return result

    def _result(
        self,
        chunk: ChunkRecord,
        analysis_id: str,
        *,
        inference_ms: float,
        targets: list[str] | None = None,
        events: list[Event] | None = None,
        tracked: list[TrackedTarget] | None = None,
        sightings: list[Sighting] | None = None,
        error: str | None = None,
    ) -> ChunkResult:
        return ChunkResult(
            session_id=chunk.session_id,
            stream_id=chunk.stream_id,
            chunk_id=chunk.chunk_id,
            chunk_index=chunk.chunk_index,
            analysis_id=analysis_id,
            start_time=chunk.start_time,
            end_time=chunk.end_time,
            frame_count=len(chunk.frames),
            status="failed" if error is not None else "ok",
            error=error,
            model=self._detector.model_name,
            analyzer_id=self._analyzer_id,
            targets=targets or [],
            events=events or [],
            frame_times=sorted(frame.stream_time for frame in chunk.frames),
            tracked=tracked or [],
            sightings=sightings or [],
            inference_ms=round(inference_ms, 1),
        )

    def failed_result(self, chunk: ChunkIdentity, error: str) -> ChunkResult:
        """The ``failed`` result of a chunk that could not be decoded or analysed (no events)."""
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

    @classmethod
    def of(cls, chunk: ChunkRecord) -> ChunkIdentity:
        return cls(chunk.session_id, chunk.stream_id, chunk.chunk_index, chunk.start_time, chunk.end_time)


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


def _shown(offsets: dict[TopicPartition, int]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in sorted(offsets.items()))


def _seconds(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


def _shared_interpret(query: str | None) -> Interpretation:
    return shared_interpreter().interpret(query)


def _notes(target: Target) -> tuple[str, ...]:
    """What an event of ``target`` says beyond what was seen: the duration left to the aggregator."""
    note = duration_note(target)
    return (note,) if note is not None else ()


# What libjpeg-turbo decodes to RGB itself; other colour spaces (CMYK, YCCK), and what its header
# reader refuses, go through PIL (which decodes them, or raises for data that is no JPEG).
_TURBO_COLOURSPACES = frozenset({"YCbCr", "Gray", "RGB"})


def _decode_jpeg(data: bytes, *, full_size: bool = False) -> np.ndarray:
    """A chunk frame's JPEG as RGB uint8 (height, width, 3).

    Unless ``full_size``, decoded at the smallest power-of-two DCT scale still at least the
    detector's input size in both dimensions (PIL's ``draft`` rule; up to 8x less work on big
    frames); the detector resizes every frame anyway. Decoded by libjpeg-turbo through
    simplejpeg: the same pixels as PIL (``tests/test_analyzer_jpeg.py``), at 0.48 ms instead of
    1.10 for a 640x360 frame. Undecodable data raises ``ValueError`` or ``OSError``."""
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:  # TurboJPEG reads no CMYK header with odd sampling, nor garbage: PIL's turn
        colourspace = None
    if colourspace not in _TURBO_COLOURSPACES:
        with Image.open(io.BytesIO(data)) as image:
            if not full_size:
                image.draft("RGB", (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE))
            return np.asarray(image.convert("RGB"))
    scale = 1
    if not full_size:
        fits = min(width // MODEL_INPUT_SIZE, height // MODEL_INPUT_SIZE)
        scale = next(s for s in (8, 4, 2, 1) if fits >= s or s == 1)
    # simplejpeg picks the smallest of libjpeg's M/8 scales that keeps the minimum size: asking
    # for exactly the power-of-two size makes it the same scale PIL's draft chooses.
    return simplejpeg.decode_jpeg(
        data, colorspace="RGB", min_height=-(-height // scale), min_width=-(-width // scale)
    )


@dataclass
class _Prepared:
    """A chunk ready for the detector: its interpretation, targets and decoded frames."""

    chunk: ChunkRecord
    interpretation: Interpretation
    detector_labels: frozenset[str]  # the COCO classes its judge reads (analyzer.judge.detector_labels)
    reported: list[ReportedTarget]
    tracked: list[TrackedTarget]
    images: list[np.ndarray]
    reuse: list[int | None]  # per frame: None to infer it, or the frame whose detections it reuses
    started: float  # perf_counter when its preparation began

    def __post_init__(self) -> None:
        self.prepare_ms = (time.perf_counter() - self.started) * 1000


@dataclass(frozen=True)
class Outgoing:
    topic: str
    value: bytes
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


# A chunk's stage stamps (``livestream.stages``) by (session_id, chunk_index), for its result's headers.
BatchStages = dict[tuple[str, int], StageTimes]


class AnalyzerService:
    """Kafka edge around ``ChunkAnalyzer``; see the module docstring for the guarantees."""

    def __init__(
        self, settings: AnalyzerSettings, analyzer: ChunkAnalyzer, thumbnails: ThumbnailWriter | None = None
    ) -> None:
        self._settings = settings
        self._analyzer = analyzer
        self._thumbnails = thumbnails
        self._topics = Topics(prefix=settings.topic_prefix)
        # One inference at a time per process: onnxruntime already uses the cores; scale
        # out with more replicas in the consumer group.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._stopping = asyncio.Event()
        self._backoff = Backoff(settings.retry_backoff_s, settings.retry_backoff_max_s)
        self._broker = BrokerWatch(settings.broker_outage_limit_s, BrokerOutageError)

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
            max_poll_records=settings.batch_max_chunks,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=settings.instance_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=MAX_REQUEST_BYTES,
        )
        # First: a metrics port already taken stops the start-up before anything is consumed.
        server: MetricsServer | None = start_metrics_server(
            "analyzer", settings.metrics_host, settings.metrics_port
        )
        try:
            await producer.start()
            await consumer.start()
            log.info("analyzer consuming %s as group %s", self._topics.chunks, settings.group_id)
            await self._loop(consumer, producer)
        finally:
            # Stopping a client that never started is a no-op; one that half-started still
            # holds connections.
            await stop_client("consumer", consumer.stop(), log)
            await stop_client("producer", producer.stop(), log)
            self._executor.shutdown(wait=False, cancel_futures=True)
            if server is not None:
                await asyncio.to_thread(server.close)

    async def _loop(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        """Poll a batch, analyse it, then publish and commit it while the next batch is analysed.

        Order (per batch): results produced and acknowledged, then the batch's offsets committed
        (``_publish_and_commit``), strictly after the previous batch's; a batch's analysis may
        overlap its predecessor's publishing only, so the model is not idle while acks come.
        """
        probe_every = min(IDLE_PROBE_INTERVAL_S, self._settings.broker_outage_limit_s / 4)
        last_probe = time.monotonic()
        publishing: asyncio.Task[bool] | None = None
        try:
            while not self._stopping.is_set():
                records = await self._poll_batch(consumer)
                if records is None:
                    await self._pause(self._backoff.delay(self._broker.failures))
                    continue
                if not records:
                    if time.monotonic() - last_probe >= probe_every:
                        # An idle consumer sees an outage as empty polls (aiokafka retries
                        # quietly): ask for metadata now and then, so it counts towards the limit.
                        last_probe = time.monotonic()
                        await self._probe(consumer)
                    continue
                polled_at = time.time()
                await self._observe_lag(consumer)
                analysed = await self._analyze_batch(records, producer, polled_at)
                if analysed is None:
                    return  # stopped while retrying: the batch stays uncommitted
                results, stages = analysed
                if publishing is not None and not await publishing:
                    return
                publishing = asyncio.create_task(
                    self._publish_and_commit(records, results, stages, consumer, producer)
                )
        finally:
            if publishing is not None:
                await publishing  # bounded: it returns once stopped (``_pause``)

    async def _poll_batch(self, consumer: AIOKafkaConsumer) -> list[ConsumerRecord] | None:
        """Up to ``batch_max_chunks`` records: what one poll returns, topped up for at most
        ``batch_max_wait_ms`` when it returned fewer. None after a fetch error (retried by the caller)."""
        settings = self._settings
        records: list[ConsumerRecord] = []
        deadline: float | None = None
        while len(records) < settings.batch_max_chunks:
            if deadline is None:
                timeout_ms = 500
            else:
                timeout_ms = int((deadline - time.monotonic()) * 1000)
                if timeout_ms <= 0:
                    break
            try:
                # Bounded: while the group coordinator is unreachable, getmany waits for a
                # rejoin that cannot happen.
                batches = await asyncio.wait_for(
                    consumer.getmany(
                        timeout_ms=timeout_ms, max_records=settings.batch_max_chunks - len(records)
                    ),
                    POLL_GUARD_S,
                )
            except TimeoutError:
                batches = {}
            except KafkaError as exc:
                # aiokafka reconnects by itself; what surfaces here is retried within the limit.
                self._broker.failed(exc, "fetch chunks")
                log.warning("fetching chunks failed (%s: %s), retrying", type(exc).__name__, exc)
                return records or None
            for partition_records in batches.values():
                records.extend(partition_records)
            if not records:
                break  # idle
            if deadline is None:
                deadline = time.monotonic() + settings.batch_max_wait_ms / 1000
        return records

    async def _analyze_batch(
        self, records: list[ConsumerRecord], producer: AIOKafkaProducer, polled_at: float
    ) -> tuple[list[ChunkResult], BatchStages] | None:
        """The results of ``records`` (in their order), thumbnails stored, and the chunks' stage
        stamps up to ``chunk_inferred``; None when stopped.

        Undecodable records are dead-lettered and reported failed on the way (``_handle_undecodable``).
        The decodable chunks are analysed together (``ChunkAnalyzer.analyze_many``); if that
        raises, each is analysed alone under the retry rules of the module docstring.
        """
        chunks: list[tuple[ConsumerRecord, ChunkRecord]] = []
        for record in records:
            try:
                chunks.append(
                    (
                        record,
                        decode_value(ChunkRecord, record.value, topic=record.topic, offset=record.offset),
                    )
                )
            except RecordError as exc:
                if not await self._handle_undecodable(record, exc, producer):
                    return None
        if not chunks:
            return [], {}
        frames = sum(len(chunk.frames) for _, chunk in chunks)
        metrics.BATCH_CHUNKS.observe(len(chunks))
        metrics.BATCH_FRAMES.observe(frames)
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._executor, self._analyzer.analyze_many, [chunk for _, chunk in chunks]
            )
        except Exception as exc:  # the batch's fallback: one chunk at a time, retry rules apply
            log.info("batch of %d chunks failed as a whole (%s), analysing them one by one", len(chunks), exc)
            results = []
            for record, chunk in chunks:
                result = await self._analyze(chunk, record, producer)
                if result is None:
                    return None
                results.append(result)
        if self._thumbnails is not None:
            # Stored before the events that name them are produced (step 1b of the docstring).
            for position, ((_, chunk), result) in enumerate(zip(chunks, results, strict=True)):
                if result.events:
                    results[position] = await loop.run_in_executor(
                        self._executor, self._thumbnails.attach, chunk, result
                    )
        metrics.BATCH_SECONDS.observe(time.perf_counter() - began)
        inferred_at = time.time()
        stages = {
            (chunk.session_id, chunk.chunk_index): observe(
                observe(stages_from_headers(record.headers), "chunk_consumed", polled_at),
                "chunk_inferred",
                inferred_at,
            )
            for record, chunk in chunks
        }
        return results, stages

    async def _observe_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Records left per assigned partition (high watermark minus position), for the lag gauge."""
        for partition in consumer.assignment():
            highwater = consumer.highwater(partition)
            if highwater is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(partition), POLL_GUARD_S)
            except (TimeoutError, KafkaError, IllegalStateError):
                continue  # a partition being revoked or reset: no reading this time
            metrics.CONSUMER_LAG.labels(str(partition.partition)).set(max(0, highwater - position))

    async def _publish_and_commit(
        self,
        records: list[ConsumerRecord],
        results: list[ChunkResult],
        stages: BatchStages,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
    ) -> bool:
        """Steps 2 and 3 for a batch: produce every result (acknowledged), then commit its offsets."""
        if results and not await self._publish(results, producer, stages):
            return False
        now_ms = time.time() * 1000
        for record in records:
            # The chunk record's broker timestamp (its produce time) to the result's acknowledgement.
            metrics.CHUNK_AGE_SECONDS.observe(max(0.0, now_ms - record.timestamp) / 1000)
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            offsets[partition] = max(offsets.get(partition, 0), record.offset + 1)
        return await self._commit(consumer, offsets)

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """Ask the cluster for metadata; a failure (or no answer) counts towards the outage limit."""
        error = await probe_metadata(consumer, POLL_GUARD_S, log)
        if error is None:
            self._broker.succeeded()
        else:
            self._broker.failed(error, "reach the broker")

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
        """Commit ``offsets``, retrying broker errors; False when stopped before they were committed."""
        while True:
            try:
                try:
                    # Bounded: aiokafka's commit waits for a group coordinator indefinitely.
                    await asyncio.wait_for(consumer.commit(offsets), COMMIT_GUARD_S)
                except TimeoutError as exc:
                    raise KafkaTimeoutError(f"no commit answer within {COMMIT_GUARD_S:.0f} s") from exc
            except (CommitFailedError, IllegalStateError) as exc:
                # A partition moved to another replica while these chunks were analysed
                # (scale-out, a slow poll, a broker restart): its new owner redelivers them and
                # re-produces the same records, which consumers de-duplicate.
                log.warning("chunk offsets %s not committed: %s", _shown(offsets), exc)
                return True
            except KafkaError as exc:
                self._broker.failed(exc, "commit offsets")
                log.warning("committing offsets %s failed (%s), retrying", _shown(offsets), exc)
                if not await self._pause(self._backoff.delay(self._broker.failures)):
                    return False
                continue
            self._broker.succeeded()
            return True

    async def _handle_undecodable(
        self, record: ConsumerRecord, exc: RecordError, producer: AIOKafkaProducer
    ) -> bool:
        identity = chunk_identity(record.key, record.value)
        session_id = identity.session_id if identity is not None else None
        letter = self._dead_letter(record, exc, attempts=1, session_id=session_id)
        if not await self._produce([letter], producer):
            return False
        metrics.DEAD_LETTERS.inc()
        if identity is None:
            # No trustworthy session to report to: dead-lettered, logged, skipped.
            log.error("skipping undecodable chunk record (dead-lettered): %s", exc)
            return True
        # Its session waits for a result per chunk: report this one failed so it can finish.
        log.warning(
            "chunk %d of session %s is undecodable, dead-lettered and reported failed: %s",
            identity.chunk_index,
            identity.session_id,
            exc,
        )
        error = f"undecodable chunk record (dead-lettered): {exc}"
        return await self._publish([self._analyzer.failed_result(identity, error)], producer)

    async def _analyze(
        self, chunk: ChunkRecord, record: ConsumerRecord, producer: AIOKafkaProducer
    ) -> ChunkResult | None:
        """The chunk's result under the retry rules of the module docstring; None when stopped.

        Attempts are counted here, for this one record, in this process.
        """
        loop = asyncio.get_running_loop()
        transient = unexpected = 0
        while True:
            try:
                return await loop.run_in_executor(self._executor, self._analyzer.analyze, chunk)
            except Exception as exc:  # the retry rules; anything not transient is unexpected here
                if isinstance(exc, DetectorError) and exc.retryable:
                    transient += 1
                    if transient >= self._settings.transient_attempts:
                        log.warning(
                            "chunk %s of session %s failed after %d attempts: %s",
                            chunk.chunk_id,
                            chunk.session_id,
                            transient,
                            exc,
                        )
                        error = f"{exc} (after {transient} attempts)"
                        return self._analyzer.failed_result(ChunkIdentity.of(chunk), error)
                    delay = self._backoff.delay(transient)
                    log.warning(
                        "chunk %s: transient error, retrying in %.1f s: %s", chunk.chunk_id, delay, exc
                    )
                else:
                    unexpected += 1
                    if unexpected >= self._settings.max_attempts:
                        return await self._give_up(chunk, record, exc, unexpected, producer)
                    delay = self._backoff.delay(unexpected)
                    log.warning(
                        "chunk %s: unexpected %s (attempt %d of %d), retrying in %.1f s: %s",
                        chunk.chunk_id,
                        type(exc).__name__,
                        unexpected,
                        self._settings.max_attempts,
                        delay,
                        exc,
                    )
            if not await self._pause(delay):
                return None

    async def _give_up(
        self,
        chunk: ChunkRecord,
        record: ConsumerRecord,
        exc: Exception,
        attempts: int,
        producer: AIOKafkaProducer,
    ) -> ChunkResult | None:
        """Dead-letter a poison chunk (acknowledged) and return its failed result to publish next."""
        log.error(
            "chunk %s of session %s failed %d times, dead-lettered (%s partition %d offset %d)",
            chunk.chunk_id,
            chunk.session_id,
            attempts,
            record.topic,
            record.partition,
            record.offset,
            exc_info=exc,
        )
        letter = self._dead_letter(record, exc, attempts=attempts, session_id=chunk.session_id)
        if not await self._produce([letter], producer):
            return None
        metrics.DEAD_LETTERS.inc()
        error = f"unexpected error after {attempts} attempts (dead-lettered): {type(exc).__name__}: {exc}"
        return self._analyzer.failed_result(ChunkIdentity.of(chunk), error)

    def _dead_letter(
        self, record: ConsumerRecord, exc: Exception, *, attempts: int, session_id: str | None
    ) -> Outgoing:
        value: bytes | None = record.value
        error = str(exc)
        if value is not None and len(value) > DEAD_LETTER_MAX_VALUE_BYTES:
            error += f" [value of {len(value)} bytes left out; read it at its source offset]"
            value = None
        letter = DeadLetter(
            service="analyzer",
            instance_id=self._settings.instance_id,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            session_id=session_id,
            key=key_text(record.key),
            value=value,
            error_type=type(exc).__name__,
            error=error,
            attempts=attempts,
        )
        # Keyed like the record, so a session's dead letters share its partition.
        return Outgoing(self._topics.dead_letter, encode_value(letter), record.key)

    async def _publish(
        self, results: list[ChunkResult], producer: AIOKafkaProducer, stages: BatchStages | None = None
    ) -> bool:
        """Produce each result's events, then the result itself, for every result; await every ack.

        Each record carries its chunk's stage stamps, ``result_published`` included (stamped here,
        once: a retried produce sends the same stamps)."""
        outgoing: list[Outgoing] = []
        for result in results:
            key = encode_key(result.session_id)
            stamped = observe(
                (stages or {}).get((result.session_id, result.chunk_index), StageTimes()), "result_published"
            )
            headers = (stamped.header(),)
            outgoing += [Outgoing(self._topics.events, encode_value(e), key, headers) for e in result.events]
            outgoing.append(Outgoing(self._topics.chunk_results, encode_value(result), key, headers))
        if not await self._produce(outgoing, producer):
            return False
        for result in results:
            metrics.CHUNKS.labels(result.status).inc()
            metrics.EVENTS.inc(len(result.events))
            log.info(
                "session %s chunk %d: %d frames, %d events, %.0f ms (%s)",
                result.session_id,
                result.chunk_index,
                result.frame_count,
                len(result.events),
                result.inference_ms,
                result.status,
            )
        return True

    async def _produce(self, outgoing: list[Outgoing], producer: AIOKafkaProducer) -> bool:
        """Produce all of ``outgoing`` and wait for every ack, retrying the lot on broker errors.

        A retry re-sends records that may already be on the broker (the error may have hit
        after some acks): duplicates that the idempotent consumers absorb. False when stopped.
        """
        while True:
            try:
                sends = [
                    await producer.send(o.topic, o.value, key=o.key, headers=list(o.headers) or None)
                    for o in outgoing
                ]
                await asyncio.gather(*sends)
            except KafkaError as exc:
                self._broker.failed(exc, "produce results")
                delay = self._backoff.delay(self._broker.failures)
                log.warning("producing failed (%s: %s), retrying in %.1f s", type(exc).__name__, exc, delay)
                if not await self._pause(delay):
                    return False
                continue
            self._broker.succeeded()
            return True

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless asked to stop first; True when the caller should go on."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return True
        return False


__all__ = ["AnalyzerService", "ChunkAnalyzer", "ChunkIdentity", "chunk_identity"]
