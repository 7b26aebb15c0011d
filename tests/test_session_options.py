"""Per-session analysis options: start-session's optional form fields, end to end to the records.

Pure first: ``ingest.chunker.build_chunk_record`` copies a StartSession's options onto its chunk
records, and start-session validates the fields before Kafka is touched (a TestClient that never
starts the lifespan: a refusal is a 422, an accepted form a 503). Then, against a real broker
(marked ``kafka``), the API under uvicorn answers 200 with the options, publishes them on the
StartSession command, and serves them on the session's (pending) header.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import TypeVar

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings
from ingest.chunker import Chunk, build_chunk_record
from livestream.kafka.serde import decode_command
from livestream.kafka.testing import create_test_topics
from schemas.api import StartSessionForm
from schemas.options import AnalysisOptions
from schemas.records import Frame, StartSession
from schemas.topics import Topics

KEY = "options-test-key-0123456789"
HEADERS = {"Authorization": f"Bearer {KEY}"}
SOURCE = "https://cam.test/live.m3u8"
WAIT_S = 20.0
T = TypeVar("T")


# --------------------------------------------------------------------------- pure


def start_command(options: AnalysisOptions | None) -> StartSession:
    return StartSession(session_id="s-opt", stream_id="cams", name="door", source_url=SOURCE, options=options)


def a_chunk() -> Chunk:
    return Chunk(
        index=3,
        start_time=12.0,
        end_time=16.0,
        frames=(),
        media_sequences=(7,),
        capture_time=12.0,
        captured_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_build_chunk_record_copies_the_sessions_options() -> None:
    options = AnalysisOptions(detection_threshold=0.7, min_frames=3, severity_high=0.9)
    frames = [Frame(stream_time=12.0, width=2, height=2, jpeg=b"jpeg")]
    record = build_chunk_record(a_chunk(), start_command(options), frames)
    assert record.options == options
    assert record.chunk_index == 3 and record.session_id == "s-opt"
    # And the options survive the chunk topic's JSON.
    assert type(record).model_validate_json(record.to_bytes()).options == options


def test_build_chunk_record_without_options_has_none() -> None:
    assert build_chunk_record(a_chunk(), start_command(None), []).options is None


def test_the_form_has_no_options_unless_one_is_given() -> None:
    assert StartSessionForm(source_url=SOURCE, name="door").analysis_options is None
    form = StartSessionForm(source_url=SOURCE, name="door", min_frames=3, severity_high=0.7)
    assert form.analysis_options == AnalysisOptions(min_frames=3, severity_high=0.7)


@pytest.fixture
def client() -> Iterator[TestClient]:
    # No `with`: the lifespan (and so every Kafka client) never starts. Private sources allowed,
    # so checking the source only parses it (nothing is resolved).
    yield TestClient(create_app(ApiSettings(keys=KEY, allow_private_sources=True)))


def post_start(client: TestClient, **options: str) -> httpx.Response:
    return client.post(
        "/api/live/start-session", headers=HEADERS, data={"source_url": SOURCE, "name": "door", **options}
    )


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"min_frames": "0"}, "min_frames: Input should be greater than or equal to 1"),
        ({"min_frames": "21"}, "min_frames: Input should be less than or equal to 20"),
        ({"detection_threshold": "2"}, "detection_threshold: Input should be less than or equal to 0.99"),
        ({"max_lost_s": "-1"}, "max_lost_s: Input should be greater than or equal to 0"),
        (
            {"severity_medium": "0.9", "severity_high": "0.5"},
            "severity_medium (0.9) must not exceed severity_high (0.5)",
        ),
        # Against the default severity_high (0.8).
        ({"severity_medium": "0.9"}, "severity_medium (0.9) must not exceed severity_high (0.8)"),
    ],
    ids=["min_frames=0", "min_frames=21", "threshold=2", "max_lost=-1", "medium>high", "medium>default"],
)
def test_invalid_options_are_a_422_naming_the_field_and_the_reason(
    client: TestClient, options: dict[str, str], reason: str
) -> None:
    response = post_start(client, **options)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["msg"].startswith("invalid analysis options: ")
    assert reason in error["msg"], error["msg"]


def test_a_non_numeric_option_is_a_422_on_its_field(client: TestClient) -> None:
    response = post_start(client, min_frames="three")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "min_frames"]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"min_frames": "3", "severity_high": "0.7"},
        {"detection_threshold": "0.05", "max_lost_s": "0", "severity_medium": "0.8"},
        {"min_frames": ""},  # an empty form field is no option
    ],
    ids=["none", "some", "bounds", "empty"],
)
def test_valid_options_pass_validation_and_reach_kafka(client: TestClient, options: dict[str, str]) -> None:
    # 503: the form was accepted and the route went on to the (unstarted) Kafka clients.
    assert post_start(client, **options).status_code == 503


# --------------------------------------------------------------------------- against a real broker


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, within_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + within_s
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class ApiServer:
    """The app under uvicorn in a thread; ``base_url`` once it answers /healthz."""

    def __init__(self, settings: ApiSettings) -> None:
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api-options-under-test", daemon=True)
        self.base_url = ""

    async def start(self) -> None:
        self._thread.start()

        async def listening() -> bool:
            if not self._thread.is_alive():
                raise AssertionError("the API server thread died during startup")
            return self._server.started

        await eventually(listening, "uvicorn to listen", within_s=60)
        self.base_url = f"http://127.0.0.1:{self._server.servers[0].sockets[0].getsockname()[1]}"

        async def healthy() -> bool:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as http:
                return (await http.get("/healthz")).status_code == 200

        await eventually(healthy, "/healthz", within_s=60)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


@pytest.fixture(scope="module")
async def options_topics(kafka_bootstrap: str) -> Topics:
    return await create_test_topics(kafka_bootstrap)


@pytest.fixture(scope="module")
async def http(kafka_bootstrap: str, options_topics: Topics) -> AsyncIterator[httpx.AsyncClient]:
    server = ApiServer(
        ApiSettings(
            kafka_bootstrap_servers=kafka_bootstrap,
            topic_prefix=options_topics.prefix,
            keys=KEY,
            allow_private_sources=True,  # nothing fetches the source here (no ingest runs)
        )
    )
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, headers=HEADERS, timeout=30) as client:
            yield client
    finally:
        server.stop()


async def published_start(bootstrap: str, topics: Topics, session_id: str) -> StartSession:
    """The StartSession the API produced for ``session_id`` on the commands topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.session_commands, p) for p in range(topics.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)

        async def probe() -> StartSession | None:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    command = decode_command(record.value, topic=record.topic, offset=record.offset)
                    if isinstance(command, StartSession) and command.session_id == session_id:
                        return command
            return None

        return await eventually(probe, f"the start command of {session_id}")
    finally:
        await consumer.stop()


async def session_body(http: httpx.AsyncClient, stream_id: str, session_id: str) -> dict:
    async def probe() -> dict | None:
        response = await http.get(f"/api/live/live-sessions/{stream_id}/{session_id}")
        return response.json() if response.status_code == 200 else None

    return await eventually(probe, f"session {session_id}")


@pytest.mark.kafka
@pytest.mark.timeout(180)
async def test_start_session_with_options_returns_publishes_and_serves_them(
    http: httpx.AsyncClient, kafka_bootstrap: str, options_topics: Topics
) -> None:
    response = await http.post(
        "/api/live/start-session",
        data={"source_url": SOURCE, "name": "door", "min_frames": "3", "severity_high": "0.7"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = AnalysisOptions(min_frames=3, severity_high=0.7)
    assert body["options"] == expected.model_dump()
    assert AnalysisOptions.model_validate(body["options"]) == expected

    command = await published_start(kafka_bootstrap, options_topics, body["session_id"])
    assert command.options == expected

    session = await session_body(http, body["stream_id"], body["session_id"])
    assert session.get("options") == expected.model_dump(), session


@pytest.mark.kafka
@pytest.mark.timeout(180)
async def test_start_session_without_options_has_null_options(
    http: httpx.AsyncClient, kafka_bootstrap: str, options_topics: Topics
) -> None:
    response = await http.post("/api/live/start-session", data={"source_url": SOURCE, "name": "door"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "options" in body and body["options"] is None

    command = await published_start(kafka_bootstrap, options_topics, body["session_id"])
    assert command.options is None

    session = await session_body(http, body["stream_id"], body["session_id"])
    assert session.get("options") is None


@pytest.mark.kafka
@pytest.mark.timeout(180)
async def test_invalid_options_are_refused_with_kafka_up_too(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/api/live/start-session",
        data={"source_url": SOURCE, "name": "door", "severity_medium": "0.9", "severity_high": "0.5"},
    )
    assert response.status_code == 422
    assert "severity_medium (0.9) must not exceed severity_high (0.5)" in response.text
