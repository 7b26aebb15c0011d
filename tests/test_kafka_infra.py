"""Kafka infrastructure: broker choice, local broker, topic creation, a record round trip."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from livestream.errors import KafkaSetupError
from livestream.kafka.admin import ensure_topics
from livestream.kafka.broker import (
    LocalKafkaBroker,
    LocalKafkaSettings,
    random_cluster_id,
    resolve_kafka_jars,
    server_properties,
)
from livestream.kafka.serde import decode_value, encode_key, encode_value
from livestream.kafka.testing import (
    KafkaSource,
    TestKafkaSettings,
    choose_kafka_source,
    kafka_for_tests,
    unique_topics,
)
from schemas.records import ChunkRecord, Frame
from schemas.topics import CHUNK_TOPIC_MAX_MESSAGE_BYTES, Topics

# --------------------------------------------------------------------------- without a broker


def _docker_must_not_be_probed() -> bool:
    raise AssertionError("Docker was probed although KAFKA_BOOTSTRAP_SERVERS is set")


def test_env_bootstrap_wins_over_docker_and_local() -> None:
    settings = TestKafkaSettings(kafka_bootstrap_servers="kafka.example:9092")
    assert choose_kafka_source(settings, _docker_must_not_be_probed) is KafkaSource.ENV


def test_docker_then_local_when_env_unset() -> None:
    settings = TestKafkaSettings(kafka_bootstrap_servers=None)
    assert choose_kafka_source(settings, lambda: True) is KafkaSource.DOCKER
    assert choose_kafka_source(settings, lambda: False) is KafkaSource.LOCAL


def test_kafka_for_tests_yields_env_address_without_starting_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    with kafka_for_tests(is_docker_available=_docker_must_not_be_probed) as bootstrap:
        assert bootstrap == "kafka.example:9092"


def test_cluster_id_is_a_kafka_uuid() -> None:
    cluster_id = random_cluster_id()
    assert len(cluster_id) == 22
    assert not cluster_id.startswith("-")
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_server_properties_are_single_node_and_explicit_topics_only(tmp_path: Path) -> None:
    text = server_properties(data_dir=tmp_path, broker_port=1111, controller_port=2222)
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:2222"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1111"
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert int(props["message.max.bytes"]) >= CHUNK_TOPIC_MAX_MESSAGE_BYTES
    assert props["log.dirs"] == str(tmp_path)
    # A killed broker re-registers once its old session expired: short, so restarts are quick.
    assert int(props["broker.heartbeat.interval.ms"]) < int(props["broker.session.timeout.ms"]) <= 3000


def test_jar_resolution_is_cached() -> None:
    libs_dir = resolve_kafka_jars()
    started = time.monotonic()
    assert resolve_kafka_jars() == libs_dir
    assert time.monotonic() - started < 0.5
    jar_names = {path.name for path in libs_dir.glob("*.jar")}
    assert any(name.startswith("kafka_2.13-4.") for name in jar_names)
    assert any(name.startswith("log4j-slf4j-impl") for name in jar_names)


def test_missing_java_is_a_setup_error() -> None:
    broker = LocalKafkaBroker(LocalKafkaSettings(java="/nonexistent/java"))
    with pytest.raises(KafkaSetupError, match="java"):
        broker.start()
    assert broker.work_dir is None


def test_restarting_a_broker_that_never_started_is_a_setup_error() -> None:
    with pytest.raises(KafkaSetupError, match="never started"):
        LocalKafkaBroker().restart()


# --------------------------------------------------------------------------- with a real broker


def _configs(response: object) -> dict[str, str | None]:
    resource = response.to_object()["resources"][0]  # type: ignore[attr-defined]
    assert resource["error_code"] == 0, resource
    return {entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]}


@pytest.mark.kafka
async def test_topics_have_spec_partitions_and_configs(kafka_bootstrap: str, topics: Topics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics([s.name for s in topics.specs()])}
        for spec in topics.specs():
            assert described[spec.name]["error_code"] == 0
            assert len(described[spec.name]["partitions"]) == 3 == spec.partitions

        state_response, chunks_response = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topics.session_state)]
        ) + await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics.chunks)])
        state_configs, chunk_configs = _configs(state_response), _configs(chunks_response)
    finally:
        await admin.close()
    assert state_configs["cleanup.policy"] == "compact"
    assert state_configs["min.compaction.lag.ms"] == "0"
    assert chunk_configs["max.message.bytes"] == str(CHUNK_TOPIC_MAX_MESSAGE_BYTES)
    assert chunk_configs["cleanup.policy"] == "delete"


@pytest.mark.kafka
async def test_ensure_topics_is_idempotent(kafka_bootstrap: str, topics: Topics) -> None:
    await ensure_topics(kafka_bootstrap, topics.specs())
    await ensure_topics(kafka_bootstrap, topics.specs())


@pytest.mark.kafka
async def test_existing_topic_with_fewer_partitions_is_an_error(kafka_bootstrap: str) -> None:
    small = unique_topics(partitions=2)
    spec = small.specs()[0]
    await ensure_topics(kafka_bootstrap, [spec])
    wider = Topics(prefix=small.prefix, partitions=3).specs()[0]
    with pytest.raises(KafkaSetupError, match="2 partitions but 3"):
        await ensure_topics(kafka_bootstrap, [wider])


@pytest.mark.kafka
async def test_chunk_record_round_trip(kafka_bootstrap: str, topics: Topics) -> None:
    # ~1.5 MB of JSON once base64-encoded: only fits because the chunks topic raises the 1 MB default.
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4300 + b"\xff\xd9"
    record = ChunkRecord(
        session_id="sess-1",
        stream_id="stream-1",
        chunk_id="sess-1-c000000",
        chunk_index=0,
        start_time=0.0,
        end_time=2.0,
        hls_cumulative_offset=0.0,
        capture_time=0.5,
        captured_at=datetime(2026, 1, 1, tzinfo=UTC),
        media_sequences=[7, 8],
        rapid_review_query="red car",
        frames=[Frame(stream_time=0.5, width=64, height=48, jpeg=jpeg)],
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        metadata = await producer.send_and_wait(
            topics.chunks, encode_value(record), key=encode_key(record.session_id)
        )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topics.chunks,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=8 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        message = await consumer.getone()
    finally:
        await consumer.stop()
    assert (message.partition, message.offset) == (metadata.partition, metadata.offset)
    assert message.key == b"sess-1"
    decoded = decode_value(ChunkRecord, message.value, topic=message.topic, offset=message.offset)
    assert decoded == record
    assert decoded.frames[0].jpeg == jpeg
    assert 1024 * 1024 < len(message.value) < CHUNK_TOPIC_MAX_MESSAGE_BYTES


@pytest.mark.kafka
def test_local_broker_lifecycle(tmp_path: Path) -> None:
    broker = LocalKafkaBroker(base_dir=tmp_path)
    with broker:
        work_dir = broker.work_dir
        assert work_dir is not None and work_dir.parent == tmp_path
        assert broker.running
        assert broker.bootstrap_servers.startswith("127.0.0.1:")
        assert broker.log_file.exists() and "Kafka Server started" in broker.log_file.read_text()
    assert not broker.running
    assert not work_dir.exists()
