"""The API's Kafka edge: the command publisher and the two assigned (group-less) readers.

* ``CommandPublisher`` produces ``StartSession``/``EndSession`` keyed by session_id and
  waits for the broker's acknowledgement from all in-sync replicas.
* ``SessionStateReader`` replays the compacted session-state topic from the beginning into
  the ``SessionView`` and reports when it has caught up with the end offsets seen at startup.
* ``EventsReader`` follows the events topic from its end into the ``SessionFeedHub``.

The readers use no consumer group: every API replica reads every partition itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from api.errors import CommandPublishError
from api.feeds import SessionFeedHub
from api.settings import ApiSettings
from api.views import SessionView
from livestream.errors import KafkaSetupError, RecordError
from livestream.kafka.serde import decode_value, encode_key, encode_value
from schemas.records import EndSession, Event, SessionState, StartSession
from schemas.topics import Topics

logger = logging.getLogger(__name__)

RETRY_PAUSE_SECONDS = 0.5
FETCH_TIMEOUT_MS = 500


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


class CommandPublisher:
    """Produces session commands to the session-commands topic, acks from all replicas."""

    def __init__(self, settings: ApiSettings, topic: str) -> None:
        self._settings = settings
        self._topic = topic
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
            await self._producer.stop()
            self._producer = None

    async def publish(self, command: StartSession | EndSession) -> None:
        """Produce ``command`` and wait for the broker's ack; ``CommandPublishError`` if it fails."""
        if self._producer is None:
            raise CommandPublishError("command producer is not started", topic=self._topic)
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    self._topic, key=encode_key(command.session_id), value=encode_value(command)
                ),
                timeout=self._settings.produce_timeout_seconds,
            )
        except (KafkaError, TimeoutError) as exc:
            raise CommandPublishError(
                f"the broker did not acknowledge the {command.kind} command: {exc!r}",
                topic=self._topic,
                session_id=command.session_id,
            ) from exc


class _AssignedTopicReader:
    """A group-less consumer assigned to every partition of one topic, run as a task."""

    def __init__(self, settings: ApiSettings, topic: str, partitions: Sequence[int], name: str) -> None:
        self._settings = settings
        self.topic = topic
        self._partitions = [TopicPartition(topic, partition) for partition in partitions]
        self._name = name
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id=f"{self._settings.client_id}-{self._name}",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
            consumer.assign(self._partitions)
            await self._position(consumer)
        except KafkaError as exc:
            await consumer.stop()
            raise KafkaSetupError(f"cannot start the {self._name} reader", topic=self.topic) from exc
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name=f"api-{self._name}-reader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _position(self, consumer: AIOKafkaConsumer) -> None:
        """Place the consumer where reading starts."""
        raise NotImplementedError

    def _handle(self, record: ConsumerRecord) -> None:
        raise NotImplementedError

    async def _after_batch(self, consumer: AIOKafkaConsumer) -> None:
        """Hook run after every fetch, even an empty one."""

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
                for records in batches.values():
                    for record in records:
                        try:
                            self._handle(record)
                        except RecordError as exc:
                            logger.warning("skipping a poison record: %s", exc)
                await self._after_batch(consumer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = exc
            logger.exception("%s reader stopped (topic=%s)", self._name, self.topic)
            raise


class SessionStateReader(_AssignedTopicReader):
    """Materializes the compacted session-state topic into ``view``; notifies ``hub`` of changes."""

    def __init__(
        self,
        settings: ApiSettings,
        topic: str,
        partitions: Sequence[int],
        view: SessionView,
        hub: SessionFeedHub,
    ) -> None:
        super().__init__(settings, topic, partitions, "session-state")
        self._view = view
        self._hub = hub
        self._catch_up_targets: dict[TopicPartition, int] = {}
        self.caught_up = asyncio.Event()

    async def _position(self, consumer: AIOKafkaConsumer) -> None:
        self._catch_up_targets = dict(await consumer.end_offsets(self._partitions))
        await consumer.seek_to_beginning(*self._partitions)
        await self._check_caught_up(consumer)

    def _handle(self, record: ConsumerRecord) -> None:
        if record.value is None:
            if record.key is not None:
                self._view.remove(record.key.decode(errors="replace"))
            return
        state = decode_value(SessionState, record.value, topic=record.topic, offset=record.offset)
        if self._view.apply_state(state):
            self._hub.publish_state(state)

    async def _after_batch(self, consumer: AIOKafkaConsumer) -> None:
        if not self.caught_up.is_set():
            await self._check_caught_up(consumer)

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        for partition, end_offset in self._catch_up_targets.items():
            if await consumer.position(partition) < end_offset:
                return
        if not self.caught_up.is_set():
            logger.info("session view caught up (topic=%s, sessions=%d)", self.topic, len(self._view))
            self.caught_up.set()


class EventsReader(_AssignedTopicReader):
    """Follows the events topic from its end at startup and feeds ``hub``."""

    def __init__(
        self, settings: ApiSettings, topic: str, partitions: Sequence[int], hub: SessionFeedHub
    ) -> None:
        super().__init__(settings, topic, partitions, "events")
        self._hub = hub

    async def _position(self, consumer: AIOKafkaConsumer) -> None:
        await consumer.seek_to_end(*self._partitions)
        # Resolve the positions now, so events produced after startup are never skipped.
        for partition in self._partitions:
            await consumer.position(partition)

    def _handle(self, record: ConsumerRecord) -> None:
        self._hub.publish_event(decode_value(Event, record.value, topic=record.topic, offset=record.offset))


class KafkaRuntime:
    """The API's Kafka clients, started and stopped together by the app's lifespan."""

    def __init__(self, settings: ApiSettings, view: SessionView, hub: SessionFeedHub) -> None:
        self.settings = settings
        self.topics = Topics(prefix=settings.topic_prefix)
        self.view = view
        self.hub = hub
        self.publisher = CommandPublisher(settings, self.topics.session_commands)
        self.state_reader: SessionStateReader | None = None
        self.events_reader: EventsReader | None = None
        self.started = False

    async def start(self) -> None:
        partitions = await wait_for_topic_partitions(
            self.settings,
            [self.topics.session_commands, self.topics.session_state, self.topics.events],
        )
        try:
            await self.publisher.start()
            self.events_reader = EventsReader(
                self.settings, self.topics.events, partitions[self.topics.events], self.hub
            )
            await self.events_reader.start()
            self.state_reader = SessionStateReader(
                self.settings,
                self.topics.session_state,
                partitions[self.topics.session_state],
                self.view,
                self.hub,
            )
            await self.state_reader.start()
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
        self.hub.close_all()
        for reader in (self.state_reader, self.events_reader):
            if reader is not None:
                await reader.stop()
        await self.publisher.stop()

    @property
    def caught_up(self) -> bool:
        return self.state_reader is not None and self.state_reader.caught_up.is_set()

    @property
    def failure(self) -> BaseException | None:
        for reader in (self.state_reader, self.events_reader):
            if reader is not None and reader.failure is not None:
                return reader.failure
        return None

    @property
    def ready(self) -> bool:
        return self.started and self.caught_up and self.failure is None
