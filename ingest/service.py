"""The ingest service: session commands in, one session task per StartSession, records out.

Consumes the session-commands topic in a consumer group (manual commits) and publishes, keyed
by session_id, with one idempotent producer (acks=all) to the session-lifecycle, chunks and
ingest-checkpoints topics. Chunk records are the exception to co-partitioning: by default
(``chunk_partitioning="spread"``) a session's chunks rotate over the chunks topic's partitions
(``chunk_partition``), because the analyzers, which own partitions, analyse each chunk on its
own and would otherwise share the load only as evenly as sessions happen to hash; nothing reads
the chunks topic per session (the aggregator folds chunk *results*, keyed and partitioned by
session, in chunk order within its reorder window).

Sessions survive restarts and failover through their checkpoints (compacted topic, see
``session`` and ``checkpoint``). All topics are co-partitioned and keyed by session_id, so the
instance that owns partition N of the commands topic owns partition N of the checkpoints
topic: on assignment (rebalance listener) it reads those checkpoint partitions to their end
(latest value per session, tombstones delete) and resumes every open session, *before* it
handles the partition's next commands (so an EndSession of a resumed session finds it). On
revocation it suspends the sessions of the revoked partitions (no final report, checkpoint
kept) and waits for them to stop before the partitions move, so two instances never run one
session. A rebalance therefore briefly suspends and resumes sessions (aiokafka's rebalance
protocol revokes every partition). A session whose checkpoint says its runs crashed the ingest
process ``max_crash_resumes`` times is not run again but ends FAILED (quarantine; the count
and its order with the risky work are in ``session``), so one poison source cannot crash-loop
every instance that takes its partition.

Command handling order, and what a crash between the steps does:

1. ``StartSession``: the session's first checkpoint is written (acked), its task created (it
   runs concurrently), then the command's offset is committed. A crash before the commit
   redelivers the command on restart, but the checkpoint made the new owner resume the
   session already, so the replayed start is ignored as a duplicate (no second copy).
   A crash after the commit: the session is resumed from its checkpoint.
2. ``EndSession``: the session is asked to stop, then the offset is committed at once (not
   after the session's final report). A crash in between resumes the session from its
   checkpoint and the EndSession is not redelivered: it runs on until the user ends it again
   (the API answers an EndSession of an ENDING session), the source ends or stalls.
3. ``PurgeSession`` (the aggregator's: a finished session's retention ran out), in this order:
   a. if a task of the session still runs here (it should not: retention starts once a session
      ended), it is suspended (stopped without a final report) and awaited, so it writes
      neither files nor checkpoints afterwards;
   b. a tombstone for its checkpoint is produced and acked (even when there was none: a
      tombstone of an unknown key is harmless, and this makes the purge idempotent);
   c. its recording directory is deleted (and dropped from the storage's running total);
   d. the offset is committed.
   A crash before d redelivers the purge, which repeats b and c harmlessly (an absent
   directory is fine). The tombstone comes before the directory on purpose: a crash after
   deleting the recording but before the tombstone would let the partition's next owner
   resume the purged session from its checkpoint. A directory that cannot be deleted (an
   OSError) is logged as an error and committed past, so one bad directory does not block
   the partition; its files stay counted until removed by hand.
4. ``SessionDeadline`` is the aggregator's timer for itself: ignored (debug log), committed.
5. Poison records: an undecodable command, or one whose handling raised an unexpected error
   ``max_attempts`` times in a row, is written to the dead-letter topic (acked) and committed
   past; a StartSession among them is reported FAILED first, so its session ends instead of
   sitting INITIALIZING (``handle_guarded``).

Broker outages (``livestream.kafka.resilience``): every produce, poll and commit error is retried
with capped exponential backoff while one outage clock runs for the whole process. A session
waits in its produce call meanwhile (its source keeps being followed once the call returns;
segments published late are still in stream order). Past ``broker_outage_limit_s`` with no
success in between, the service stops with ``BrokerOutageError`` (exit status 2): no session
gets a final report, each keeps its checkpoint and resumes when ingest restarts. That exit
counts as a crash of the sessions that were running (see ``max_crash_resumes``), so a session
running through more outages than that limit in a row is quarantined.

Scaling and limits: several ingest instances split the command partitions; a session runs on
the instance that owns its partition. StartSession commands older than
``command_max_age_seconds`` are not started but reported FAILED with the reason, so a new
consumer group (offset reset to earliest) does not restart days-old sessions, and a start that
waited out an ingest outage does not hang INITIALIZING. Resumed sessions are not subject to
that age limit.

Overload: a background task (``_watch_lag``) asks the broker every ``lag_check_interval_s`` for
the analyzer group's committed offsets on the chunk partitions the sessions published to (one
request per process; a failure skips the round and never counts as an outage) and steps every
session's lag policy with them (``ingest.lag``, ``IngestSession.observe_lag``).

Local recordings are bounded (``storage``): per-session size and age caps, and a total size cap
across the storage directory kept as a running count (one scan of the directory at start-up,
before any session resumes).

Clean shutdown (SIGTERM/SIGINT): stop consuming, suspend every session (no final report: each
keeps its checkpoint and resumes when an ingest instance owns its partition again), wait for
them, flush and close the producer, close the consumer (offsets were committed already).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC
from types import TracebackType
from typing import TypeVar

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from aiokafka.partitioner import murmur2
from aiokafka.structs import RecordMetadata
from prometheus_client import Gauge

from ingest.checkpoint import open_checkpoints
from ingest.encode import EncodedChunk
from ingest.errors import BrokerOutageError, IngestError, StorageError
from ingest.fetch import FetchPolicy, HttpFetcher
from ingest.session import ChunkPosition, IngestSession
from ingest.settings import IngestSettings
from ingest.storage import RecordingStorage
from livestream.errors import KafkaSetupError, RecordError
from livestream.kafka.resilience import Backoff, BrokerWatch, probe_metadata, stop_client
from livestream.kafka.serde import decode_command, encode_key, encode_value, key_text
from livestream.metrics import MetricsServer, start_metrics_server
from livestream.stages import StageTimes
from schemas.records import (
    DeadLetter,
    EndSession,
    IngestCheckpoint,
    IngestState,
    PurgeSession,
    SessionDeadline,
    SessionLifecycle,
    StartSession,
    utcnow,
)
from schemas.topics import CHUNK_TOPIC_MAX_MESSAGE_BYTES, Topics

log = logging.getLogger(__name__)

T = TypeVar("T")

# While idle, the broker is probed this often (at most; a quarter of the outage limit if shorter).
IDLE_PROBE_INTERVAL_S = 10.0
# A poll (asked to return within 0.5 s) or probe that takes longer than this is given up.
POLL_GUARD_S = 2.0
CHECKPOINT_READ_IDLE_POLLS = 20  # empty 0.5 s polls before a checkpoint read settles for less

# The session-level metrics are in ``ingest.session``; this one is the service's.
ACTIVE_SESSIONS = Gauge(
    "livestream_ingest_active_sessions", "Sessions running in this ingest process (started or resumed)."
)
MAX_SESSION_LAG = Gauge(
    "livestream_ingest_max_session_lag_seconds",
    "Largest lag among this process's sessions at the last measurement: stream time between a "
    "source's live edge and what the analyzers took over (ingest.lag); 0 without sessions.",
)


def chunk_partition(key: bytes, chunk_index: int, partitions: int) -> int:
    """The partition of a session's chunk under ``chunk_partitioning="spread"``.

    Kafka's default partition for the session key (murmur2, as every producer of our keyed
    topics computes it) rotated by the chunk index: chunk 0 goes where the key would, and any
    ``partitions`` consecutive chunks of a session cover every partition once, so the analyzer
    replicas, each owning some partitions, share even a single busy session evenly.
    """
    return ((murmur2(key) & 0x7FFFFFFF) + chunk_index) % partitions


class KafkaRecordPublisher:
    """Produces records keyed by session_id and waits for the broker's acknowledgement.

    Retriable broker errors (and timeouts) are retried with ``backoff`` for as long as ``watch``
    allows; past the outage limit ``BrokerOutageError`` stops the service (see ``IngestService``).
    A retry after a timed-out send may write a record twice: chunk records are de-duplicated
    downstream by ``chunk_id``, lifecycle reports and checkpoints are idempotent (same state,
    compacted key), so a duplicate changes nothing.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topics: Topics,
        watch: BrokerWatch,
        backoff: Backoff,
    ) -> None:
        self.producer = producer
        self.topics = topics
        self.watch = watch
        self.backoff = backoff
        # Set at start under chunk_partitioning="spread": chunk records are spread over this many
        # partitions (``chunk_partition``); None: each goes to its session key's partition.
        self.chunk_partitions: int | None = None

    async def publish_chunk(self, chunk: EncodedChunk, stages: StageTimes) -> ChunkPosition:
        record = chunk.record
        key = encode_key(record.session_id)
        metadata = await self._send_raw(
            self.topics.chunks,
            key,
            chunk.value,  # serialized once, by the encoding worker thread
            "publish a chunk",
            headers=[stages.header()],
            partition=None
            if self.chunk_partitions is None
            else chunk_partition(key, record.chunk_index, self.chunk_partitions),
        )
        return metadata.partition, metadata.offset

    async def publish_lifecycle(self, record: SessionLifecycle) -> None:
        await self._send(
            self.topics.session_lifecycle, record.session_id, encode_value(record), "report a session's state"
        )

    async def save_checkpoint(self, checkpoint: IngestCheckpoint) -> None:
        await self._send(
            self.topics.ingest_checkpoints,
            checkpoint.session_id,
            encode_value(checkpoint),
            "save a checkpoint",
        )

    async def delete_checkpoint(self, session_id: str) -> None:
        await self._send(self.topics.ingest_checkpoints, session_id, None, "delete a checkpoint")

    async def publish_dead_letter(self, letter: DeadLetter, key: bytes | None) -> None:
        await self._send_raw(self.topics.dead_letter, key, encode_value(letter), "write a dead letter")

    async def _send(self, topic: str, session_id: str, value: bytes | None, doing: str) -> RecordMetadata:
        return await self._send_raw(topic, encode_key(session_id), value, doing)

    async def _send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        doing: str,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> RecordMetadata:
        while True:
            self.watch.check()  # once the service gave up on the broker, nothing waits again
            try:
                metadata = await self.producer.send_and_wait(
                    topic, key=key, value=value, headers=headers, partition=partition
                )
            except KafkaError as exc:
                if not (exc.retriable or isinstance(exc, KafkaTimeoutError)):
                    raise  # e.g. a record too large: retrying cannot help
                self.watch.failed(exc, doing)
                delay = self.backoff.delay(self.watch.failures)
                log.warning(
                    "could not %s (%s: %s), retrying in %.1f s", doing, type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay)
            else:
                self.watch.succeeded()
                return metadata


class _CommandPartitionsListener(ConsumerRebalanceListener):
    def __init__(self, service: IngestService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.service.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.service.on_partitions_assigned(assigned)


async def read_open_checkpoints(
    reader: AIOKafkaConsumer, topic: str, partitions: list[int]
) -> list[tuple[int, IngestCheckpoint]]:
    """(partition, checkpoint) of the open sessions of these partitions of the checkpoints topic,
    each partition read from its start to the end it had when the read began (``reader`` is a
    started group-less consumer; its assignment is replaced)."""
    tps = [TopicPartition(topic, number) for number in partitions]
    reader.assign(tps)
    await reader.seek_to_beginning(*tps)
    end_offsets = await reader.end_offsets(tps)
    records: dict[int, list[tuple[bytes | None, bytes | None]]] = {number: [] for number in partitions}
    remaining = {tp for tp in tps if end_offsets[tp] > 0}
    idle_polls = 0
    while remaining:
        batches = await reader.getmany(*remaining, timeout_ms=500)
        for tp, messages in batches.items():
            records[tp.partition] += [(m.key, m.value) for m in messages if m.offset < end_offsets[tp]]
        remaining = {tp for tp in remaining if await reader.position(tp) < end_offsets[tp]}
        idle_polls = 0 if batches else idle_polls + 1
        if remaining and idle_polls >= CHECKPOINT_READ_IDLE_POLLS:
            # Nothing more arrives below the end offset (e.g. compacted away): what was read is all.
            log.warning("checkpoint partitions %s: stopped short of their end offsets", sorted(remaining))
            break
    reader.assign([])
    return [
        (number, checkpoint)
        for number, partition_records in records.items()
        for checkpoint in open_checkpoints(partition_records).values()
    ]


async def committed_offsets(
    admin: AIOKafkaAdminClient, group_id: str, topic: str, partitions: set[int]
) -> dict[int, int]:
    """The committed offsets of consumer group ``group_id`` on these partitions of ``topic``
    (-1 where it has none: a group that never committed, or does not exist yet)."""
    answer = await admin.list_consumer_group_offsets(
        group_id, partitions=[TopicPartition(topic, number) for number in sorted(partitions)]
    )
    return {tp.partition: meta.offset for tp, meta in answer.items() if tp.topic == topic}


class IngestService:
    """Use as ``async with IngestService(settings) as service: await service.run(stop_event)``."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.topics = Topics(prefix=settings.topic_prefix)
        self.storage = RecordingStorage.of(settings)  # mirrored to the S3 blob store when configured
        self.sessions: dict[str, IngestSession] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._partition_of: dict[str, int] = {}  # session_id -> its partition number
        # Cleared while a rebalance is under way: commands wait until resumes are done.
        self._assignment_ready = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._checkpoint_reader: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._publisher: KafkaRecordPublisher | None = None
        self._fetcher: HttpFetcher | None = None
        # Two outage clocks, either of which stops the service: one for the sessions' produce
        # calls, one for the command consumer (polls, commits, idle probes). Separate, because a
        # metadata answer says nothing about whether records can be written.
        self.producing = BrokerWatch(settings.broker_outage_limit_s, BrokerOutageError)
        self.consuming = BrokerWatch(settings.broker_outage_limit_s, BrokerOutageError)
        self._backoff = Backoff(settings.retry_backoff_s, settings.retry_backoff_max_s)
        # Set when the broker watch trips in a session task: ``run`` stops and raises it.
        self._gave_up = asyncio.Event()
        self._metrics: MetricsServer | None = None
        self._lag_watch: asyncio.Task[None] | None = None

    async def __aenter__(self) -> IngestService:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        settings = self.settings
        # First: a metrics port already taken stops the start-up before any session is resumed.
        self._metrics = start_metrics_server("ingest", settings.metrics_host, settings.metrics_port)
        # The policy (egress, size caps, deadlines) of every fetch; each session gets a pool of its
        # own from it (``for_session``), so one slow source cannot starve the others.
        self._fetcher = HttpFetcher(FetchPolicy.of(settings))
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"{settings.group_id}-producer",
            acks="all",
            enable_idempotence=True,
            # Chunk records stay under CHUNK_RECORD_BUDGET_BYTES; the topic accepts up to this.
            max_request_size=CHUNK_TOPIC_MAX_MESSAGE_BYTES,
            compression_type=None,  # JPEG payloads do not compress
            linger_ms=0,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=settings.group_id,
            client_id=f"{settings.group_id}-commands",
            enable_auto_commit=False,
            auto_offset_reset=settings.command_offset_reset,
        )
        # Group-less: reads assigned checkpoint partitions from the beginning on each assignment.
        self._checkpoint_reader = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            client_id=f"{settings.group_id}-checkpoints",
            enable_auto_commit=False,
        )
        self._publisher = KafkaRecordPublisher(self._producer, self.topics, self.producing, self._backoff)
        # Before the first assignment resumes sessions: their stores join the counted total.
        await asyncio.to_thread(self.storage.scan)
        try:
            await self._producer.start()
            if settings.chunk_partitioning == "spread":
                # Read once: a topic given more partitions later is spread over them after a restart.
                partitions = await self._producer.partitions_for(self.topics.chunks)
                if not partitions:
                    raise KafkaSetupError(f"topic {self.topics.chunks} has no partitions (does it exist?)")
                self._publisher.chunk_partitions = len(partitions)
            await self._checkpoint_reader.start()
            await self._consumer.start()
            self._consumer.subscribe(
                [self.topics.session_commands], listener=_CommandPartitionsListener(self)
            )
        except BaseException:
            # A failed start still owns open connections (and aiokafka warns at exit).
            await stop_client("command consumer", self._consumer.stop(), log)
            await stop_client("checkpoint reader", self._checkpoint_reader.stop(), log)
            await stop_client("producer", self._producer.stop(), log)
            raise
        self._lag_watch = asyncio.create_task(self._watch_lag(), name="ingest-lag-watch")
        log.info(
            "ingest consuming %s as group %s on %s",
            self.topics.session_commands,
            settings.group_id,
            settings.kafka_bootstrap_servers,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Handle commands until ``stop`` is set; raise ``BrokerOutageError`` past the outage limit.

        Broker errors of the command consumer (a poll or a commit) count towards the same outage
        limit as the sessions' produce errors and are retried with backoff. An idle consumer sees
        an outage only as empty polls (aiokafka reconnects quietly), so while there are none it
        asks for metadata every ``IDLE_PROBE_INTERVAL_S``: an idle ingest stops past the limit
        too, and its supervisor shows the outage.
        """
        consumer = self._require(self._consumer)
        probe_every = min(IDLE_PROBE_INTERVAL_S, self.settings.broker_outage_limit_s / 4)
        last_probe = time.monotonic()
        while not stop.is_set() and not self._gave_up.is_set():
            try:
                batches = await asyncio.wait_for(
                    consumer.getmany(timeout_ms=500, max_records=100), POLL_GUARD_S
                )
            except TimeoutError:
                batches = {}  # the group coordinator is away: the probe below tells
            except KafkaError as exc:
                self.consuming.failed(exc, "fetch session commands")
                await self._retry_pause(exc, "fetching session commands")
                continue
            if not batches and time.monotonic() - last_probe >= probe_every:
                last_probe = time.monotonic()
                await self._probe(consumer)
            if batches:
                # Commands fetched while a new assignment's sessions are being resumed wait for it.
                await self._assignment_ready.wait()
            for partition, messages in batches.items():
                if partition not in consumer.assignment():
                    continue  # revoked meanwhile: its new owner handles these (not committed here)
                for message in messages:
                    await self.handle_guarded(message)
                    if self._gave_up.is_set():
                        break  # the broker is gone: this command is redelivered after the restart
                    # Commit after the command took effect (session task started / stop asked);
                    # a crash before this line redelivers the command (see the module docstring).
                    await self._commit(consumer, partition, message.offset + 1)
        self.producing.check()
        self.consuming.check()

    async def _commit(self, consumer: AIOKafkaConsumer, partition: TopicPartition, offset: int) -> None:
        position = {TopicPartition(partition.topic, partition.partition): offset}
        while True:
            try:
                await consumer.commit(position)
            except CommitFailedError as exc:  # partition moved away: its new owner redelivers
                log.warning("command offset %d not committed: %s", offset - 1, exc)
                return
            except KafkaError as exc:
                self.consuming.failed(exc, "commit a command offset")
                await self._retry_pause(exc, "committing a command offset")
            else:
                self.consuming.succeeded()
                return

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """Ask the cluster for metadata; a failure (or no answer) counts towards the outage limit."""
        error = await probe_metadata(consumer, POLL_GUARD_S, log)
        if error is None:
            self.consuming.succeeded()
            return
        try:
            self.consuming.failed(error, "reach the broker")
        except BrokerOutageError:
            self._gave_up.set()

    async def _retry_pause(self, exc: KafkaError, doing: str) -> None:
        delay = self._backoff.delay(self.consuming.failures)
        log.warning("%s failed (%s: %s), retrying in %.1f s", doing, type(exc).__name__, exc, delay)
        await asyncio.sleep(delay)

    async def handle_guarded(self, message: ConsumerRecord) -> None:
        """``handle``, with a command that keeps failing unexpectedly set aside (a poison record).

        An error that is not the broker's is retried ``max_attempts`` times in this process
        (backoff in between); then the command is written to the dead-letter topic (acked), a
        StartSession is reported FAILED with the reason (so its session does not sit
        INITIALIZING), and the caller commits past it. A crash before the commit redelivers the
        command, which may be dead-lettered twice; its partition never blocks.
        """
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                await self.handle(message)
                return
            except BrokerOutageError:
                self._gave_up.set()
                return
            except Exception as exc:  # a bug, or a command nobody foresaw
                log.exception(
                    "command at %s[%d]@%d failed (attempt %d of %d)",
                    message.topic,
                    message.partition,
                    message.offset,
                    attempt,
                    self.settings.max_attempts,
                )
                if attempt < self.settings.max_attempts:
                    await asyncio.sleep(self._backoff.delay(attempt))
                    continue
                try:
                    await self._dead_letter(message, exc, attempts=attempt)
                except BrokerOutageError:
                    self._gave_up.set()

    async def _dead_letter(self, message: ConsumerRecord, exc: Exception, *, attempts: int) -> None:
        publisher = self._require(self._publisher)
        command = None
        with contextlib.suppress(RecordError):
            command = decode_command(message.value, topic=message.topic, offset=message.offset)
        session_id = getattr(command, "session_id", None)
        letter = DeadLetter(
            service="ingest",
            instance_id=self.settings.group_id,
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            session_id=session_id,
            key=key_text(message.key),
            value=message.value,
            error_type=type(exc).__name__,
            error=str(exc),
            attempts=attempts,
        )
        await publisher.publish_dead_letter(letter, message.key)
        if isinstance(command, StartSession) and command.session_id not in self._tasks:
            await publisher.publish_lifecycle(
                SessionLifecycle(
                    session_id=command.session_id,
                    stream_id=command.stream_id,
                    state=IngestState.FAILED,
                    reason=(
                        f"ingest could not start the session ({type(exc).__name__}); "
                        "see the dead-letter topic"
                    ),
                )
            )
        log.error(
            "command at %s[%d]@%d dead-lettered after %d attempts (session %s)",
            message.topic,
            message.partition,
            message.offset,
            attempts,
            session_id,
        )

    async def handle(self, message: ConsumerRecord) -> None:
        try:
            command = decode_command(message.value, topic=message.topic, offset=message.offset)
        except RecordError as exc:
            log.error("skipping undecodable command: %s", exc)
            await self._dead_letter(message, exc, attempts=1)
            return
        if isinstance(command, StartSession):
            if command.session_id in self._tasks:
                log.info("session %s is already running; duplicate StartSession ignored", command.session_id)
                return
            too_late = self.start_too_late(command)
            if too_late is None:
                # The first checkpoint precedes the offset commit: from here on a crash resumes it.
                await self._require(self._publisher).save_checkpoint(
                    IngestCheckpoint(
                        session_id=command.session_id, stream_id=command.stream_id, command=command
                    )
                )
                self.start_session(command, partition=message.partition)
            else:
                # Never drop a start silently: the session would sit INITIALIZING forever.
                # For a session that already ended (a replay) the aggregator ignores this,
                # since a terminal status never changes.
                log.warning("not starting session %s: %s", command.session_id, too_late)
                report = SessionLifecycle(
                    session_id=command.session_id,
                    stream_id=command.stream_id,
                    state=IngestState.FAILED,
                    reason=too_late,
                )
                await self._require(self._publisher).publish_lifecycle(report)
        elif isinstance(command, EndSession):
            self.end_session(command)
        elif isinstance(command, PurgeSession):
            await self.purge_session(command)
        elif isinstance(command, SessionDeadline):
            log.debug("session %s: deadline command (the aggregator's own); ignored", command.session_id)

    def start_too_late(self, command: StartSession) -> str | None:
        """Why ``command`` is too old to start (a stale replay, or ingest was down), else None."""
        requested_at = command.requested_at
        if requested_at.tzinfo is None:
            requested_at = requested_at.replace(tzinfo=UTC)
        age = (utcnow() - requested_at).total_seconds()
        limit = self.settings.command_max_age_seconds
        if age <= limit:
            return None
        return (
            f"ingest received the start request {age:.0f} s after it was made (limit {limit:g} s, "
            "LIVESTREAM_INGEST_COMMAND_MAX_AGE_SECONDS); start the session again"
        )

    def start_session(
        self, command: StartSession, *, partition: int, resume_from: IngestCheckpoint | None = None
    ) -> IngestSession | None:
        session_id = command.session_id
        if session_id in self._tasks:
            log.info("session %s is already running; duplicate StartSession ignored", session_id)
            return None
        publisher = self._require(self._publisher)
        session = IngestSession(
            command,
            self.settings,
            self._require(self._fetcher).for_session(),
            publisher,
            checkpoints=publisher,
            resume_from=resume_from,
            storage=self.storage,
        )
        self.sessions[session_id] = session
        self._partition_of[session_id] = partition
        self._tasks[session_id] = asyncio.create_task(self._run_session(session), name=f"ingest-{session_id}")
        ACTIVE_SESSIONS.set(len(self._tasks))
        log.info(
            "session %s %s on %s", session_id, "resumed" if resume_from else "started", command.source_url
        )
        return session

    # ------------------------------------------------------------------ rebalance

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Suspend the sessions of revoked command partitions; return once they have stopped."""
        self._assignment_ready.clear()
        numbers = {tp.partition for tp in revoked if tp.topic == self.topics.session_commands}
        leaving = [sid for sid, partition in self._partition_of.items() if partition in numbers]
        if leaving:
            log.info("partitions %s revoked: suspending %d session(s)", sorted(numbers), len(leaving))
            await self._suspend(leaving)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Resume the open sessions of the assigned partitions (before their next commands)."""
        try:
            numbers = sorted(tp.partition for tp in assigned if tp.topic == self.topics.session_commands)
            if numbers:
                for partition, checkpoint in await self.read_checkpoints(numbers):
                    self.start_session(checkpoint.command, partition=partition, resume_from=checkpoint)
        except Exception:
            # aiokafka would only log it; say which sessions are at stake.
            log.exception("could not resume the sessions of partitions %s", sorted(assigned))
            raise
        finally:
            self._assignment_ready.set()

    async def read_checkpoints(self, partitions: list[int]) -> list[tuple[int, IngestCheckpoint]]:
        return await read_open_checkpoints(
            self._require(self._checkpoint_reader), self.topics.ingest_checkpoints, partitions
        )

    def end_session(self, command: EndSession) -> None:
        session = self.sessions.get(command.session_id)
        if session is None:
            log.info("EndSession %s: no such running session here; ignored", command.session_id)
            return
        session.request_stop("user")

    async def purge_session(self, command: PurgeSession) -> None:
        """Remove everything ingest keeps of the session (order: see the module docstring)."""
        session_id = command.session_id
        if session_id in self._tasks:
            log.warning(
                "session %s is purged (%s) while still running here: stopping it", session_id, command.reason
            )
            await self._suspend([session_id])
        await self._require(self._publisher).delete_checkpoint(session_id)
        try:
            removed = await asyncio.to_thread(self.storage.purge, session_id)
        except StorageError as exc:
            log.error(
                "session %s: purge (%s) could not delete its recording: %s", session_id, command.reason, exc
            )
            return
        log.info(
            "session %s purged (%s): checkpoint tombstoned, %s",
            session_id,
            command.reason,
            "recording deleted" if removed else "no recording here",
        )

    async def _run_session(self, session: IngestSession) -> None:
        try:
            await session.run()  # ends FAILED by itself on any error of its own work
        except asyncio.CancelledError:
            raise
        except BrokerOutageError:
            # No final report (the broker is gone): the checkpoint resumes it after the restart.
            self._gave_up.set()
        except Exception as exc:  # its final report failed (Kafka): still try to leave one
            log.exception("session %s crashed", session.session_id)
            if session.final_report is None:
                with contextlib.suppress(Exception):
                    await session.fail(f"ingest error: {type(exc).__name__}: {exc}")
        finally:
            self.sessions.pop(session.session_id, None)
            self._tasks.pop(session.session_id, None)
            self._partition_of.pop(session.session_id, None)
            ACTIVE_SESSIONS.set(len(self._tasks))
            await session.fetcher.aclose()  # the session's own connection pool

    # ------------------------------------------------------------------ lag

    async def _watch_lag(self) -> None:
        """Every ``lag_check_interval_s``: the analyzer group's committed offsets on the chunk
        partitions this process's sessions published to (one request), then each session's lag
        and policy step (``IngestSession.observe_lag``) and the process's largest lag.

        Auxiliary: a failing request (the broker away, the group coordinator moving) skips the
        round, so the policies keep their state; it never counts towards the outage limit (the
        sessions' own produce calls do). The admin client is (re)connected on demand.
        """
        settings = self.settings
        interval = settings.lag_check_interval_s
        loop = asyncio.get_running_loop()
        admin: AIOKafkaAdminClient | None = None
        failing = False
        try:
            while True:
                await asyncio.sleep(interval)
                sessions = list(self.sessions.values())
                partitions: set[int] = set().union(*(session.chunk_lag.partitions for session in sessions))
                committed: dict[int, int] = {}
                if partitions:
                    try:
                        if admin is None:
                            admin = AIOKafkaAdminClient(
                                bootstrap_servers=settings.kafka_bootstrap_servers,
                                client_id=f"{settings.group_id}-lag",
                                request_timeout_ms=int(max(1.0, interval) * 1000),
                            )
                            await asyncio.wait_for(admin.start(), POLL_GUARD_S + interval)
                        committed = await asyncio.wait_for(
                            committed_offsets(
                                admin, settings.analyzer_group_id, self.topics.chunks, partitions
                            ),
                            POLL_GUARD_S + interval,
                        )
                    except (KafkaError, OSError, TimeoutError) as exc:
                        if not failing:
                            log.warning(
                                "could not read the analyzers' committed offsets (%s: %s); lags not "
                                "measured until it works again",
                                type(exc).__name__,
                                exc,
                            )
                        failing = True
                        if admin is not None:
                            await stop_client("lag admin client", admin.close(), log)
                            admin = None
                        continue
                    if failing:
                        log.info("reading the analyzers' committed offsets works again")
                    failing = False
                now = loop.time()
                lags = [0.0]
                for session in sessions:
                    try:
                        lags.append(session.observe_lag(committed, now))
                    except Exception:  # a bug: its session keeps running, without the policy's help
                        log.exception("session %s: could not measure its lag", session.session_id)
                MAX_SESSION_LAG.set(max(lags))
        finally:
            if admin is not None:
                await stop_client("lag admin client", admin.close(), log)

    async def wait_idle(self) -> None:
        """Wait until every running session has finished (tests, draining)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _suspend(self, session_ids: list[str]) -> None:
        """Stop these sessions without a final report (their checkpoints stay) and wait for them;
        past ``shutdown_timeout_seconds`` they are cancelled (a crash, as far as they know)."""
        tasks = []
        for session_id in session_ids:
            session = self.sessions.get(session_id)
            if session is not None:
                session.request_stop("suspend")
            if session_id in self._tasks:
                tasks.append(self._tasks[session_id])
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def stop(self) -> None:
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            await asyncio.gather(self._lag_watch, return_exceptions=True)
            self._lag_watch = None
        await self._suspend(list(self._tasks))
        # Each client is closed on its own, bounded (stop_client): after a broker restart or
        # outage one of them may fail to close, which must not keep the others open.
        if self._consumer is not None:
            # Leaving the group revokes nothing more: every session is suspended already.
            await stop_client("command consumer", self._consumer.stop(), log)
            self._consumer = None
        if self._checkpoint_reader is not None:
            await stop_client("checkpoint reader", self._checkpoint_reader.stop(), log)
            self._checkpoint_reader = None
        if self._producer is not None:
            await stop_client("producer", self._producer.stop(), log)  # stop() flushes first
            self._producer = None
        if self._fetcher is not None:
            await self._fetcher.aclose()
            self._fetcher = None
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.close)
            self._metrics = None

    @staticmethod
    def _require(value: T | None) -> T:
        if value is None:
            raise IngestError("IngestService is not started")
        return value
