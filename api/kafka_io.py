"""The API's Kafka edge: the command publisher and the session-topics reader.

* ``CommandPublisher`` produces ``StartSession``/``EndSession`` keyed by session_id, and
  ``AttachedStream`` records keyed ``<tenant>/<stream_id>``, and waits for the broker's
  acknowledgement from all in-sync replicas.
* ``SessionTopicsReader`` replays the three compacted session topics (headers, chunks,
  events) and the compacted streams topic from the beginning, hands each fetch to the store's
  thread (decoded and written in one transaction there), then to ``Sessions.apply`` (memory
  and feeds), and reports when it has reached the end offsets seen at start-up on every
  partition of those topics. Once caught up, it retires (tombstones) a stream the API created
  for a session start when the purge of a session leaves no stored session on it.

The reader uses no consumer group: every API replica reads every partition itself.

Broker outages: the reader's polls (and, while idle, a metadata probe every
``IDLE_PROBE_INTERVAL_S``) and the publisher's sends feed one outage clock
(``livestream.kafka.resilience.BrokerWatch``). Within ``broker_outage_limit_s`` the API keeps
serving what it has (reads from its store, SSE feeds that wait for news) and answers commands
with 503 and ``Retry-After``; past it the runtime reports ``BrokerOutageError`` to its
``on_outage`` callback: ``python -m api`` then shuts uvicorn down and exits with status 2 for its
supervisor, and ``/healthz`` answers 503 until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from api.errors import BrokerOutageError, CommandPublishError
from api.sessions import Sessions
from api.settings import ApiSettings
from api.store import AppliedBatch, RawRecord, SessionPurged, TopicKind
from livestream.errors import KafkaSetupError
from livestream.kafka.resilience import BrokerWatch, probe_metadata, stop_client
from livestream.kafka.serde import encode_key, encode_value
from livestream.stages import stages_from_headers
from schemas.records import AttachedStream, EndSession, StartSession, stream_record_key
from schemas.topics import Topics

logger = logging.getLogger(__name__)

RETRY_PAUSE_SECONDS = 0.5
FETCH_TIMEOUT_MS = 500
# Records per fetch, so one store transaction (and its in-memory journal) stays bounded.
FETCH_MAX_RECORDS = 5000
# A poll (asked to return within FETCH_TIMEOUT_MS) or a metadata probe that takes longer than this
# counts as a broker failure.
POLL_GUARD_S = 5.0
# While the reader has nothing to read it asks for metadata this often (at most; a quarter of the
# outage limit if shorter): aiokafka retries quietly, so an idle reader sees an outage only so.
IDLE_PROBE_INTERVAL_S = 10.0

OutageCallback = Callable[[BrokerOutageError], None]


async def wait_for_topic_partitions(
    settings: ApiSettings, topic_names: Sequence[str]
) -> dict[str, list[int]]:
    """Partition ids of each topic, waiting up to the startup timeout for broker and topics.

    Uses the all-topics metadata listing first, so asking never auto-creates a topic with
    broker defaults (the session-state topic must be compacted: topics come from
    ``livestream.kafka.admin.ensure_topics``).
    """
    deadline = time.monotonic() + settings.kafka_startup_timeout_seconds
    missing: list[str] = list(topic_names)
    last_error: Exception | None = None
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers, client_id=f"{settings.client_id}-admin"
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [name for name in topic_names if name not in existing]
            if not missing:
                described = await admin.describe_topics(list(topic_names))
                partitions = {
                    entry["topic"]: sorted(p["partition"] for p in entry["partitions"]) for entry in described
                }
                if all(partitions.get(name) for name in topic_names):
                    return partitions
        except KafkaError as exc:
            last_error = exc
        finally:
            with contextlib.suppress(KafkaError):
                await admin.close()
        if time.monotonic() >= deadline:
            raise KafkaSetupError(
                "Kafka broker or topics not available before the startup timeout "
                "(create the topics with `python -m livestream.kafka.admin`)",
                bootstrap=settings.kafka_bootstrap_servers,
                missing_topics=",".join(missing) or None,
                error=repr(last_error) if last_error else None,
            )
        await asyncio.sleep(RETRY_PAUSE_SECONDS)


class BrokerOutages:
    """The API's outage clock: a ``BrokerWatch`` whose tripping is reported once, to ``on_outage``."""

    def __init__(self, limit_s: float, on_outage: OutageCallback | None) -> None:
        self.watch = BrokerWatch(limit_s, BrokerOutageError)
        self._on_outage = on_outage

    @property
    def tripped(self) -> BrokerOutageError | None:
        error = self.watch.tripped
        return error if isinstance(error, BrokerOutageError) else None

    def succeeded(self) -> None:
        self.watch.succeeded()

    def failed(self, exc: BaseException, doing: str) -> None:
        """Count a broker failure; past the limit, report the outage (once) without raising."""
        if self.watch.tripped is not None:
            return
        try:
            self.watch.failed(exc, doing)
        except BrokerOutageError as outage:
            logger.error("API stops: %s", outage)
            if self._on_outage is not None:
                self._on_outage(outage)


class CommandPublisher:
    """Produces session commands (and stream records) to their topics, acks from all replicas."""

    def __init__(self, settings: ApiSettings, topic: str, streams_topic: str, outages: BrokerOutages) -> None:
        self._settings = settings
        self._topic = topic
        self._streams_topic = streams_topic
        self._outages = outages
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id=f"{self._settings.client_id}-commands",
            acks="all",
            enable_idempotence=True,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise KafkaSetupError(
                "cannot start the command producer", bootstrap=self._settings.kafka_bootstrap_servers
            ) from exc
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await stop_client("command producer", self._producer.stop(), logger)
            self._producer = None

    async def publish(self, command: StartSession | EndSession) -> None:
        """Produce ``command`` and wait for the broker's ack; ``CommandPublishError`` if it fails."""
        await self._send(
            self._topic,
            command.session_id,
            encode_value(command),
            f"the {command.kind} command",
            session_id=command.session_id,
        )

    async def publish_stream(self, stream: AttachedStream) -> None:
        """Produce a named stream's record and wait for the ack; ``CommandPublishError`` if it fails."""
        await self._send(
            self._streams_topic,
            stream_record_key(stream.tenant, stream.stream_id),
            encode_value(stream),
            "the stream record",
            stream_id=stream.stream_id,
        )

    async def retire_stream(self, tenant: str, stream_id: str) -> None:
        """Produce the tombstone of a named stream; ``CommandPublishError`` if it is not acknowledged."""
        await self._send(
            self._streams_topic,
            stream_record_key(tenant, stream_id),
            None,
            "the stream tombstone",
            stream_id=stream_id,
        )

    async def _send(self, topic: str, key: str, value: bytes | None, what: str, **context: object) -> None:
        if self._producer is None:
            raise CommandPublishError("command producer is not started", topic=topic)
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(topic, key=encode_key(key), value=value),
                timeout=self._settings.produce_timeout_seconds,
            )
        except (KafkaError, TimeoutError) as exc:
            self._outages.failed(exc, f"publish {what}")
            raise CommandPublishError(
                f"the broker did not acknowledge {what}: {exc!r}", topic=topic, **context
            ) from exc
        self._outages.succeeded()


class SessionTopicsReader:
    """A group-less consumer of every partition of the session and stream topics, run as a task."""

    def __init__(
        self,
        settings: ApiSettings,
        partitions: dict[TopicKind, tuple[str, Sequence[int]]],
        sessions: Sessions,
        outages: BrokerOutages,
        publisher: CommandPublisher,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._outages = outages
        self._publisher = publisher
        self._kinds = {topic: kind for kind, (topic, _) in partitions.items()}
        self._partitions = [
            TopicPartition(topic, partition) for topic, ids in partitions.values() for partition in ids
        ]
        self._catch_up_targets: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()
        self.failure: BaseException | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id=f"{self._settings.client_id}-session-topics",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
            consumer.assign(self._partitions)
            self._catch_up_targets = dict(await consumer.end_offsets(self._partitions))
            await consumer.seek_to_beginning(*self._partitions)
            await self._check_caught_up(consumer)
        except KafkaError as exc:
            await consumer.stop()
            raise KafkaSetupError(
                "cannot start the session topics reader", topics=",".join(self._kinds)
            ) from exc
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="api-session-topics-reader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await stop_client("session topics reader", self._consumer.stop(), logger)
            self._consumer = None

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        probe_every = min(IDLE_PROBE_INTERVAL_S, self._settings.broker_outage_limit_s / 4)
        last_probe = time.monotonic()
        try:
            while self._outages.tripped is None:
                try:
                    batches = await asyncio.wait_for(
                        consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS),
                        POLL_GUARD_S,
                    )
                except (KafkaError, TimeoutError) as exc:
                    # aiokafka reconnects by itself; what surfaces here counts towards the limit.
                    logger.warning("reading the session topics failed (%s: %s)", type(exc).__name__, exc)
                    self._outages.failed(exc, "read the session topics")
                    await asyncio.sleep(RETRY_PAUSE_SECONDS)
                    continue
                if not batches and time.monotonic() - last_probe >= probe_every:
                    last_probe = time.monotonic()
                    await self._probe(consumer)
                records = [
                    RawRecord(
                        self._kinds[partition.topic],
                        record.key,
                        record.value,
                        record.topic,
                        record.offset,
                        stages_from_headers(record.headers)
                        if self._kinds[partition.topic] is TopicKind.EVENTS
                        else None,
                    )
                    for partition, fetched in batches.items()
                    for record in fetched
                ]
                if records:
                    applied = await self._sessions.store.apply(records)
                    self._sessions.apply(applied, live=self.caught_up.is_set())
                    if self.caught_up.is_set():
                        await self._retire_streams(applied)
                if not self.caught_up.is_set():
                    await self._check_caught_up(consumer)
            self.failure = self._outages.tripped
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = exc
            logger.exception("session topics reader stopped")
            raise

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """Ask the cluster for metadata; a failure (or no answer) counts towards the outage limit."""
        error = await probe_metadata(consumer, POLL_GUARD_S, logger)
        if error is None:
            self._outages.succeeded()
        else:
            self._outages.failed(error, "reach the broker")

    async def _retire_streams(self, applied: AppliedBatch) -> None:
        """Tombstone the streams created for session starts whose last stored session was purged.

        Only once caught up: while replaying, sessions of other partitions may not be stored
        yet (the replica that was live at the purge retired the stream then). Every replica
        does it, which produces the same tombstone more than once (harmless). A tombstone the
        broker refuses is logged and left: the stream then stays (a leftover, never a loss).
        """
        for change in applied.changes:
            if not isinstance(change, SessionPurged) or change.stream_id is None or change.owner is None:
                continue
            tenant = change.owner.tenant
            if tenant is None or not await self._sessions.store.retirable_stream(tenant, change.stream_id):
                continue
            try:
                await self._publisher.retire_stream(tenant, change.stream_id)
            except CommandPublishError as exc:
                logger.warning("stream %s of tenant %s not retired: %s", change.stream_id, tenant, exc)
                continue
            logger.info("stream %s of tenant %s retired with its last session", change.stream_id, tenant)

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        for partition, end_offset in self._catch_up_targets.items():
            if await consumer.position(partition) < end_offset:
                return
        if not self.caught_up.is_set():
            logger.info(
                "session view caught up (sessions stored=%d, in memory=%d)",
                self._sessions.stored_sessions,
                len(self._sessions.view),
            )
            self.caught_up.set()


class KafkaRuntime:
    """The API's Kafka clients, started and stopped together by the app's lifespan."""

    def __init__(
        self, settings: ApiSettings, sessions: Sessions, *, on_outage: OutageCallback | None = None
    ) -> None:
        self.settings = settings
        self.topics = Topics(prefix=settings.topic_prefix)
        self.sessions = sessions
        self.outages = BrokerOutages(settings.broker_outage_limit_s, on_outage)
        self.publisher = CommandPublisher(
            settings, self.topics.session_commands, self.topics.streams, self.outages
        )
        self.reader: SessionTopicsReader | None = None
        self.started = False

    async def start(self) -> None:
        session_topics = {
            TopicKind.HEADERS: self.topics.session_state,
            TopicKind.CHUNKS: self.topics.session_chunks,
            TopicKind.EVENTS: self.topics.session_events,
            TopicKind.STREAMS: self.topics.streams,
        }
        partitions = await wait_for_topic_partitions(
            self.settings, [self.topics.session_commands, *session_topics.values()]
        )
        try:
            await self.publisher.start()
            self.reader = SessionTopicsReader(
                self.settings,
                {kind: (topic, partitions[topic]) for kind, topic in session_topics.items()},
                self.sessions,
                self.outages,
                self.publisher,
            )
            await self.reader.start()
        except BaseException:
            await self.stop()
            raise
        self.started = True
        logger.info(
            "API Kafka clients started (bootstrap=%s, prefix=%s)",
            self.settings.kafka_bootstrap_servers,
            self.settings.topic_prefix,
        )

    async def stop(self) -> None:
        self.started = False
        self.sessions.close_feeds()
        if self.reader is not None:
            await self.reader.stop()
        await self.publisher.stop()

    @property
    def caught_up(self) -> bool:
        return self.reader is not None and self.reader.caught_up.is_set()

    @property
    def failure(self) -> BaseException | None:
        if self.outages.tripped is not None:
            return self.outages.tripped
        return self.reader.failure if self.reader is not None else None

    @property
    def ready(self) -> bool:
        return self.started and self.caught_up and self.failure is None
