"""A real Kafka for tests: an existing cluster, a Docker container, or a local broker process.

``kafka_for_tests()`` picks, in this order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (a cluster you run yourself; nothing is started);
2. a testcontainers Kafka when a Docker engine answers;
3. ``LocalKafkaBroker`` (Kafka jars from Maven Central, run with the local JDK).

Tests isolate themselves with a unique topic prefix (``create_test_topics``), so a shared
cluster can serve many runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from enum import StrEnum

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from livestream.kafka.admin import ensure_topics
from livestream.kafka.broker import LocalKafkaBroker
from schemas.topics import Topics

log = logging.getLogger(__name__)

DOCKER_PING_TIMEOUT_S = 2
TEST_TOPIC_PARTITIONS = 3
TEST_CONTAINER_IMAGE = "confluentinc/cp-kafka:7.6.0"


class KafkaSource(StrEnum):
    ENV = "env"
    DOCKER = "docker"
    LOCAL = "local"


class TestKafkaSettings(BaseSettings):
    """Only the externally provided broker address; unset means "start one for the tests"."""

    __test__ = False  # not a pytest test class despite the name
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
    )


def docker_available(timeout_s: float = DOCKER_PING_TIMEOUT_S) -> bool:
    """True when a Docker engine answers a ping within ``timeout_s`` (False without the SDK)."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=timeout_s)
    except Exception:  # no SDK, no socket, bad DOCKER_HOST: all mean "no Docker"
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def choose_kafka_source(
    settings: TestKafkaSettings, is_docker_available: Callable[[], bool] = docker_available
) -> KafkaSource:
    """The env var wins (without probing Docker), then Docker, then a local broker process."""
    if settings.kafka_bootstrap_servers:
        return KafkaSource.ENV
    if is_docker_available():
        return KafkaSource.DOCKER
    return KafkaSource.LOCAL


@contextlib.contextmanager
def _docker_kafka() -> Iterator[str]:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # older testcontainers releases
        from testcontainers.kafka import KafkaContainer  # type: ignore[no-redef]

    container = (
        KafkaContainer(TEST_CONTAINER_IMAGE)
        .with_kraft()
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_MESSAGE_MAX_BYTES", str(4 * 1024 * 1024))
    )
    with container:
        yield container.get_bootstrap_server()


@contextlib.contextmanager
def kafka_for_tests(
    settings: TestKafkaSettings | None = None,
    is_docker_available: Callable[[], bool] = docker_available,
) -> Iterator[str]:
    """Yield the ``host:port`` of a real Kafka broker for the duration of the block."""
    settings = settings or TestKafkaSettings()
    source = choose_kafka_source(settings, is_docker_available)
    log.info("Kafka for tests: %s", source)
    if source is KafkaSource.ENV:
        assert settings.kafka_bootstrap_servers is not None
        yield settings.kafka_bootstrap_servers
    elif source is KafkaSource.DOCKER:
        with _docker_kafka() as bootstrap:
            yield bootstrap
    else:
        with LocalKafkaBroker() as broker:
            yield broker.bootstrap_servers


def unique_topics(partitions: int = TEST_TOPIC_PARTITIONS) -> Topics:
    """Topics under a prefix of their own, so test runs sharing a cluster never see each other."""
    return Topics(prefix=f"t{uuid.uuid4().hex[:12]}", partitions=partitions)


async def create_test_topics(bootstrap_servers: str, partitions: int = TEST_TOPIC_PARTITIONS) -> Topics:
    topics = unique_topics(partitions)
    await ensure_topics(bootstrap_servers, topics.specs())
    return topics


async def latest_values(
    bootstrap: str, topic: str, partition: int, key_prefix: str
) -> dict[str, bytes | None]:
    """The last value of every key starting with ``key_prefix`` in one partition (None: tombstone).

    What a compacted topic keeps for those keys once compaction has run, read before it has.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        # Explicit offsets: a seek_to_beginning after end_offsets may resolve to the end.
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, begin)
        latest: dict[str, bytes | None] = {}
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                for record in records:
                    if record.key is not None and record.key.decode(errors="replace").startswith(key_prefix):
                        latest[record.key.decode()] = record.value
        return latest
    finally:
        await consumer.stop()


class TopicRecorder:
    """A downstream consumer of one topic (as users run), collecting its values in a thread.

    Synchronous tests (the SDK, a stack of processes) use it as a context manager.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.values: list[bytes] = []
        self._bootstrap, self._topic = bootstrap, topic
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            self._topic, bootstrap_servers=self._bootstrap, auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        self._ready.set()
        try:
            while not self._stop.is_set():
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    self.values.extend(r.value for r in records)
        finally:
            await consumer.stop()

    def __enter__(self) -> TopicRecorder:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError(f"the recorder of {self._topic} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
