"""The aggregator's faust app: commands, lifecycle reports and chunk results -> session records.

One agent consumes the three input topics through one topic object, so the records of one
session (same key, same partition number in every co-partitioned topic) are folded serially.
Each session's bounded ``SessionHeader`` lives in a faust table keyed by session_id whose
changelog has the inputs' partition count; every folded record writes the chunk and event
records the fold made (compacted session-chunks and session-events topics, in the session's
partition) and re-publishes the header on the compacted session-state topic, which is what the
API reads. Delivery is at-least-once (see the agent); shortly after each rebalance the inputs
are re-read from their committed offsets once, to work around a faust recovery race (see
``_reseek_after_rebalances``).

A timer (every ``timer_interval_s``) scans this worker's sessions and produces a
``SessionDeadline`` for those ENDING longer than the ending timeout and a ``PurgeSession`` for
those whose retention ran out; both come back through the commands topic, so every change of a
session is still made by the agent, in order with the session's other records.

Failures (the rules; settings in ``AggregatorSettings``):
  * An input record that cannot be decoded, or whose fold raises an unexpected error (a bug: the
    fold is pure and deterministic, so one attempt is enough), is a poison record: a
    ``DeadLetter`` (the record, the error, its topic/partition/offset) is written with the
    batch's other records and the record is skipped; its offset is acked like any other.
  * Broker errors while writing a batch (a ``KafkaError`` or faust's ``ProducerSendError``:
    timeouts, a leader moving, the broker gone) are retried with exponential backoff
    (``retry_backoff_s`` doubling up to ``retry_backoff_max_s``). Once a write has failed for
    ``broker_outage_limit_s`` the worker crashes on purpose (``app.crash``): it stops and exits
    non-zero for its supervisor; the batch, never acked, is redelivered to the next worker.
  * An idle worker notices an outage through a metadata probe of its own (``probe_the_broker``);
    past the same limit it crashes the same way. Faust's own writes (changelog, the timer's
    commands) are retried by faust and aiokafka, not counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from aggregator.errors import AggregatorError, BrokerOutageError, TopicLayoutError
from aggregator.reducer import FoldResult, InputRecord, fold, record_keys
from aggregator.settings import AggregatorSettings
from aggregator.thumbnails import ThumbnailJanitor
from livestream.errors import KafkaSetupError, RecordError
from livestream.kafka.admin import ensure_topics
from livestream.kafka.resilience import Backoff, BrokerWatch, stop_client
from livestream.kafka.serde import decode_command, decode_value
from livestream.metrics import LATENCY_BUCKETS_S, SIZE_BUCKETS, MetricsServer, start_metrics_server
from livestream.stages import StageTimes, observe, stages_from_headers
from schemas.records import (
    ChunkResult,
    DeadLetter,
    EndSession,
    PurgeSession,
    SessionDeadline,
    SessionHeader,
    SessionLifecycle,
    SessionStatus,
    StartSession,
    chunk_record_key,
    event_record_key,
)
from schemas.topics import DEFAULT_PARTITIONS, Topics, TopicSpec

log = logging.getLogger(__name__)

TABLE_NAME = "sessions"
TOPIC_POLL_INTERVAL_S = 0.25
# After a deliberate crash, how long faust's graceful stop may take before the process exits.
CRASH_EXIT_GRACE_S = 5.0
# The idle broker probe runs this often (at most; a quarter of the outage limit if shorter); each
# of its steps (connect, metadata) that takes longer than PROBE_GUARD_S counts as a failure.
IDLE_PROBE_INTERVAL_S = 10.0
PROBE_GUARD_S = 5.0
CRASH_EXIT_STATUS = 1

# Prometheus metrics of this worker process (served by ``livestream.metrics`` when
# LIVESTREAM_AGGREGATOR_METRICS_PORT is set); no per-session labels.
RECORD_TYPES: dict[type, str] = {
    StartSession: "start_session",
    EndSession: "end_session",
    SessionDeadline: "session_deadline",
    PurgeSession: "purge_session",
    SessionLifecycle: "lifecycle",
    ChunkResult: "chunk_result",
}
RECORDS_FOLDED = Counter(
    "livestream_aggregator_records_folded_total",
    "Input records folded into session headers, by type; poison: undecodable or failing records "
    "(dead-lettered and skipped).",
    ["type"],
)
for _record_type in (*RECORD_TYPES.values(), "poison"):
    RECORDS_FOLDED.labels(_record_type)  # every type is exported from the start, at 0
RECORDS_WRITTEN = Counter(
    "livestream_aggregator_records_written_total",
    "Records produced and acknowledged, by kind: chunk (session-chunks), event (session-events: "
    "each opened/updated/closed version), header (session-state), dead_letter; tombstones included.",
    ["kind"],
)
for _kind in ("chunk", "event", "header", "dead_letter"):
    RECORDS_WRITTEN.labels(_kind)
BATCH_RECORDS = Histogram(
    "livestream_aggregator_batch_records", "Input records per folded batch.", buckets=SIZE_BUCKETS
)
BATCH_SECONDS = Histogram(
    "livestream_aggregator_batch_seconds",
    "Time to fold one batch and write its records, acknowledgements included (broker retries too).",
    buckets=LATENCY_BUCKETS_S,
)
TABLE_SESSIONS = Gauge(
    "livestream_aggregator_sessions",
    "Session headers in this worker's table (its partitions; ended sessions until their purge).",
)


def input_topic_names(topics: Topics) -> list[str]:
    return [topics.session_commands, topics.session_lifecycle, topics.chunk_results]


def decoder_for_topic(topics: Topics) -> dict[str, Callable[..., InputRecord]]:
    """How to decode the value of each input topic (each raises ``RecordError`` on a poison record)."""

    def lifecycle(value: bytes | None, **where: Any) -> SessionLifecycle:
        return decode_value(SessionLifecycle, value, **where)

    def chunk_result(value: bytes | None, **where: Any) -> ChunkResult:
        return decode_value(ChunkResult, value, **where)

    return {
        topics.session_commands: decode_command,
        topics.session_lifecycle: lifecycle,
        topics.chunk_results: chunk_result,
    }


def decode_record(
    decoders: dict[str, Callable[..., InputRecord]],
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
) -> InputRecord:
    """Decode one input record; ``RecordError`` when it is undecodable or keyed by another session."""
    decoder = decoders.get(topic)
    if decoder is None:
        raise RecordError("record from an unexpected topic", topic=topic, partition=partition, offset=offset)
    try:
        record = decoder(value, topic=topic, offset=offset)
    except RecordError as exc:
        raise RecordError(exc.message, topic=topic, partition=partition, offset=offset) from exc
    # The key decides the partition, hence which table partition holds the session: a record
    # keyed otherwise would fold into a state no other record of its session sees.
    if key is None or key != record.session_id.encode():
        raise RecordError(
            "record key is not its session_id",
            topic=topic,
            partition=partition,
            offset=offset,
            session_id=record.session_id,
            key=key,
        )
    return record


def _exit_after_crash() -> None:
    logging.shutdown()
    os._exit(CRASH_EXIT_STATUS)


def _broker_urls(bootstrap_servers: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap_servers.split(",") if server.strip()]


def build_app(
    settings: AggregatorSettings, datadir: Path, thumbnails: ThumbnailJanitor | None = None
) -> faust.App:
    """The faust app with its table and agent; ``settings.partitions`` must match the input topics.

    ``datadir``: faust's data directory. The memory store keeps nothing there, but faust creates
    ``<datadir>/v1/tables`` when the app first starts, relative to the working directory unless
    told otherwise (every worker started from a checkout left one there); ``python -m aggregator``
    passes a temporary directory it removes at exit. ``thumbnails`` deletes the thumbnails of
    detections merged away (None: they are left to the session's purge)."""
    partitions = settings.partitions or DEFAULT_PARTITIONS
    topics = Topics(prefix=settings.topic_prefix, partitions=partitions)
    app = faust.App(
        settings.effective_app_id,
        broker=_broker_urls(settings.kafka_bootstrap_servers),
        store="memory://",
        datadir=datadir,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=settings.web_port is not None,
        web_port=settings.web_port or 6066,
        # Faust's own topics (the table's changelog) are created by faust through the admin API,
        # so they work on brokers with auto.create.topics.enable=false.
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor or 1,
        topic_allow_declare=True,
        # The leader topic only serves @app.timer(on_leader=True), which we do not use: one fewer
        # topic to create at start-up.
        topic_disable_leader=True,
        # A fresh consumer group reads every input from the beginning (records may be produced
        # before the worker first starts).
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_commit_interval=settings.broker_commit_interval_s,
        # Standbys only shorten fail-over between several workers; replaying the changelog of
        # session-sized states is quick, and a single worker would keep a useless copy.
        table_standby_replicas=0,
        # stream_wait_empty stays on (faust's default): shutdown and rebalances let the record in
        # hand finish, which costs little since folding is fast.
    )
    table = app.Table(
        TABLE_NAME,
        default=None,
        partitions=partitions,
        # Keys are the raw session_id bytes and the producer's partitioner places them, exactly as
        # it places the input records keyed by session_id: the changelog partition of a session
        # is its input partition, and the table can be written after a batch, outside the
        # iteration of one event. Values are SessionHeader dicts (json codec).
        key_type=bytes,
        value_type=None,
        use_partitioner=True,
    )
    source = app.topic(*input_topic_names(topics), key_type=bytes, value_type=bytes)
    commands_topic = app.topic(topics.session_commands, key_type=bytes, value_type=bytes)
    header_topic = app.topic(topics.session_state, key_type=bytes, value_type=bytes)
    chunk_topic = app.topic(topics.session_chunks, key_type=bytes, value_type=bytes)
    event_topic = app.topic(topics.session_events, key_type=bytes, value_type=bytes)
    dead_letter_topic = app.topic(topics.dead_letter, key_type=bytes, value_type=bytes)
    output_topics = {
        "chunk": chunk_topic,
        "event": event_topic,
        "dead-letter": dead_letter_topic,
        "header": header_topic,
    }
    decoders = decoder_for_topic(topics)
    policy = settings.fold_policy

    @app.agent(source, name="aggregate-sessions")
    async def aggregate_sessions(stream: faust.StreamT[bytes]) -> None:
        # Batches amortize the one wait for the broker's acknowledgement that each batch needs
        # (see ``write_batch``); ``within`` bounds the delay a record waits for its batch.
        async for events in stream.take_events(settings.batch_max_records, within=settings.batch_within_s):
            started = time.perf_counter()
            await fold_batch(events)
            BATCH_SECONDS.observe(time.perf_counter() - started)
            BATCH_RECORDS.observe(len(events))
            TABLE_SESSIONS.set(len(table))

    async def fold_batch(events: list[faust.EventT]) -> None:
        batch = _Batch()
        for event in events:
            message = event.message
            try:
                record = decode_record(
                    decoders, message.topic, message.partition, message.offset, message.key, event.value
                )
            except RecordError as exc:
                # Logged once here, dead-lettered, then skipped: its offset is acked like any other.
                log.warning("skipping poison record (dead-lettered): %s", exc)
                batch.dead_letter(message, event.value, exc, session_id=None)
                RECORDS_FOLDED.labels("poison").inc()
                continue
            session_id = record.session_id
            try:
                before = batch.header(session_id, table)
            except ValidationError as exc:
                log.error(
                    "%s",
                    AggregatorError(
                        f"stored session header is unreadable, record skipped: {exc.errors()[0]['msg']}",
                        session_id=session_id,
                        topic=message.topic,
                        partition=message.partition,
                        offset=message.offset,
                    ),
                )
                continue
            try:
                folded = fold(before, record, datetime.now(UTC), policy)
            except Exception as exc:  # the poison rule: a fold that raises would raise again
                log.exception(
                    "skipping poison record (dead-lettered): fold failed for session %s (%s partition %d "
                    "offset %d)",
                    session_id,
                    message.topic,
                    message.partition,
                    message.offset,
                )
                batch.dead_letter(message, event.value, exc, session_id=session_id)
                RECORDS_FOLDED.labels("poison").inc()
                continue
            RECORDS_FOLDED.labels(RECORD_TYPES.get(type(record), "other")).inc()
            batch.add(session_id, message.partition, before, folded, stages_from_headers(event.headers))
            if folded.changed and folded.header is not None:
                header = folded.header
                # Status changes at info; every chunk of every session at debug.
                moved = before is None or before.status is not header.status
                log.log(
                    logging.INFO if moved else logging.DEBUG,
                    "session %s: %s, %d/%s chunks, %d events (%s offset %d)",
                    session_id,
                    header.status,
                    header.chunk_count,
                    header.chunks_expected if header.chunks_expected is not None else "?",
                    header.event_count,
                    message.topic,
                    message.offset,
                )
            elif folded.purged:
                log.info("session %s purged (%s)", session_id, getattr(record, "reason", "purge"))
        await write_batch(batch)

    async def write_batch(batch: _Batch) -> None:
        """Write what a batch of folds made, in the order that keeps replays safe.

        Order and crash semantics (at-least-once). A session's records all go to its partition
        (the input record's partition, the same number in every co-partitioned topic).
         1. chunk and event records (and a purged session's tombstones, and the batch's dead
            letters): produced and *acknowledged* before anything else, since a replayed input
            record that the table already folded writes nothing again;
         1b. the thumbnails the folds merged away are handed to ``thumbnails``, which deletes
            them a grace delay later (``aggregator.thumbnails``): only once the records that
            stopped showing them are on the broker. A crash before the deletion leaves orphan
            JPEGs that nothing names, removed by the session's purge; a replay discards them again;
         2. table writes: update the in-memory store and queue changelog records;
         3. headers: each session's latest header (a tombstone once purged) is produced on the
            session-state topic and acknowledged;
         4. offset commit: faust acks the batch's events when this returns and commits acked
            offsets every broker_commit_interval, flushing the producer first, so 2 and 3 are on
            the broker before the offsets are.
        A crash before 2 reaches the broker redelivers the batch: the table is recovered without
        it, the folds run again and step 1 re-produces the same records (same keys and cursors:
        consumers keep the latest). A crash after 2 but before 4 redelivers records the table
        already holds: the folds change nothing and step 3 re-publishes the headers. That is why
        every session a batch touched has its header published, changed or not: a replay can
        never leave the compacted topic behind the table. Broker errors in 1 or 3 are retried
        in place (``send_acked``), so the order holds; the worker crashes only past the limit,
        which is a crash before 4.
        """
        await send_acked(stamp_folded(batch.outputs, time.time()))
        if thumbnails is not None:
            for session_id, event_ids in batch.discarded_thumbnails:
                thumbnails.discard(session_id, event_ids)
        headers: list[_Output] = []
        for session_id, (partition, header, changed) in batch.sessions.items():
            key = session_id.encode()
            if header is None:
                if table.get(key) is not None:
                    del table[key]
                headers.append(_Output("header", key, None, partition))
                continue
            if changed:
                table[key] = header.model_dump(mode="json")
            headers.append(_Output("header", key, header.to_bytes(), partition))
        # Acknowledged too: a header whose delivery failed would otherwise be dropped by the
        # producer while the batch's offsets are committed.
        await send_acked(headers)

    backoff = Backoff(settings.retry_backoff_s, settings.retry_backoff_max_s)

    async def send_acked(outputs: list[_Output]) -> None:
        """Produce ``outputs`` and wait for every acknowledgement, retrying broker errors.

        A retry re-sends the lot, so records acked before the error are written twice: same
        keys and values, which the compacted topics and their readers absorb. Past
        ``broker_outage_limit_s`` of failures the app crashes (see the module docstring).
        """
        watch = BrokerWatch(settings.broker_outage_limit_s, BrokerOutageError)
        while True:
            try:
                futures = [
                    await output_topics[o.kind].send(
                        key=o.key,
                        value=o.value,
                        partition=o.partition,
                        headers=[o.stages.header()] if o.stages else None,
                    )
                    for o in outputs
                ]
                await asyncio.gather(*futures)
                for output in outputs:  # counted once acknowledged (a retried lot: once, on success)
                    RECORDS_WRITTEN.labels(output.kind.replace("-", "_")).inc()
                return
            except (KafkaError, ProducerSendError) as exc:
                try:
                    watch.failed(exc, "write a batch")
                except BrokerOutageError as error:
                    # Logged by faust (app.crash): the worker stops and exits non-zero. Raising
                    # leaves the batch unacked, so its offsets are not committed. Faust's
                    # graceful stop waits for every fetched record to be acked, which this batch
                    # never will be: past a short grace (time to leave the group) the process
                    # exits on its own.
                    await crash_for_supervisor(error)
                    raise
                delay = backoff.delay(watch.failures)
                log.warning(
                    "batch write failed (%s: %s), retry %d in %.1f s",
                    type(exc).__name__,
                    exc,
                    watch.failures,
                    delay,
                )
                await asyncio.sleep(delay)

    async def crash_for_supervisor(error: BrokerOutageError) -> None:
        """Stop the worker (faust logs ``error``) and make sure the process exits non-zero."""
        await app.crash(error)
        asyncio.get_running_loop().call_later(CRASH_EXIT_GRACE_S, _exit_after_crash)

    idle_watch = BrokerWatch(settings.broker_outage_limit_s, BrokerOutageError)

    @app.timer(interval=min(IDLE_PROBE_INTERVAL_S, settings.broker_outage_limit_s / 4))
    async def probe_the_broker() -> None:
        """Ask the cluster for metadata with a short-lived client of our own.

        Faust's clients retry quietly while the broker is away, so a worker with nothing to
        write would never notice an outage: this probe makes the outage limit hold for an idle
        worker too. A new client per probe (every few seconds) keeps no state to repair.
        """
        probe = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, client_id=f"{settings.effective_app_id}-probe"
        )
        try:
            await asyncio.wait_for(probe.start(), PROBE_GUARD_S)
            await asyncio.wait_for(probe.topics(), PROBE_GUARD_S)
        except (KafkaError, TimeoutError) as exc:
            log.warning("broker unreachable (%s: %s)", type(exc).__name__, exc)
            try:
                idle_watch.failed(exc, "reach the broker")
            except BrokerOutageError as error:
                await crash_for_supervisor(error)
        else:
            idle_watch.succeeded()
        finally:
            await stop_client("probe", probe.stop(), log)

    requested: dict[tuple[str, str], float] = {}

    @app.timer(interval=settings.timer_interval_s)
    async def request_deadlines_and_purges() -> None:
        """Ask (through the commands topic) for the deadlines and purges that are due."""
        now = datetime.now(UTC)
        due = sessions_due([(key.decode(), value) for key, value in table.items()], now, settings)
        # One request per session and kind per few intervals: the agent may not have folded
        # the previous one yet.
        horizon = time.monotonic() - 3 * settings.timer_interval_s
        for stale in [k for k, sent in requested.items() if sent < horizon]:
            del requested[stale]
        for command in due:
            marker = (command.session_id, command.kind)
            if marker in requested:
                continue
            requested[marker] = time.monotonic()
            await commands_topic.send(key=command.session_id.encode(), value=command.to_bytes())

    if settings.metrics_port is not None:
        _serve_metrics(app, settings)
    if settings.rebalance_reseek_delay_s > 0:
        _reseek_after_rebalances(app, settings.rebalance_reseek_delay_s)
    return app


def _serve_metrics(app: faust.App, settings: AggregatorSettings) -> None:
    """Serve the worker's metrics while the app runs (started with it, not when it is built, so
    building an app, as the tests do, binds nothing)."""
    running: list[MetricsServer] = []

    @app.task
    async def start_metrics() -> None:
        # A port that cannot be bound crashes the worker with the ConfigurationError's message.
        server = start_metrics_server("aggregator", settings.metrics_host, settings.metrics_port)
        if server is not None:
            running.append(server)

    @app.on_before_shutdown.connect
    async def stop_metrics(sender: faust.App, **kwargs: Any) -> None:
        while running:
            await asyncio.to_thread(running.pop().close)


def stamp_folded(outputs: list[_Output], folded_at: float) -> list[_Output]:
    """``outputs`` with ``state_folded`` stamped on their stages, observed once per input record.

    The records one fold wrote (a session chunk and its event versions) share their input's
    stamps (the same ``StageTimes``), so the histogram counts chunks, not records.
    """
    stamped: dict[int, StageTimes] = {}  # by identity: equal stamps of two inputs count twice
    result: list[_Output] = []
    for output in outputs:
        if output.stages is None:
            result.append(output)
            continue
        key = id(output.stages)
        if key not in stamped:
            stamped[key] = observe(output.stages, "state_folded", folded_at)
        result.append(replace(output, stages=stamped[key]))
    return result


@dataclass(frozen=True)
class _Output:
    kind: str  # "chunk", "event", "dead-letter" or "header"
    key: bytes | None
    value: bytes | None  # None: tombstone
    partition: int
    # The stage stamps of the input record it was folded from (chunk and event records only;
    # none when that record had none): sent as its ``livestream-stages`` header, ``state_folded``
    # stamped when the batch is written.
    stages: StageTimes | None = None


class _Batch:
    """What the folds of one batch made: records to write, and each session's latest header."""

    def __init__(self) -> None:
        self.outputs: list[_Output] = []
        # session_id -> (partition, header after the batch or None once purged, changed in it)
        self.sessions: dict[str, tuple[int, SessionHeader | None, bool]] = {}
        # (session_id, raw event ids) whose thumbnails the folds merged away
        self.discarded_thumbnails: list[tuple[str, tuple[str, ...]]] = []

    def header(self, session_id: str, table: Any) -> SessionHeader | None:
        """The session's header as the batch left it so far, else as the table holds it."""
        if session_id in self.sessions:
            return self.sessions[session_id][1]
        stored = table.get(session_id.encode())
        return None if stored is None else SessionHeader.model_validate(stored)

    def dead_letter(
        self, message: Any, value: bytes | None, exc: Exception, *, session_id: str | None
    ) -> None:
        """Queue the dead letter of a skipped input record (``message`` is faust's Message)."""
        key: bytes | None = message.key
        letter = DeadLetter(
            service="aggregator",
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            session_id=session_id,
            key=None if key is None else key.decode(errors="backslashreplace"),
            value=value,
            error_type=type(exc).__name__,
            error=str(exc),
            attempts=1,
        )
        # Keyed like the record, in its partition: a session's dead letters sit with its records.
        self.outputs.append(_Output("dead-letter", key, letter.to_bytes(), message.partition))

    def add(
        self,
        session_id: str,
        partition: int,
        before: SessionHeader | None,
        folded: FoldResult,
        stages: StageTimes | None = None,
    ) -> None:
        stamped = stages if stages and stages.stamps else None
        if folded.purged and before is not None:
            for kind, key in record_keys(before):
                self.outputs.append(_Output(kind, key.encode(), None, partition))
        self.outputs += [
            _Output(
                "chunk",
                chunk_record_key(c.session_id, c.chunk.chunk_index).encode(),
                c.to_bytes(),
                partition,
                stamped,
            )
            for c in folded.chunks
        ]
        self.outputs += [
            _Output(
                "event", event_record_key(e.session_id, e.number).encode(), e.to_bytes(), partition, stamped
            )
            for e in folded.events
        ]
        if folded.discarded_thumbnails:
            self.discarded_thumbnails.append((session_id, folded.discarded_thumbnails))
        _, _, changed_before = self.sessions.get(session_id, (partition, None, False))
        if folded.header is None and not folded.purged and session_id not in self.sessions:
            return  # nothing known, nothing to write (a deadline of a session purged since)
        self.sessions[session_id] = (partition, folded.header, changed_before or folded.changed)


def sessions_due(
    entries: list[tuple[str, Any]], now: datetime, settings: AggregatorSettings
) -> list[SessionDeadline | PurgeSession]:
    """The deadline and purge commands due for these stored headers (pure; reads raw dicts)."""
    due: list[SessionDeadline | PurgeSession] = []
    for session_id, stored in entries:
        if not isinstance(stored, dict):
            continue
        stream_id = str(stored.get("stream_id", ""))
        status = stored.get("status")
        if status == SessionStatus.ENDING:
            since = _parse_time(stored.get("ending_since"))
            if since is not None and (now - since).total_seconds() >= settings.ending_timeout_s:
                due.append(SessionDeadline(session_id=session_id, stream_id=stream_id, requested_at=now))
            continue
        if status in (SessionStatus.FINISHED, SessionStatus.FAILED):
            since = _parse_time(stored.get("ended_at"))
        elif not stored.get("source_url"):
            since = _parse_time(stored.get("updated_at"))  # a placeholder whose start never came
        else:
            continue
        if since is not None and (now - since).total_seconds() >= settings.retention_s:
            due.append(PurgeSession(session_id=session_id, stream_id=stream_id, requested_at=now))
    return due


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _reseek_after_rebalances(app: faust.App, delay_s: float) -> None:
    """Shortly after each rebalance, seek the inputs back to their committed offsets once.

    Works around a race in faust 0.15's recovery (cf. faust-streaming issue #596): a record
    that arrives while the worker finishes restoring its table can be fetched and then dropped
    before the stream is live. It is never acked, so its offset is not committed, but the
    consumer's position is past it: the record would wait for the next restart, and its
    session would never finish. Re-seeking fetches it again; records already folded since
    the last commit come again too, which the idempotent fold turns into re-publishing the
    same states.
    """

    async def reseek_later() -> None:
        await asyncio.sleep(delay_s)
        if app.rebalancing or app.should_stop:
            return  # another rebalance is under way and will schedule its own re-seek
        await app.consumer.perform_seek()
        log.info("re-seeked input partitions to their committed offsets after rebalance")

    @app.on_rebalance_complete.connect
    async def schedule_reseek(sender: faust.App, **kwargs: Any) -> None:
        app.add_future(reseek_later())


@dataclass(frozen=True)
class TopicLayout:
    partitions: int
    replication_factor: int


def changelog_topic_name(settings: AggregatorSettings) -> str:
    """The table's changelog topic, named as faust names it (``<app id>-<table>-changelog``)."""
    return f"{settings.effective_app_id}-{TABLE_NAME}-changelog"


async def ensure_changelog_topic(settings: AggregatorSettings, layout: TopicLayout) -> None:
    """Create the table's changelog topic (compacted, co-partitioned) before faust starts.

    Faust would create it itself at start-up, but on a fresh cluster its consumer group can then
    be assigned before the new topic is in the clients' metadata: the first table write finds no
    partitions for it (``TypeError`` in aiokafka's partitioner), the agent crashes and restarts
    until the metadata refreshes (``metadata.max.age.ms``, 5 minutes), and no session moves in
    the meantime. Created here, the topic is in the metadata faust's clients fetch first.
    Idempotent: an existing changelog is left as it is.
    """
    spec = TopicSpec(
        changelog_topic_name(settings),
        layout.partitions,
        {"cleanup.policy": "compact"},
        "the aggregator table's changelog (faust): each session's header, by session_id",
    )
    try:
        await ensure_topics(
            settings.kafka_bootstrap_servers,
            [spec],
            replication_factor=layout.replication_factor,
            timeout_s=settings.startup_timeout_s,
        )
    except KafkaSetupError as exc:
        raise TopicLayoutError(f"cannot create the table's changelog topic: {exc}", topic=spec.name) from exc


async def discover_topic_layout(settings: AggregatorSettings) -> TopicLayout:
    """Partitions and replication of the input topics; waits up to ``startup_timeout_s`` for them.

    Raises ``TopicLayoutError`` when they stay missing or differ in partition count (they must
    be co-partitioned with each other and with the table's changelog).
    """
    topics = Topics(prefix=settings.topic_prefix)
    wanted = [
        *input_topic_names(topics),
        topics.session_state,
        topics.session_chunks,
        topics.session_events,
        topics.dead_letter,
    ]
    deadline = time.monotonic() + settings.startup_timeout_s
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        await admin.start()
        while True:
            # List before describing: on clusters that auto-create topics, describing a missing
            # topic would create it with default settings.
            existing = set(await admin.list_topics())
            missing = [name for name in wanted if name not in existing]
            if not missing:
                break
            if time.monotonic() >= deadline:
                raise TopicLayoutError(
                    "input topics do not exist; create them with `python -m livestream.kafka.admin`",
                    topic=",".join(missing),
                    bootstrap=settings.kafka_bootstrap_servers,
                )
            await asyncio.sleep(TOPIC_POLL_INTERVAL_S)
        described = await admin.describe_topics(wanted)
    except KafkaError as exc:
        raise TopicLayoutError(
            f"cannot read topic metadata: {type(exc).__name__}: {exc}",
            bootstrap=settings.kafka_bootstrap_servers,
        ) from exc
    finally:
        await admin.close()
    counts = {topic["topic"]: len(topic["partitions"]) for topic in described}
    if len(set(counts.values())) != 1:
        raise TopicLayoutError(
            "input topics are not co-partitioned (different partition counts)",
            topic=", ".join(f"{name}={n}" for name, n in counts.items()),
        )
    replicas = min(len(p["replicas"]) for topic in described for p in topic["partitions"])
    return TopicLayout(partitions=next(iter(counts.values())), replication_factor=max(1, replicas))
