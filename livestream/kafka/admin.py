"""Topic administration: wait for a broker, create the system's topics idempotently.

``python -m livestream.kafka.admin`` creates every topic of ``Topics().specs()`` on the cluster
named by ``KAFKA_BOOTSTRAP_SERVERS``, with the prefix from ``LIVESTREAM_TOPIC_PREFIX``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from livestream.errors import KafkaSetupError
from livestream.settings import ServiceSettings
from schemas.topics import DEFAULT_PARTITIONS, Topics, TopicSpec

log = logging.getLogger(__name__)

MAX_DEFAULT_REPLICATION_FACTOR = 3
POLL_INTERVAL_S = 0.2


class AdminSettings(ServiceSettings):
    """Settings of the topic-creation CLI (broker address and prefix come from the base class)."""

    model_config = SettingsConfigDict(env_prefix="LIVESTREAM_ADMIN_", frozen=True, extra="ignore")

    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, description="Partitions of every topic.")
    replication_factor: int | None = Field(
        default=None, ge=1, description="Replicas per partition; default min(3, brokers in the cluster)."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="How long to wait for the broker.")


# The deadline also bounds each request and names the wait in the error, hence a parameter.
async def wait_for_broker(bootstrap_servers: str, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    """Wait until the cluster answers a metadata request with at least one broker; return that metadata."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            request_timeout_ms=int(max(1.0, min(5.0, remaining)) * 1000),
        )
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            if cluster.get("brokers"):
                return cluster
            last_error = None
        except (KafkaError, OSError, TimeoutError) as exc:
            last_error = exc
        finally:
            await admin.close()
        if time.monotonic() >= deadline:
            raise KafkaSetupError(
                f"Kafka did not answer within {timeout:.0f}s"
                + (f": {type(last_error).__name__}: {last_error}" if last_error else " (no brokers listed)"),
                bootstrap=bootstrap_servers,
            )
        await asyncio.sleep(POLL_INTERVAL_S)


def _partition_counts(described: list[dict[str, Any]]) -> dict[str, int]:
    return {topic["topic"]: len(topic["partitions"]) for topic in described if topic["error_code"] == 0}


def _check_partitions(specs: Sequence[TopicSpec], partition_counts: dict[str, int], bootstrap: str) -> None:
    for spec in specs:
        actual = partition_counts.get(spec.name)
        if actual is not None and actual < spec.partitions:
            # Keys would map to other partitions than the co-partitioned topics expect.
            raise KafkaSetupError(
                f"topic has {actual} partitions but {spec.partitions} are required; "
                "add partitions or use another topic prefix",
                topic=spec.name,
                bootstrap=bootstrap,
            )


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], deadline: float, bootstrap: str
) -> dict[str, int]:
    """Wait until every topic is visible with a leader on each partition, so clients can use it at once."""
    names = [spec.name for spec in specs]
    while True:
        described = await admin.describe_topics(names)
        ready = {
            topic["topic"]: len(topic["partitions"])
            for topic in described
            if topic["error_code"] == 0
            and topic["partitions"]
            and all(partition["leader"] >= 0 for partition in topic["partitions"])
        }
        if len(ready) == len(names):
            return ready
        if time.monotonic() >= deadline:
            missing = sorted(set(names) - set(ready))
            raise KafkaSetupError("topics have no leader yet", topic=",".join(missing), bootstrap=bootstrap)
        await asyncio.sleep(POLL_INTERVAL_S)


async def ensure_topics(
    bootstrap_servers: str,
    specs: list[TopicSpec],
    *,
    replication_factor: int | None = None,
    timeout_s: float = 60.0,
) -> None:
    """Create the topics of ``specs`` that do not exist yet, with their partitions and configs.

    Idempotent: existing topics are left as they are (their configs are not changed), unless they
    have fewer partitions than their spec, which raises ``KafkaSetupError``. ``replication_factor``
    defaults to min(3, number of brokers). Returns once every topic has a leader on each partition.
    """
    deadline = time.monotonic() + timeout_s
    cluster = await wait_for_broker(bootstrap_servers, timeout_s)
    if replication_factor is None:
        replication_factor = min(MAX_DEFAULT_REPLICATION_FACTOR, len(cluster["brokers"]))

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await admin.start()
        # List all topics rather than describing the wanted ones: on clusters that auto-create
        # topics, a metadata request for a missing topic would create it with default settings.
        existing = set(await admin.list_topics())
        present = [spec for spec in specs if spec.name in existing]
        if present:
            described = await admin.describe_topics([spec.name for spec in present])
            _check_partitions(present, _partition_counts(described), bootstrap_servers)

        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=spec.name,
                        num_partitions=spec.partitions,
                        replication_factor=replication_factor,
                        topic_configs=dict(spec.config),
                    )
                    for spec in missing
                ],
                timeout_ms=int(max(1.0, deadline - time.monotonic()) * 1000),
            )
            for topic_error in response.to_object()["topic_errors"]:
                code = topic_error["error_code"]
                if code == 0 or code == TopicAlreadyExistsError.errno:  # created, or by a racing peer
                    continue
                error = for_code(code)
                raise KafkaSetupError(
                    f"could not create topic: {error.__name__}: {topic_error.get('error_message') or ''}",
                    topic=topic_error["topic"],
                    bootstrap=bootstrap_servers,
                    replication_factor=replication_factor,
                )
            log.info("created topics %s", ", ".join(spec.name for spec in missing))

        partition_counts = await _wait_for_leaders(admin, specs, deadline, bootstrap_servers)
        # A racing creator may have used other partition counts: check what is really there.
        _check_partitions(specs, partition_counts, bootstrap_servers)
    except KafkaError as exc:
        raise KafkaSetupError(
            f"topic setup failed: {type(exc).__name__}: {exc}", bootstrap=bootstrap_servers
        ) from exc
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m livestream.kafka.admin",
        description="Create the livestream topics (KAFKA_BOOTSTRAP_SERVERS, LIVESTREAM_TOPIC_PREFIX).",
    )
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = AdminSettings()
    topics = Topics(prefix=settings.topic_prefix, partitions=settings.partitions)
    try:
        asyncio.run(
            ensure_topics(
                settings.kafka_bootstrap_servers,
                topics.specs(),
                replication_factor=settings.replication_factor,
                timeout_s=settings.timeout_s,
            )
        )
    except KafkaSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for spec in topics.specs():
        print(f"{spec.name}: {spec.partitions} partitions {spec.config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
