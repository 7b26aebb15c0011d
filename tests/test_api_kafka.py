"""The API against a real broker: the test plays the aggregator by producing SessionState
records and Events directly, and reads the commands the API produces.

The app runs under uvicorn in a background thread (its own event loop), reached over HTTP
with httpx and with the real ``nomadic`` SDK.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from nomadic import NomadicAI
from nomadic.exceptions import APIError, AuthenticationError

from api.app import create_app
from api.auth import key_fingerprint
from api.settings import ApiSettings
from livestream.kafka.serde import decode_command, encode_key, encode_value
from livestream.kafka.testing import create_test_topics
from schemas.records import EndSession, Event, SessionState, SessionStatus, Severity, StartSession
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

API_KEY = "kafka-test-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
WAIT_S = 15.0
T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, within_s: float = WAIT_S) -> T:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + within_s
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def make_event(session_id: str, stream_id: str, event_id: str, start: float = 1.0) -> Event:
    return Event(
        event_id=event_id,
        session_id=session_id,
        stream_id=stream_id,
        type="detection",
        label="person",
        description=f"a person ({event_id})",
        severity=Severity.HIGH,
        confidence=0.8,
        stream_time=start,
        start_time=start,
        end_time=start + 1,
        capture_time=datetime.now(UTC),
        chunk_index=0,
        chunk_relative_time=start,
        hls_cumulative_offset=0.0,
        t_start="00:01",
        t_end="00:02",
        analysis_id="analysis-1",
        chunk_id=f"{session_id}-c000000",
    )


class Aggregator:
    """Stands in for the aggregator: publishes session states and events."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics) -> None:
        self._producer = producer
        self._topics = topics

    async def publish_state(
        self,
        session_id: str,
        stream_id: str,
        status: SessionStatus,
        events: list[Event] | None = None,
        created_at: datetime | None = None,
        created_by: str | None = None,
    ) -> SessionState:
        now = datetime.now(UTC)
        state = SessionState(
            stream_id=stream_id,
            session_id=session_id,
            name=f"cam {session_id[:6]}",
            source_url="https://example.com/live.m3u8",
            status=status,
            created_by=created_by,
            created_at=created_at or now,
            updated_at=now,
            events=events or [],
            ended_at=now if status.terminal else None,
        )
        await self._producer.send_and_wait(
            self._topics.session_state, key=encode_key(session_id), value=encode_value(state)
        )
        return state

    async def publish_event(self, event: Event) -> None:
        await self._producer.send_and_wait(
            self._topics.events, key=encode_key(event.session_id), value=encode_value(event)
        )


class CommandReader:
    """Reads the commands topic from the beginning, collecting the commands the API produced."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._seen: list[StartSession | EndSession] = []

    async def wait_for(self, session_id: str, kind: str) -> StartSession | EndSession:
        return await self.wait_matching(lambda c: c.session_id == session_id and c.kind == kind)

    async def wait_matching(
        self, matches: Callable[[StartSession | EndSession], bool]
    ) -> StartSession | EndSession:
        async def probe() -> StartSession | EndSession | None:
            batches = await self._consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    command = decode_command(record.value, topic=record.topic, offset=record.offset)
                    assert record.key == encode_key(command.session_id)
                    self._seen.append(command)
            return next((command for command in self._seen if matches(command)), None)

        return await eventually(probe, "a matching command")


class ApiServer:
    """uvicorn serving the app in a thread; ``base_url`` once it is listening."""

    def __init__(self, settings: ApiSettings) -> None:
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api-under-test", daemon=True)
        self.base_url = ""

    async def start(self) -> None:
        self._thread.start()
        await eventually(self._listening, "uvicorn to listen", within_s=60)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"

    async def _listening(self) -> bool:
        if not self._thread.is_alive():
            raise AssertionError("the API server thread died during startup")
        return self._server.started

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def api_topics(kafka_bootstrap: str) -> Topics:
    return await create_test_topics(kafka_bootstrap)


@pytest.fixture(scope="module")
async def aggregator(kafka_bootstrap: str, api_topics: Topics) -> AsyncIterator[Aggregator]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    yield Aggregator(producer, api_topics)
    await producer.stop()


@pytest.fixture(scope="module")
async def preexisting(aggregator: Aggregator) -> SessionState:
    """A session published before the API starts: the view must replay it."""
    return await aggregator.publish_state(
        uuid.uuid4().hex,
        "stream-pre",
        SessionStatus.ACTIVE,
        events=[make_event("x", "stream-pre", "pre-event")],
        created_at=datetime.now(UTC) - timedelta(hours=1),
    )


@pytest.fixture(scope="module")
async def api(
    kafka_bootstrap: str, api_topics: Topics, preexisting: SessionState
) -> AsyncIterator[ApiServer]:
    settings = ApiSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=api_topics.prefix,
        keys=f"{API_KEY},other-key",
        sse_ping_seconds=1,
    )
    server = ApiServer(settings)
    await server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def http(api: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.base_url, headers=HEADERS, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
async def commands(kafka_bootstrap: str, api_topics: Topics) -> AsyncIterator[CommandReader]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    partitions = [TopicPartition(api_topics.session_commands, p) for p in range(api_topics.partitions)]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    yield CommandReader(consumer)
    await consumer.stop()


async def start_session(http: httpx.AsyncClient, **form: str) -> dict[str, str]:
    data = {"source_url": "https://example.com/live.m3u8", "name": "cam", **form}
    response = await http.post("/api/live/start-session", data=data)
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------- tests


async def test_healthy_after_catching_up_with_preexisting_state(
    http: httpx.AsyncClient, preexisting: SessionState
) -> None:
    async def healthy() -> dict | None:
        response = await http.get("/healthz", headers={})
        return response.json() if response.status_code == 200 else None

    health = await eventually(healthy, "/healthz to be ok")
    assert health["session_view_caught_up"] and health["kafka_clients_started"]
    # Caught up means the state published before startup is already served.
    response = await http.get(f"/api/live/live-sessions/stream-pre/{preexisting.session_id}")
    assert response.status_code == 200
    assert response.json() == preexisting.model_dump(mode="json")


async def test_start_session_produces_command_and_reads_own_write(
    http: httpx.AsyncClient, commands: CommandReader
) -> None:
    started = await start_session(
        http, name="Highway cam", rapid_review_query="detect a person", stream_id="s-1"
    )
    assert started["stream_id"] == "s-1" and started["status"] == "INITIALIZING"
    assert len(started["session_id"]) == 32 and int(started["session_id"], 16) >= 0

    # Served at once from the pending overlay, before any aggregator state exists.
    response = await http.get(f"/api/live/live-sessions/s-1/{started['session_id']}")
    assert response.status_code == 200
    session = response.json()
    assert session["status"] == "INITIALIZING"
    assert (session["name"], session["rapid_review_query"]) == ("Highway cam", "detect a person")
    assert session["created_by"] == key_fingerprint(API_KEY)
    assert API_KEY not in response.text

    command = await commands.wait_for(started["session_id"], "start")
    assert isinstance(command, StartSession)
    assert (command.stream_id, command.name, command.source_url) == (
        "s-1",
        "Highway cam",
        "https://example.com/live.m3u8",
    )
    assert command.rapid_review_query == "detect a person"
    assert command.created_by == key_fingerprint(API_KEY)

    generated = await start_session(http)
    assert generated["stream_id"] and generated["stream_id"] != generated["session_id"]


async def test_state_updates_show_up_and_sessions_list_newest_first(
    http: httpx.AsyncClient, aggregator: Aggregator, preexisting: SessionState
) -> None:
    started = await start_session(http, stream_id="s-2")
    session_id = started["session_id"]
    await aggregator.publish_state(
        session_id, "s-2", SessionStatus.ACTIVE, [make_event(session_id, "s-2", "e1")]
    )

    async def active() -> dict | None:
        session = (await http.get(f"/api/live/live-sessions/s-2/{session_id}")).json()
        return session if session["status"] == "ACTIVE" else None

    session = await eventually(active, "the ACTIVE state")
    assert [event["event_id"] for event in session["events"]] == ["e1"]

    sessions = (await http.get("/api/live/live-sessions", params={"scope": "org"})).json()["sessions"]
    ids = [s["session_id"] for s in sessions]
    assert ids.index(session_id) < ids.index(preexisting.session_id)
    created = [s["created_at"] for s in sessions]
    assert created == sorted(created, reverse=True)
    # "personal" keeps only sessions started with the caller's key.
    personal = (await http.get("/api/live/live-sessions", params={"scope": "personal"})).json()["sessions"]
    assert preexisting.session_id not in {s["session_id"] for s in personal}
    other = await http.get(
        "/api/live/live-sessions", params={"scope": "personal"}, headers={"Authorization": "Bearer other-key"}
    )
    assert other.json()["sessions"] == []

    assert (await http.get(f"/api/live/live-sessions/wrong-stream/{session_id}")).status_code == 404
    assert (await http.get(f"/api/live/live-sessions/s-2/{uuid.uuid4().hex}")).status_code == 404


async def test_end_session_semantics(
    http: httpx.AsyncClient, aggregator: Aggregator, commands: CommandReader
) -> None:
    unknown = await http.post("/api/live/end-session", data={"stream_id": "s-3", "session_id": "nope"})
    assert unknown.status_code == 404

    started = await start_session(http, stream_id="s-3")
    session_id = started["session_id"]
    wrong_stream = await http.post(
        "/api/live/end-session", data={"stream_id": "s-x", "session_id": session_id}
    )
    assert wrong_stream.status_code == 404
    not_owner = await http.post(
        "/api/live/end-session",
        data={"stream_id": "s-3", "session_id": session_id},
        headers={"Authorization": "Bearer other-key"},
    )
    assert not_owner.status_code == 403 and "only the API key that started" in not_owner.json()["detail"]

    ended = await http.post("/api/live/end-session", data={"stream_id": "s-3", "session_id": session_id})
    assert ended.json() == {"status": "ended"}
    command = await commands.wait_for(session_id, "end")
    assert isinstance(command, EndSession) and command.stream_id == "s-3"
    # Read-your-writes: ENDING until the aggregator confirms, and a second end is a no-op.
    session = (await http.get(f"/api/live/live-sessions/s-3/{session_id}")).json()
    assert session["status"] == "ENDING"
    again = await http.post("/api/live/end-session", data={"stream_id": "s-3", "session_id": session_id})
    assert again.json() == {"status": "already_ended"}

    finished_id = uuid.uuid4().hex
    await aggregator.publish_state(finished_id, "s-3", SessionStatus.FINISHED)

    async def finished_visible() -> bool:
        return (await http.get(f"/api/live/live-sessions/s-3/{finished_id}")).status_code == 200

    await eventually(finished_visible, "the FINISHED session")
    done = await http.post("/api/live/end-session", data={"stream_id": "s-3", "session_id": finished_id})
    assert done.json() == {"status": "already_ended"}


async def read_sse(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """Parse a text/event-stream body into messages, skipping comments (pings)."""
    message: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if message:
                yield message
            message = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            message[field] = value.removeprefix(" ")


async def test_sse_feed_replays_streams_and_ends(
    api: ApiServer, http: httpx.AsyncClient, aggregator: Aggregator
) -> None:
    session_id, stream_id = uuid.uuid4().hex, "s-4"
    replayed = make_event(session_id, stream_id, "e1")
    await aggregator.publish_state(session_id, stream_id, SessionStatus.ACTIVE, [replayed])

    async def visible() -> bool:
        return (await http.get(f"/api/live/live-sessions/{stream_id}/{session_id}")).status_code == 200

    await eventually(visible, "the session")
    missing = await http.get(f"/api/live/live-sessions/{stream_id}/{uuid.uuid4().hex}/events/stream")
    assert missing.status_code == 404

    url = f"{api.base_url}/api/live/live-sessions/{stream_id}/{session_id}/events/stream"
    live_event = make_event(session_id, stream_id, "e2", start=5.0)
    late_event = make_event(session_id, stream_id, "e3", start=9.0)
    received: list[dict[str, str]] = []
    # The browser page authenticates with ?api_key= (EventSource cannot set headers).
    async with (
        httpx.AsyncClient(timeout=WAIT_S) as browser,
        browser.stream("GET", url, params={"api_key": API_KEY}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = read_sse(response)
        received.append(await anext(messages))  # the replay proves the subscription is live
        await aggregator.publish_event(replayed)  # a duplicate: not delivered again
        await aggregator.publish_event(live_event)
        received.append(await anext(messages))
        # The terminal state carries an event this feed has not seen on the events topic.
        await aggregator.publish_state(
            session_id, stream_id, SessionStatus.FINISHED, [replayed, live_event, late_event]
        )
        received.extend([message async for message in messages])

    assert [(m["event"], m.get("id")) for m in received] == [
        ("detection", "e1"),
        ("detection", "e2"),
        ("detection", "e3"),
        ("end", None),
    ]
    assert Event.model_validate_json(received[1]["data"]) == live_event
    assert json.loads(received[3]["data"])["status"] == "FINISHED"


def sdk_client(base_url: str, api_key: str = API_KEY) -> NomadicAI:
    return NomadicAI(api_key=api_key, base_url=base_url)


def sdk_start_and_read(base_url: str) -> tuple[dict, dict, list[str]]:
    """The SDK's own calls, unchanged (blocking: run in a worker thread)."""
    livestream = sdk_client(base_url).livestream
    started = livestream.start_session(
        source_url="https://example.com/live.m3u8", name="SDK cam", rapid_review_query="detect a person"
    )
    first = livestream.get_session(started["stream_id"], started["session_id"])
    listed = [s["session_id"] for s in livestream.get_sessions()]
    return started, first, listed


def sdk_follow_and_end(base_url: str, stream_id: str, session_id: str) -> tuple[list[str], dict, dict]:
    livestream = sdk_client(base_url).livestream
    events = [e["event_id"] for e in livestream.iter_events(stream_id, session_id, poll_interval=0.2)]
    final = livestream.get_session(stream_id, session_id)
    return events, final, livestream.end_session(stream_id, session_id)


async def test_nomadic_sdk_works_unchanged(
    api: ApiServer, aggregator: Aggregator, commands: CommandReader
) -> None:
    started, first, listed = await asyncio.to_thread(sdk_start_and_read, api.base_url)
    session_id, stream_id = started["session_id"], started["stream_id"]
    assert started == {"session_id": session_id, "stream_id": stream_id, "status": "INITIALIZING"}
    assert first["status"] == "INITIALIZING" and first["name"] == "SDK cam"
    assert session_id in listed
    command = await commands.wait_for(session_id, "start")
    assert command.rapid_review_query == "detect a person"  # type: ignore[union-attr]

    follow = asyncio.ensure_future(asyncio.to_thread(sdk_follow_and_end, api.base_url, stream_id, session_id))
    first_event = make_event(session_id, stream_id, "sdk-1")
    await aggregator.publish_state(session_id, stream_id, SessionStatus.ACTIVE, [first_event])
    await asyncio.sleep(0.5)  # iter_events polls the ACTIVE state at least once
    assert not follow.done()
    second_event = make_event(session_id, stream_id, "sdk-2", start=4.0)
    await aggregator.publish_state(session_id, stream_id, SessionStatus.FINISHED, [first_event, second_event])
    events, final, end = await asyncio.wait_for(follow, timeout=WAIT_S)
    assert events == ["sdk-1", "sdk-2"]
    assert final["status"] == "FINISHED"
    assert end == {"status": "already_ended"}

    with pytest.raises(APIError) as not_found:
        await asyncio.to_thread(sdk_client(api.base_url).livestream.get_session, stream_id, uuid.uuid4().hex)
    assert not_found.value.status_code == 404
    with pytest.raises(AuthenticationError, match="invalid API key"):
        await asyncio.to_thread(sdk_client(api.base_url, "wrong").livestream.get_sessions)
