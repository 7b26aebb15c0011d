"""The ingest service: session commands in, one session task per StartSession, records out.

Consumes the session-commands topic in a consumer group (manual commits) and publishes, keyed
by session_id, with one idempotent producer (acks=all) to the session-lifecycle and chunks
topics.

Command handling order, and what a crash between the steps does:

1. ``StartSession``: the session's task is created (it runs concurrently), then the command's
   offset is committed. A crash before the commit redelivers the command on restart and the
   session starts again from the live edge (its early chunks may then be published twice
   under the same chunk ids, with different frames: at-least-once). A crash after the commit
   loses the running session (no final report; documented limitation, see ``session``).
2. ``EndSession``: the session is asked to stop, then the offset is committed at once (not
   after the session's final report). A crash in between loses the session as above.
3. Poison records are logged and committed past.

Scaling and limits: several ingest instances split the command partitions; a session runs on
the instance that consumed its StartSession. EndSession of the same session_id lands on the
same partition, so on the same instance unless a rebalance moved that partition meanwhile (it
is then ignored by the new owner, and the source runs on until it ends or stalls).
StartSession commands older than ``command_max_age_seconds`` are not started but reported
FAILED with the reason, so a new consumer group (offset reset to earliest) does not restart
days-old sessions, and a start that waited out an ingest outage does not hang INITIALIZING.


Clean shutdown (SIGTERM/SIGINT): stop consuming, ask every session to stop (each flushes its
partial chunk and reports FAILED "ingest service shut down..." with its final count), wait
for them, flush and close the producer, close the consumer (offsets were committed already).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC
from types import TracebackType
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError

from ingest.errors import IngestError
from ingest.fetch import FetchPolicy, HttpFetcher
from ingest.session import IngestSession
from ingest.settings import IngestSettings
from livestream.errors import RecordError
from livestream.kafka.serde import decode_command, encode_key, encode_value
from schemas.records import ChunkRecord, EndSession, IngestState, SessionLifecycle, StartSession, utcnow
from schemas.topics import CHUNK_TOPIC_MAX_MESSAGE_BYTES, Topics

log = logging.getLogger(__name__)

T = TypeVar("T")


class KafkaRecordPublisher:
    """Produces records keyed by session_id and waits for the broker's acknowledgement."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics) -> None:
        self.producer = producer
        self.topics = topics

    async def publish_chunk(self, record: ChunkRecord) -> None:
        await self.producer.send_and_wait(
            self.topics.chunks, key=encode_key(record.session_id), value=encode_value(record)
        )

    async def publish_lifecycle(self, record: SessionLifecycle) -> None:
        await self.producer.send_and_wait(
            self.topics.session_lifecycle, key=encode_key(record.session_id), value=encode_value(record)
        )


class IngestService:
    """Use as ``async with IngestService(settings) as service: await service.run(stop_event)``."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.topics = Topics(prefix=settings.topic_prefix)
        self.sessions: dict[str, IngestSession] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._publisher: KafkaRecordPublisher | None = None
        self._fetcher: HttpFetcher | None = None

    async def __aenter__(self) -> IngestService:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        settings = self.settings
        self._fetcher = HttpFetcher(
            FetchPolicy(
                connect_timeout=settings.http_connect_timeout,
                read_timeout=settings.http_read_timeout,
                retries=settings.http_retries,
                backoff_seconds=settings.http_backoff_seconds,
            )
        )
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
            self.topics.session_commands,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=settings.group_id,
            client_id=f"{settings.group_id}-commands",
            enable_auto_commit=False,
            auto_offset_reset=settings.command_offset_reset,
        )
        try:
            await self._producer.start()
            await self._consumer.start()
        except BaseException:
            # A failed start still owns open connections (and aiokafka warns at exit).
            await self._consumer.stop()
            await self._producer.stop()
            raise
        self._publisher = KafkaRecordPublisher(self._producer, self.topics)
        log.info(
            "ingest consuming %s as group %s on %s",
            self.topics.session_commands,
            settings.group_id,
            settings.kafka_bootstrap_servers,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Handle commands until ``stop`` is set."""
        consumer = self._require(self._consumer)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=100)
            for partition, messages in batches.items():
                for message in messages:
                    await self.handle(message)
                    # Commit after the command took effect (session task started / stop asked);
                    # a crash before this line redelivers the command (see the module docstring).
                    position = {TopicPartition(partition.topic, partition.partition): message.offset + 1}
                    try:
                        await consumer.commit(position)
                    except CommitFailedError as exc:  # partition moved away: its new owner redelivers
                        log.warning("command offset %d not committed: %s", message.offset, exc)

    async def handle(self, message: ConsumerRecord) -> None:
        try:
            command = decode_command(message.value, topic=message.topic, offset=message.offset)
        except RecordError as exc:
            log.error("skipping undecodable command: %s", exc)
            return
        if isinstance(command, StartSession):
            too_late = self.start_too_late(command)
            if too_late is None:
                self.start_session(command)
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

    def start_session(self, command: StartSession) -> IngestSession | None:
        session_id = command.session_id
        if session_id in self._tasks:
            log.info("session %s is already running; duplicate StartSession ignored", session_id)
            return None
        session = IngestSession(
            command, self.settings, self._require(self._fetcher), self._require(self._publisher)
        )
        self.sessions[session_id] = session
        self._tasks[session_id] = asyncio.create_task(self._run_session(session), name=f"ingest-{session_id}")
        log.info("session %s started on %s", session_id, command.source_url)
        return session

    def end_session(self, command: EndSession) -> None:
        session = self.sessions.get(command.session_id)
        if session is None:
            log.info("EndSession %s: no such running session here; ignored", command.session_id)
            return
        session.request_stop("user")

    async def _run_session(self, session: IngestSession) -> None:
        try:
            await session.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or Kafka failure: still try to leave a terminal report
            log.exception("session %s crashed", session.session_id)
            if session.final_report is None:
                with contextlib.suppress(Exception):
                    await session.fail(f"ingest error: {type(exc).__name__}: {exc}")
        finally:
            self.sessions.pop(session.session_id, None)
            self._tasks.pop(session.session_id, None)

    async def wait_idle(self) -> None:
        """Wait until every running session has finished (tests, draining)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            session.request_stop("shutdown")
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.flush()
            await self._producer.stop()
            self._producer = None
        if self._fetcher is not None:
            await self._fetcher.aclose()
            self._fetcher = None

    @staticmethod
    def _require(value: T | None) -> T:
        if value is None:
            raise IngestError("IngestService is not started")
        return value
