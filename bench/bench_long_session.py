"""A week-long session, fast-forwarded, through the real aggregator, the real API and a real broker.

Run: ``.venv/bin/python bench/bench_long_session.py [--days 7] [--short-sessions 1000] [--json FILE]``

What it does (all on loopback):

1. starts a ``LocalKafkaBroker`` (or uses ``KAFKA_BOOTSTRAP_SERVERS``), creates the topics under
   a fresh prefix and starts ``python -m aggregator`` as a subprocess;
2. folds the session in this process first, through the pure reducer, timing each fold plus the
   serialization of what it writes (fold time p50/p99 in hour 1 vs the last hour);
3. produces the session's records as fast as the producer goes (StartSession, ACTIVE, one
   ``ChunkResult`` per chunk of ingest's default length (2 s), with a cat visible for 8 s every
   minute, about 10,000 merged events a week, then ENDED) and follows the session-state topic
   until the session is FINISHED: aggregator throughput in chunk results per second in hour 1
   vs the last hour;
4. reads back everything the aggregator wrote (session-state, session-chunks, session-events and
   its table's changelog): bytes written per chunk in hour 1 vs the last hour, the largest record;
5. starts ``python -m api`` on the same topics: time to catch up, resident memory, and the latency
   and size of ``get_session`` for the session (all its ~10,000 events);
6. 1,000 short concurrent sessions (start, ACTIVE, 3 chunk results, ENDED) through the same
   aggregator: time until all are FINISHED;
7. restarts the aggregator (SIGTERM, new process) with those ~1,000 sessions in its table and
   measures the time from spawn until a new session's first header is published.

The run stops everything it started. ``--days`` sets the session length (``--days 1`` for a
quick look); the README's figures are from ``--days 7``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from aggregator.reducer import FoldPolicy, fold
from ingest.settings import IngestSettings
from livestream.kafka.admin import ensure_topics
from livestream.kafka.broker import LocalKafkaBroker, free_port
from livestream.kafka.serde import encode_key, encode_value
from livestream.kafka.testing import TestKafkaSettings
from schemas.records import (
    ChunkResult,
    Event,
    IngestState,
    SessionHeader,
    SessionLifecycle,
    Severity,
    StartSession,
    chunk_id_for,
    describe_event,
    event_id_for,
    format_mmss,
)
from schemas.topics import Topics

REPO_ROOT = Path(__file__).resolve().parents[1]
CHUNK_SECONDS: float = IngestSettings.model_fields["chunk_seconds"].default  # ingest's chunk length
HOUR_CHUNKS = int(3600 / CHUNK_SECONDS)
API_KEY = "bench-key-0123456789abcdef"  # at least the API's minimum key length
T0 = datetime(2026, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- records


def chunk_result(session_id: str, index: int, event_every_s: float) -> ChunkResult:
    """Chunk ``index``; a cat is visible for 8 s from every ``event_every_s`` of stream time."""
    start, end = index * CHUNK_SECONDS, (index + 1) * CHUNK_SECONDS
    events: list[Event] = []
    cat_start = (start // event_every_s) * event_every_s
    if cat_start + 8.0 > start:
        first, last = max(start, cat_start), min(end, cat_start + 8.0)
        events.append(
            Event(
                event_id=event_id_for(session_id, index, "cat", first),
                session_id=session_id,
                stream_id=f"stream-{session_id}",
                type="detection",
                label="cat",
                description=describe_event("cat", first, last, 0.9),
                severity=Severity.HIGH,
                confidence=0.9,
                stream_time=first,
                start_time=first,
                end_time=last,
                capture_time=first,
                captured_at=T0 + timedelta(seconds=first),
                chunk_index=index,
                chunk_relative_time=first - start,
                hls_cumulative_offset=start,
                t_start=format_mmss(first),
                t_end=format_mmss(last),
                created_at=T0 + timedelta(seconds=end),
                analysis_id=f"a{index}",
                chunk_id=chunk_id_for(session_id, index),
                query="detect a cat",
                box=(0.1, 0.1, 0.5, 0.5),
            )
        )
    return ChunkResult(
        session_id=session_id,
        stream_id=f"stream-{session_id}",
        chunk_id=chunk_id_for(session_id, index),
        chunk_index=index,
        analysis_id=f"a{index}",
        start_time=start,
        end_time=end,
        frame_count=8,
        status="ok",
        model="ssd-mobilenet-v2-coco",
        analyzer_id="bench",
        targets=["cat"],
        events=events,
        inference_ms=150.0,
        created_at=T0 + timedelta(seconds=end),
    )


def start_command(session_id: str) -> StartSession:
    return StartSession(
        session_id=session_id,
        stream_id=f"stream-{session_id}",
        name=f"camera {session_id}",
        source_url="http://127.0.0.1:9/live.m3u8",
        rapid_review_query="detect a cat",
        created_by="bench",
    )


def lifecycle(session_id: str, state: IngestState, chunks: int) -> SessionLifecycle:
    return SessionLifecycle(
        session_id=session_id, stream_id=f"stream-{session_id}", state=state, chunks_published=chunks
    )


# --------------------------------------------------------------------------- helpers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def kafka() -> Iterator[str]:
    configured = TestKafkaSettings().kafka_bootstrap_servers
    if configured:
        yield configured
        return
    with LocalKafkaBroker() as broker:
        yield broker.bootstrap_servers


class Service:
    """``python -m <module>`` as a subprocess logging to a file."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.spawned_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


async def read_all(bootstrap: str, topic: str, partition_count: int) -> list[ConsumerRecord]:
    """Every record of ``topic`` up to its current end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(partition_count)]
        consumer.assign(partitions)
        begin = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, begin[tp])
        records: list[ConsumerRecord] = []
        remaining = {tp for tp in partitions if end[tp] > begin[tp]}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=50_000)
            for tp, batch in batches.items():
                records.extend(batch)
                if batch and batch[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


class HeaderFollower:
    """Follows the session-state topic; remembers, per session, when each header arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self.first_seen: dict[str, float] = {}
        self.finished_at: dict[str, float] = {}
        self.progress: list[tuple[float, int]] = []  # (monotonic time, next_chunk_index) of one session
        self.tracked: str | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            self._topic, bootstrap_servers=self._bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    if record.value is None or record.key is None:
                        continue
                    session_id = record.key.decode()
                    self.first_seen.setdefault(session_id, now)
                    if session_id == self.tracked:
                        header = SessionHeader.model_validate_json(record.value)
                        self.progress.append((now, header.next_chunk_index))
                        if header.status.terminal:
                            self.finished_at.setdefault(session_id, now)
                    elif b'"status":"FINISHED"' in record.value or b'"status":"FAILED"' in record.value:
                        self.finished_at.setdefault(session_id, now)

    async def wait(self, condition: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)


def rate_between(progress: list[tuple[float, int]], first_chunk: int, last_chunk: int) -> float:
    """Chunk results folded per second between two watermarks of the tracked session."""
    start = next(t for t, index in progress if index >= first_chunk)
    end = next(t for t, index in progress if index >= last_chunk)
    return (last_chunk - first_chunk) / max(end - start, 1e-9)


# --------------------------------------------------------------------------- phases


@dataclass
class Figures:
    days: float
    chunks: int
    merged_events: int
    fold_ms_p50_hour1: float
    fold_ms_p99_hour1: float
    fold_ms_p50_last_hour: float
    fold_ms_p99_last_hour: float
    produce_s: float
    aggregate_s: float
    results_per_s_overall: float
    results_per_s_hour1: float
    results_per_s_last_hour: float
    bytes_per_chunk_hour1: float
    bytes_per_chunk_last_hour: float
    bytes_ratio_last_vs_first: float
    live_bytes_per_chunk_hour1: float
    live_bytes_per_chunk_last_hour: float
    live_bytes_ratio_last_vs_first: float
    largest_record_bytes: int
    largest_record_topic: str
    header_bytes_final: int
    api_catch_up_s: float
    api_rss_mib: float
    get_session_ms_p50: float
    get_session_ms_max: float
    get_session_bytes: int
    get_session_events: int
    short_sessions: int
    short_sessions_s: float
    short_sessions_per_s: float
    sessions_in_table: int
    recovery_s: float


@dataclass
class InProcessFold:
    times_ms: list[float]  # fold + serialization, per chunk result
    live_bytes: list[int]  # what the aggregator writes for a chunk folded alone (live speed)
    merged_events: int


def fold_in_process(session_id: str, chunks: int, event_every_s: float) -> InProcessFold:
    """Fold the whole session through the pure reducer, timing each fold and sizing its output.

    At live speed every chunk result is a batch of its own, so it writes its chunk and event
    records, the header on session-state and the header again on the table's changelog.
    """
    policy = FoldPolicy()
    header = fold(None, start_command(session_id), T0, policy).header
    times: list[float] = []
    live_bytes: list[int] = []
    key_bytes = len(session_id)
    for index in range(chunks):
        record = chunk_result(session_id, index, event_every_s)
        began = time.perf_counter()
        folded = fold(header, record, T0, policy)
        header = folded.header
        assert header is not None
        written = [header.to_bytes()] + [r.to_bytes() for r in (*folded.chunks, *folded.events)]
        times.append((time.perf_counter() - began) * 1000)
        keys = 2 * key_bytes + sum(len(session_id) + 16 for _ in (*folded.chunks, *folded.events))
        live_bytes.append(2 * len(written[0]) + sum(len(value) for value in written[1:]) + keys)
    assert header is not None
    return InProcessFold(times, live_bytes, header.event_count)


async def produce_session(
    bootstrap: str, topics: Topics, session_id: str, chunks: int, every: float
) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1024 * 1024, compression_type=None
    )
    await producer.start()
    began = time.monotonic()
    try:
        key = encode_key(session_id)
        await producer.send_and_wait(
            topics.session_commands, encode_value(start_command(session_id)), key=key
        )
        active = lifecycle(session_id, IngestState.ACTIVE, 0)
        await producer.send_and_wait(topics.session_lifecycle, encode_value(active), key=key)
        pending = []
        for index in range(chunks):
            value = encode_value(chunk_result(session_id, index, every))
            pending.append(await producer.send(topics.chunk_results, value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        ended = lifecycle(session_id, IngestState.ENDED, chunks)
        await producer.send_and_wait(topics.session_lifecycle, encode_value(ended), key=key)
    finally:
        await producer.stop()
    return time.monotonic() - began


async def produce_short_sessions(bootstrap: str, topics: Topics, session_ids: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20)
    await producer.start()
    try:
        sends = []
        for session_id in session_ids:
            key = encode_key(session_id)
            sends.append(
                await producer.send(topics.session_commands, encode_value(start_command(session_id)), key=key)
            )
            sends.append(
                await producer.send(
                    topics.session_lifecycle,
                    encode_value(lifecycle(session_id, IngestState.ACTIVE, 0)),
                    key=key,
                )
            )
            for index in range(3):
                value = encode_value(chunk_result(session_id, index, 60.0))
                sends.append(await producer.send(topics.chunk_results, value, key=key))
            ended = lifecycle(session_id, IngestState.ENDED, 3)
            sends.append(await producer.send(topics.session_lifecycle, encode_value(ended), key=key))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def bytes_per_chunk(
    written: dict[str, list[ConsumerRecord]], progress_ms: list[tuple[int, int]], first: int, last: int
) -> float:
    """Bytes the aggregator wrote (all its topics) between two watermarks, per chunk."""
    start = next(ts for ts, index in progress_ms if index >= first)
    end = next(ts for ts, index in progress_ms if index >= last)
    total = 0
    for records in written.values():
        for record in records:
            if start < record.timestamp <= end:
                total += len(record.value or b"") + len(record.key or b"")
    return total / (last - first)


async def run(args: argparse.Namespace) -> Figures:
    chunks = int(args.days * 24 * 3600 / CHUNK_SECONDS)
    session_id = f"week-{uuid.uuid4().hex[:8]}"
    print(f"folding {chunks} chunks in process ...", flush=True)
    in_process = fold_in_process(session_id, chunks, args.event_every_s)
    times, merged_events = in_process.times_ms, in_process.merged_events
    hour1, last_hour = times[:HOUR_CHUNKS], times[-HOUR_CHUNKS:]
    live_hour1 = statistics.mean(in_process.live_bytes[:HOUR_CHUNKS])
    live_last = statistics.mean(in_process.live_bytes[-HOUR_CHUNKS:])

    with kafka() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-long-") as workdir:
        topics = Topics(prefix=f"bench{uuid.uuid4().hex[:8]}", partitions=args.partitions)
        await ensure_topics(bootstrap, topics.specs())
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "LIVESTREAM_TOPIC_PREFIX": topics.prefix,
            "LIVESTREAM_AGGREGATOR_LOG_LEVEL": "warning",
            "LIVESTREAM_API_KEYS": API_KEY,
            "LIVESTREAM_API_HOST": "127.0.0.1",
            "LIVESTREAM_API_LOG_LEVEL": "warning",
        }
        logs = Path(workdir)
        # The whole session is produced first, then the aggregator starts on the backlog: hour 1
        # and day 7 are then folded under the same conditions (no producer on the same cores).
        print(f"producing {chunks} chunk results ...", flush=True)
        produce_s = await produce_session(bootstrap, topics, session_id, chunks, args.event_every_s)
        follower = HeaderFollower(bootstrap, topics.session_state)
        follower.tracked = session_id
        await follower.start()
        aggregator = Service("aggregator", env, logs / "aggregator.log")
        api: Service | None = None
        try:
            await follower.wait(lambda: session_id in follower.first_seen, args.timeout, "the aggregator")
            began = follower.first_seen[session_id]
            await follower.wait(lambda: session_id in follower.finished_at, args.timeout, "the long session")
            aggregate_s = follower.finished_at[session_id] - began
            progress = follower.progress
            print(f"aggregated in {aggregate_s:.1f}s; reading what the aggregator wrote ...", flush=True)

            changelog = f"{topics.prefix}-aggregator-sessions-changelog"
            output_topics = [topics.session_state, topics.session_chunks, topics.session_events, changelog]
            written = {topic: await read_all(bootstrap, topic, topics.partitions) for topic in output_topics}
            headers = [
                r for r in written[topics.session_state] if r.key == encode_key(session_id) and r.value
            ]
            progress_ms = [
                (r.timestamp, SessionHeader.model_validate_json(r.value).next_chunk_index) for r in headers
            ]
            largest_topic, largest = max(
                (
                    (topic, max((len(r.value or b"") for r in records), default=0))
                    for topic, records in written.items()
                ),
                key=lambda pair: pair[1],
            )
            first_bytes = bytes_per_chunk(written, progress_ms, 1, HOUR_CHUNKS)
            last_bytes = bytes_per_chunk(written, progress_ms, chunks - HOUR_CHUNKS, chunks)

            print("starting the API ...", flush=True)
            port = free_port()
            api = Service("api", {**env, "LIVESTREAM_API_PORT": str(port)}, logs / "api.log")
            base = f"http://127.0.0.1:{port}"
            catch_up_s = await wait_healthy(base, api, args.timeout)
            url = f"{base}/api/live/live-sessions/stream-{session_id}/{session_id}"
            latencies, size, event_total = [], 0, 0
            async with httpx.AsyncClient(headers={"X-API-Key": API_KEY}, timeout=60) as client:
                for _ in range(args.get_session_calls):
                    t = time.perf_counter()
                    response = await client.get(url)
                    latencies.append((time.perf_counter() - t) * 1000)
                    response.raise_for_status()
                    size = len(response.content)
                    event_total = len(response.json()["events"])
            api_rss = rss_mib(api.process.pid)

            print(f"{args.short_sessions} short sessions ...", flush=True)
            short_ids = [f"short-{n:05d}-{uuid.uuid4().hex[:6]}" for n in range(args.short_sessions)]
            began = time.monotonic()
            await produce_short_sessions(bootstrap, topics, short_ids)
            await follower.wait(
                lambda: all(s in follower.finished_at for s in short_ids), args.timeout, "the short sessions"
            )
            short_s = time.monotonic() - began

            print("restarting the aggregator ...", flush=True)
            aggregator.stop()
            aggregator = Service("aggregator", env, logs / "aggregator-restarted.log")
            probe = f"probe-{uuid.uuid4().hex[:8]}"
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
            await producer.start()
            await producer.send_and_wait(
                topics.session_commands, encode_value(start_command(probe)), key=encode_key(probe)
            )
            await producer.stop()
            await follower.wait(
                lambda: probe in follower.first_seen, args.timeout, "the restarted aggregator"
            )
            recovery_s = follower.first_seen[probe] - aggregator.spawned_at
        finally:
            await follower.stop()
            if api is not None:
                api.stop()
            aggregator.stop()

    final_header = headers[-1].value or b""
    return Figures(
        days=args.days,
        chunks=chunks,
        merged_events=merged_events,
        fold_ms_p50_hour1=round(statistics.median(hour1), 4),
        fold_ms_p99_hour1=round(percentile(hour1, 0.99), 4),
        fold_ms_p50_last_hour=round(statistics.median(last_hour), 4),
        fold_ms_p99_last_hour=round(percentile(last_hour, 0.99), 4),
        produce_s=round(produce_s, 1),
        aggregate_s=round(aggregate_s, 1),
        results_per_s_overall=round(chunks / aggregate_s, 1),
        results_per_s_hour1=round(rate_between(progress, 1, HOUR_CHUNKS), 1),
        results_per_s_last_hour=round(rate_between(progress, chunks - HOUR_CHUNKS, chunks), 1),
        bytes_per_chunk_hour1=round(first_bytes, 1),
        bytes_per_chunk_last_hour=round(last_bytes, 1),
        bytes_ratio_last_vs_first=round(last_bytes / first_bytes, 3),
        live_bytes_per_chunk_hour1=round(live_hour1, 1),
        live_bytes_per_chunk_last_hour=round(live_last, 1),
        live_bytes_ratio_last_vs_first=round(live_last / live_hour1, 3),
        largest_record_bytes=largest,
        largest_record_topic=largest_topic.removeprefix(topics.prefix),
        header_bytes_final=len(final_header),
        api_catch_up_s=round(catch_up_s, 1),
        api_rss_mib=round(api_rss, 1),
        get_session_ms_p50=round(statistics.median(latencies), 1),
        get_session_ms_max=round(max(latencies), 1),
        get_session_bytes=size,
        get_session_events=event_total,
        short_sessions=args.short_sessions,
        short_sessions_s=round(short_s, 1),
        short_sessions_per_s=round(args.short_sessions / short_s, 1),
        sessions_in_table=args.short_sessions + 1,
        recovery_s=round(recovery_s, 1),
    )


async def wait_healthy(base: str, api: Service, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if api.process.poll() is not None:
                raise RuntimeError(f"the API exited; see {api.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{base}/healthz")).status_code == 200:
                    return time.monotonic() - api.spawned_at
            await asyncio.sleep(0.2)
    raise TimeoutError("the API did not catch up in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7.0, help="session length in days of stream time")
    parser.add_argument("--event-every-s", type=float, default=60.0, help="a cat visible 8 s every N s")
    parser.add_argument("--short-sessions", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--get-session-calls", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on each wait")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures = asdict(asyncio.run(run(args)))
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
