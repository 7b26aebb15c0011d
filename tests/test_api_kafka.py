"""The API against a real broker: the test plays the aggregator by producing SessionHeader,
SessionChunk and SessionEvent records (and tombstones) and reads the commands the API produces.

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
from fastapi import FastAPI
from nomadic import NomadicAI
from nomadic.exceptions import APIError, AuthenticationError

from api.app import create_app
from api.auth import key_fingerprint
from api.sessions import INTERNAL_HEADER_FIELDS
from api.settings import ApiSettings
from api.store import StoreWorker
from livestream.kafka.serde import decode_command, encode_key, encode_value, session_partition
from livestream.kafka.testing import create_test_topics
from schemas.records import (
    ChunkSummary,
    EndSession,
    Event,
    EventLifecycle,
    SessionChunk,
    SessionEvent,
    SessionHeader,
    SessionStatus,
    Severity,
    StartSession,
    chunk_record_key,
    event_record_key,
)
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

API_KEY = "kafka-test-key-0123456789"
OTHER_KEY = "other-key-0123456789abcd"  # the same (default) tenant as API_KEY
PAGING_KEY = "paging-key-0123456789abc"
GLOBEX_KEY = "globex-key-0123456789abc"  # another tenant
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


def make_event(
    session_id: str, stream_id: str, event_id: str, start: float = 1.0, end: float | None = None
) -> Event:
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
        end_time=start + 1 if end is None else end,
        capture_time=start,
        captured_at=datetime.now(UTC),
        chunk_index=int(start // 4),
        chunk_relative_time=start % 4,
        hls_cumulative_offset=0.0,
        t_start="00:01",
        t_end="00:02",
        analysis_id="analysis-1",
        chunk_id=f"{session_id}-c000000",
    )


def version(
    session_id: str,
    stream_id: str,
    number: int,
    cursor: int,
    lifecycle: EventLifecycle = "opened",
    *,
    start: float | None = None,
    end: float | None = None,
) -> SessionEvent:
    start_time = float(number) if start is None else start
    return SessionEvent(
        session_id=session_id,
        stream_id=stream_id,
        number=number,
        cursor=cursor,
        lifecycle=lifecycle,
        event=make_event(session_id, stream_id, f"{session_id[:6]}-e{number}", start_time, end),
    )


def chunk(session_id: str, stream_id: str, index: int) -> SessionChunk:
    summary = ChunkSummary(
        chunk_id=f"{session_id}-c{index:06d}",
        chunk_index=index,
        start_time=4.0 * index,
        end_time=4.0 * (index + 1),
        status="ok",
        event_count=0,
        analysis_id=f"analysis-{index}",
    )
    return SessionChunk(session_id=session_id, stream_id=stream_id, chunk=summary)


class Aggregator:
    """Stands in for the aggregator: publishes headers, chunks, event versions and tombstones."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics) -> None:
        self._producer = producer
        self._topics = topics

    def _partition(self, session_id: str) -> int:
        return session_partition(session_id, self._topics.partitions)

    async def header(
        self,
        session_id: str,
        stream_id: str,
        status: SessionStatus,
        *,
        cursor: int = 0,
        events_cursor: int = 0,
        event_count: int = 0,
        created_at: datetime | None = None,
        created_by: str | None = None,
        tenant: str | None = None,
    ) -> SessionHeader:
        now = datetime.now(UTC)
        header = SessionHeader(
            stream_id=stream_id,
            session_id=session_id,
            name=f"cam {session_id[:6]}",
            source_url="https://example.com/live.m3u8",
            status=status,
            created_by=created_by,
            tenant=tenant,
            created_at=created_at or now,
            updated_at=now,
            ended_at=now if status.terminal else None,
            cursor=cursor,
            events_cursor=events_cursor,
            event_count=event_count,
        )
        await self._producer.send_and_wait(
            self._topics.session_state, key=encode_key(session_id), value=encode_value(header)
        )
        return header

    async def events(self, *versions: SessionEvent) -> None:
        """Produce the versions in order (one session's records stay in its partition) and wait for acks."""
        sent = [
            await self._producer.send(
                self._topics.session_events,
                key=event_record_key(v.session_id, v.number).encode(),
                value=encode_value(v),
                partition=self._partition(v.session_id),
            )
            for v in versions
        ]
        await asyncio.gather(*sent)

    async def chunks(self, *records: SessionChunk) -> None:
        sent = [
            await self._producer.send(
                self._topics.session_chunks,
                key=chunk_record_key(r.session_id, r.chunk.chunk_index).encode(),
                value=encode_value(r),
                partition=self._partition(r.session_id),
            )
            for r in records
        ]
        await asyncio.gather(*sent)

    async def purge_header(self, session_id: str) -> None:
        """The header's tombstone only: the API must not wait for the chunk and event tombstones."""
        await self._producer.send_and_wait(self._topics.session_state, key=encode_key(session_id), value=None)

    async def event_tombstone(self, session_id: str, number: int) -> None:
        await self._producer.send_and_wait(
            self._topics.session_events,
            key=event_record_key(session_id, number).encode(),
            value=None,
            partition=self._partition(session_id),
        )


class CommandReader:
    """Reads the commands topic from the beginning, collecting the commands the API produced."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._seen: list[StartSession | EndSession] = []

    async def _poll(self) -> None:
        batches = await self._consumer.getmany(timeout_ms=100)
        for records in batches.values():
            for record in records:
                command = decode_command(record.value, topic=record.topic, offset=record.offset)
                assert record.key == encode_key(command.session_id)
                self._seen.append(command)

    async def wait_for(self, session_id: str, kind: str, count: int = 1) -> StartSession | EndSession:
        """The ``count``-th command of ``kind`` for the session, once it was produced."""

        async def probe() -> StartSession | EndSession | None:
            await self._poll()
            matching = [c for c in self._seen if c.session_id == session_id and c.kind == kind]
            return matching[count - 1] if len(matching) >= count else None

        return await eventually(probe, f"{count} {kind} command(s)")


class ApiServer:
    """uvicorn serving the app in a thread; ``base_url`` once it is listening."""

    def __init__(self, settings: ApiSettings) -> None:
        self.app: FastAPI = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2
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

    @property
    def store(self) -> StoreWorker:
        """The app's store; its calls run on the store's own thread, so any event loop may await them."""
        return self.app.state.runtime.sessions.store

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def api_topics(kafka_bootstrap: str) -> Topics:
    return await create_test_topics(kafka_bootstrap)


@pytest.fixture(scope="module")
async def aggregator(kafka_bootstrap: str, api_topics: Topics) -> AsyncIterator[Aggregator]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    yield Aggregator(producer, api_topics)
    await producer.stop()


@pytest.fixture(scope="module")
async def preexisting(aggregator: Aggregator) -> SessionHeader:
    """A session published before the API starts: the store must replay it from all three topics."""
    session_id = uuid.uuid4().hex
    await aggregator.events(
        version(session_id, "stream-pre", 0, 1, start=8.0),
        version(session_id, "stream-pre", 1, 2, start=2.0),
        version(session_id, "stream-pre", 0, 3, "updated", start=8.0, end=12.0),
    )
    await aggregator.chunks(*(chunk(session_id, "stream-pre", i) for i in range(3)))
    return await aggregator.header(
        session_id,
        "stream-pre",
        SessionStatus.ACTIVE,
        cursor=3,
        events_cursor=3,
        event_count=2,
        created_at=datetime.now(UTC) - timedelta(hours=1),
    )


@pytest.fixture(scope="module")
async def api(
    kafka_bootstrap: str, api_topics: Topics, preexisting: SessionHeader
) -> AsyncIterator[ApiServer]:
    settings = ApiSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=api_topics.prefix,
        keys=f"{API_KEY},{OTHER_KEY},{PAGING_KEY}",
        tenants=json.dumps({"globex": [GLOBEX_KEY]}),
        sse_ping_seconds=1,
    )
    server = ApiServer(settings)
    await server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def http(api: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.base_url, headers=HEADERS, timeout=30) as client:
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
    if "stream_id" in form:
        # start-session accepts only a stream of the caller's tenant: attach it first.
        attached = await http.post(
            "/api/live/attach-stream",
            data={"stream_id": form["stream_id"], "stream_name": "cam", "source_url": data["source_url"]},
        )
        assert attached.json() == {"ok": True}, attached.text
    response = await http.post("/api/live/start-session", data=data)
    assert response.status_code == 200, response.text
    return response.json()


async def wait_visible(http: httpx.AsyncClient, stream_id: str, session_id: str, **expect: object) -> dict:
    """The session once get_session shows it with every ``expect``ed field value."""

    async def probe() -> dict | None:
        response = await http.get(f"/api/live/live-sessions/{stream_id}/{session_id}")
        if response.status_code != 200:
            return None
        body = response.json()
        return body if all(body.get(name) == value for name, value in expect.items()) else None

    return await eventually(probe, f"session {session_id} with {expect}")


# --------------------------------------------------------------------------- tests


async def test_healthy_after_catching_up_with_preexisting_records(
    http: httpx.AsyncClient, preexisting: SessionHeader
) -> None:
    async def healthy() -> dict | None:
        response = await http.get("/healthz", headers={})
        return response.json() if response.status_code == 200 else None

    health = await eventually(healthy, "/healthz to be ok")
    assert health["session_view_caught_up"] and health["kafka_clients_started"]
    assert health["sessions"] >= 1 and health["sessions_in_memory"] >= 1
    # Caught up means what all three topics held before startup is already served.
    response = await http.get(f"/api/live/live-sessions/stream-pre/{preexisting.session_id}")
    assert response.status_code == 200
    body = response.json()
    served = preexisting.model_dump(mode="json", exclude=INTERNAL_HEADER_FIELDS)
    assert {k: body[k] for k in served} == served
    assert not INTERNAL_HEADER_FIELDS & body.keys()
    assert [(e["event_id"], e["end_time"]) for e in body["events"]] == [
        (f"{preexisting.session_id[:6]}-e1", 3.0),
        (f"{preexisting.session_id[:6]}-e0", 12.0),  # its latest version, ordered by start time
    ]
    assert [c["chunk_index"] for c in body["chunks"]] == [0, 1, 2]
    assert (body["events_total"], body["chunks_total"]) == (2, 3)


async def test_start_session_produces_command_and_reads_own_write(
    http: httpx.AsyncClient, commands: CommandReader
) -> None:
    started = await start_session(
        http, name="Highway cam", rapid_review_query="detect a person", stream_id="s-1"
    )
    assert started["stream_id"] == "s-1" and started["status"] == "INITIALIZING"
    assert len(started["session_id"]) == 32 and int(started["session_id"], 16) >= 0

    # Served at once from the pending overlay, before any aggregator header exists.
    response = await http.get(f"/api/live/live-sessions/s-1/{started['session_id']}")
    assert response.status_code == 200
    session = response.json()
    assert session["status"] == "INITIALIZING" and session["events"] == []
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


async def test_sessions_are_paged_newest_first_with_stable_cursors(
    http: httpx.AsyncClient, aggregator: Aggregator, preexisting: SessionHeader
) -> None:
    owner = key_fingerprint(PAGING_KEY)
    base = datetime.now(UTC) - timedelta(minutes=30)
    ids = [uuid.uuid4().hex for _ in range(7)]
    for index, session_id in enumerate(ids):
        await aggregator.header(
            session_id,
            "s-page",
            SessionStatus.ACTIVE,
            created_at=base + timedelta(seconds=index),
            created_by=owner,
        )
    await aggregator.events(version(ids[0], "s-page", 0, 1))
    await wait_visible(http, "s-page", ids[-1])
    mine = {"Authorization": f"Bearer {PAGING_KEY}"}

    pages, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        body = (await http.get("/api/live/live-sessions", params=params, headers=mine)).json()
        pages.append([s["session_id"] for s in body["sessions"]])
        assert all("events" not in s and "chunks" not in s for s in body["sessions"])  # summaries
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # A session starting meanwhile is newer: it never shifts the later pages.
        await aggregator.header(uuid.uuid4().hex, "s-page", SessionStatus.INITIALIZING, created_by=owner)
    assert pages == [ids[6:3:-1], ids[3:0:-1], ids[0:1]]

    full = (
        await http.get(
            "/api/live/live-sessions", params={"limit": 1000, "include_events": "true"}, headers=mine
        )
    ).json()
    oldest = full["sessions"][-1]
    assert oldest["session_id"] == ids[0] and [e["event_id"] for e in oldest["events"]] == [
        f"{ids[0][:6]}-e0"
    ]

    # Scopes: "personal" (the default, as the SDK documents) keeps the caller's own sessions.
    everyone = (await http.get("/api/live/live-sessions", params={"scope": "org", "limit": 1000})).json()
    listed = [s["session_id"] for s in everyone["sessions"]]
    assert listed.index(ids[0]) < listed.index(preexisting.session_id)
    created = [s["created_at"] for s in everyone["sessions"]]
    assert created == sorted(created, reverse=True)
    personal = (await http.get("/api/live/live-sessions")).json()["sessions"]
    assert not {s["session_id"] for s in personal} & {*ids, preexisting.session_id}
    other = await http.get("/api/live/live-sessions", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert other.json() == {"sessions": [], "next_cursor": None}
    bad = await http.get("/api/live/live-sessions", params={"cursor": "not-ours"})
    assert bad.status_code == 422

    assert (await http.get(f"/api/live/live-sessions/wrong-stream/{ids[0]}")).status_code == 404
    assert (await http.get(f"/api/live/live-sessions/s-page/{uuid.uuid4().hex}")).status_code == 404


async def test_get_session_serves_ten_thousand_events_and_pages(
    api: ApiServer, http: httpx.AsyncClient, aggregator: Aggregator
) -> None:
    session_id, stream_id, total = uuid.uuid4().hex, "s-big", 10_000
    # Opened in cursor order; start times run backwards so the two orders differ.
    await aggregator.events(
        *(version(session_id, stream_id, n, n + 1, start=float(total - n)) for n in range(total))
    )
    await aggregator.chunks(*(chunk(session_id, stream_id, i) for i in range(1500)))
    await aggregator.header(
        session_id, stream_id, SessionStatus.ACTIVE, cursor=total, events_cursor=total, event_count=total
    )

    async def all_stored() -> bool:
        return (await api.store.row_counts(session_id)) == (1, 1500, total)

    await eventually(all_stored, "10,000 events in the store", within_s=60)
    began = time.monotonic()
    response = await http.get(f"/api/live/live-sessions/{stream_id}/{session_id}")
    elapsed = time.monotonic() - began
    assert response.status_code == 200
    body = response.json()
    assert len(body["events"]) == total == body["events_total"]
    assert [e["start_time"] for e in body["events"][:3]] == [1.0, 2.0, 3.0]
    # The chunks page defaults to the most recent 1000.
    assert [c["chunk_index"] for c in body["chunks"]] == list(range(500, 1500)) and body[
        "chunks_total"
    ] == 1500
    assert elapsed < 10, f"get_session took {elapsed:.1f}s"

    # The SDK's get_session reads the same (blocking: in a worker thread).
    sdk = await asyncio.to_thread(sdk_client(api.base_url).livestream.get_session, stream_id, session_id)
    assert len(sdk["events"]) == total

    page = (
        await http.get(
            f"/api/live/live-sessions/{stream_id}/{session_id}",
            params={"events_after": 100, "events_limit": 50, "chunks_after": 1400, "chunks_limit": 60},
        )
    ).json()
    assert [e["event_id"] for e in page["events"]] == [f"{session_id[:6]}-e{n}" for n in range(100, 150)]
    assert page["events_next_cursor"] == 150
    assert [c["chunk_index"] for c in page["chunks"]] == list(range(1401, 1461)) and page[
        "chunks_next_after"
    ] == 1460

    events_url = f"/api/live/live-sessions/{stream_id}/{session_id}/events"
    first = (await http.get(events_url)).json()
    assert len(first["events"]) == 100 and first["next_cursor"] == 100
    assert SessionEvent.model_validate(first["events"][0]).cursor == 1
    late = (await http.get(events_url, params={"after": total - 2, "limit": 1000})).json()
    assert [e["cursor"] for e in late["events"]] == [total - 1, total] and late["next_cursor"] == total
    assert (await http.get(events_url, params={"after": total})).json() == {"events": [], "next_cursor": None}
    assert (await http.get(f"/api/live/live-sessions/{stream_id}/nope/events")).status_code == 404


async def test_end_session_semantics_and_resend_while_ending(
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
        headers={"Authorization": f"Bearer {OTHER_KEY}"},
    )
    assert not_owner.status_code == 403 and "only the API key that started" in not_owner.json()["detail"]

    ended = await http.post("/api/live/end-session", data={"stream_id": "s-3", "session_id": session_id})
    assert ended.json() == {"status": "ended"}
    command = await commands.wait_for(session_id, "end")
    assert isinstance(command, EndSession) and command.stream_id == "s-3"
    # Read-your-writes: ENDING until the aggregator confirms; ending again re-sends the command
    # (the first one may have been lost and the source still running).
    assert (await http.get(f"/api/live/live-sessions/s-3/{session_id}")).json()["status"] == "ENDING"
    again = await http.post("/api/live/end-session", data={"stream_id": "s-3", "session_id": session_id})
    assert again.json() == {"status": "ended"}
    await commands.wait_for(session_id, "end", count=2)

    # ENDING as published by the aggregator: the same.
    owner = key_fingerprint(API_KEY)
    ending_id = uuid.uuid4().hex
    await aggregator.header(ending_id, "s-3", SessionStatus.ENDING, cursor=1, created_by=owner)
    await wait_visible(http, "s-3", ending_id, status="ENDING")
    resent = await http.post("/api/live/end-session", data={"stream_id": "s-3", "session_id": ending_id})
    assert resent.json() == {"status": "ended"}
    await commands.wait_for(ending_id, "end")

    await aggregator.header(ending_id, "s-3", SessionStatus.FINISHED, cursor=2, created_by=owner)
    await wait_visible(http, "s-3", ending_id, status="FINISHED")
    done = await http.post("/api/live/end-session", data={"stream_id": "s-3", "session_id": ending_id})
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


def ids(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(m["event"], m["id"]) for m in messages]


async def collect_sse(
    url: str, count: int | None = None, *, headers: dict[str, str] | None = None, params: dict | None = None
) -> list[dict[str, str]]:
    """``count`` messages of the feed (or all of them, until the server closes it)."""
    async with (
        httpx.AsyncClient(timeout=WAIT_S, headers=HEADERS) as client,
        client.stream("GET", url, headers=headers, params=params) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received: list[dict[str, str]] = []
        async for message in read_sse(response):
            received.append(message)
            if count is not None and len(received) == count:
                break
        return received


async def test_sse_feed_resumes_exactly_and_ends_after_the_last_event(
    api: ApiServer, http: httpx.AsyncClient, aggregator: Aggregator
) -> None:
    session_id, stream_id = uuid.uuid4().hex, "s-4"
    await aggregator.events(*(version(session_id, stream_id, n, n + 1) for n in range(3)))
    await aggregator.header(session_id, stream_id, SessionStatus.ACTIVE, cursor=3, events_cursor=3)
    await wait_visible(http, stream_id, session_id, status="ACTIVE")
    missing = await http.get(f"/api/live/live-sessions/{stream_id}/{uuid.uuid4().hex}/events/stream")
    assert missing.status_code == 404

    url = f"{api.base_url}/api/live/live-sessions/{stream_id}/{session_id}/events/stream"
    # The browser page authenticates with ?api_key= (EventSource cannot set headers).
    async with (
        httpx.AsyncClient(timeout=WAIT_S) as browser,
        browser.stream("GET", url, params={"api_key": API_KEY}) as response,
    ):
        messages = read_sse(response)
        first = [await anext(messages) for _ in range(3)]
        await aggregator.events(
            version(session_id, stream_id, 1, 4, "updated"), version(session_id, stream_id, 3, 5)
        )
        first += [await anext(messages) for _ in range(2)]
    assert ids(first) == [
        ("detection", "1"),
        ("detection", "2"),
        ("detection", "3"),
        ("update", "4"),
        ("detection", "5"),
    ]
    data = json.loads(first[3]["data"])
    assert (data["event_id"], data["number"], data["lifecycle"], data["cursor"]) == (
        f"{session_id[:6]}-e1",
        1,
        "updated",
        4,
    )
    assert Event.model_validate(data).event_id == data["event_id"]  # the data is an Event, plus feed fields

    # While the client is away: more versions, then a terminal header *before* the last version.
    await aggregator.events(
        version(session_id, stream_id, 0, 6, "closed"), version(session_id, stream_id, 4, 7)
    )
    await aggregator.header(
        session_id, stream_id, SessionStatus.FINISHED, cursor=9, events_cursor=8, event_count=5
    )
    await wait_visible(http, stream_id, session_id, status="FINISHED")

    resuming = asyncio.ensure_future(collect_sse(url, headers={"Last-Event-ID": "5"}))
    await asyncio.sleep(0.5)
    assert not resuming.done()  # no end before the version with cursor 8
    await aggregator.events(version(session_id, stream_id, 3, 8, "closed"))
    resumed = await asyncio.wait_for(resuming, WAIT_S)
    assert ids(resumed) == [("update", "6"), ("detection", "7"), ("update", "8"), ("end", "9")]
    assert json.loads(resumed[-1]["data"]) == {
        "session_id": session_id,
        "stream_id": stream_id,
        "status": "FINISHED",
        "status_reason": None,
    }

    # Exactly the latest version of each event written after the id, in cursor order.
    assert ids(await collect_sse(url, headers={"Last-Event-ID": "2"})) == [
        ("detection", "3"),
        ("update", "4"),
        ("update", "6"),
        ("detection", "7"),
        ("update", "8"),
        ("end", "9"),
    ]
    # An id the session never reached, or no cursor at all: one resync, then the current state.
    for params in ({"last_event_id": "50"}, {"last_event_id": "abc"}):
        resynced = await collect_sse(url, params=params)
        assert ids(resynced) == [("resync", "8"), ("end", "9")]
        assert json.loads(resynced[0]["data"])["session_id"] == session_id


async def test_purge_tombstone_removes_the_session_everywhere(
    api: ApiServer, http: httpx.AsyncClient, aggregator: Aggregator
) -> None:
    session_id, stream_id = uuid.uuid4().hex, "s-5"
    await aggregator.events(*(version(session_id, stream_id, n, n + 1) for n in range(3)))
    await aggregator.chunks(*(chunk(session_id, stream_id, i) for i in range(2)))
    await aggregator.header(session_id, stream_id, SessionStatus.FINISHED, cursor=4, events_cursor=3)
    await wait_visible(http, stream_id, session_id, events_total=3, chunks_total=2)

    url = f"{api.base_url}/api/live/live-sessions/{stream_id}/{session_id}/events/stream"
    async with (
        httpx.AsyncClient(timeout=WAIT_S, headers=HEADERS) as client,
        client.stream("GET", f"{api.base_url}/api/live/events/stream", params={"scope": "all"}) as all_feed,
    ):
        await asyncio.sleep(0.2)  # let the all-sessions feed subscribe
        await aggregator.purge_header(session_id)

        async def gone() -> bool:
            return (await http.get(f"/api/live/live-sessions/{stream_id}/{session_id}")).status_code == 404

        await eventually(gone, "the purged session to answer 404")
        removed = await asyncio.wait_for(anext(read_sse(all_feed)), WAIT_S)
        assert removed["event"] == "removed"
        assert json.loads(removed["data"]) == {"session_id": session_id, "stream_id": stream_id}

    assert await api.store.row_counts(session_id) == (0, 0, 0)
    listed = (await http.get("/api/live/live-sessions", params={"scope": "all", "limit": 1000})).json()
    assert session_id not in {s["session_id"] for s in listed["sessions"]}
    assert (await http.get(url)).status_code == 404
    # A late version of the purged session (its tombstones follow) does not bring it back.
    await aggregator.events(version(session_id, stream_id, 3, 5))
    await aggregator.event_tombstone(session_id, 3)
    marker = uuid.uuid4().hex
    await aggregator.header(marker, stream_id, SessionStatus.ACTIVE)
    await wait_visible(http, stream_id, marker)
    assert await api.store.row_counts(session_id) == (0, 0, 0)


async def test_all_sessions_feed_streams_resumes_and_resyncs(
    api: ApiServer, http: httpx.AsyncClient, aggregator: Aggregator
) -> None:
    owner = key_fingerprint(API_KEY)
    session_id, stream_id = uuid.uuid4().hex, "s-6"
    foreign_id = uuid.uuid4().hex
    url = f"{api.base_url}/api/live/events/stream"
    async with (
        httpx.AsyncClient(timeout=WAIT_S, headers=HEADERS) as client,
        client.stream("GET", url) as response,  # personal scope: only API_KEY's sessions
    ):
        messages = read_sse(response)
        await asyncio.sleep(0.2)
        await aggregator.header(foreign_id, stream_id, SessionStatus.ACTIVE, cursor=1, created_by="key-else")
        await aggregator.header(session_id, stream_id, SessionStatus.ACTIVE, cursor=1, created_by=owner)
        await aggregator.events(version(session_id, stream_id, 0, 2))
        received = [await asyncio.wait_for(anext(messages), WAIT_S) for _ in range(2)]
    assert [m["event"] for m in received] == ["status", "detection"]
    assert {json.loads(m["data"])["session_id"] for m in received} == {session_id}
    last_id = received[0]["id"]

    await aggregator.header(
        session_id, stream_id, SessionStatus.FINISHED, cursor=3, events_cursor=2, created_by=owner
    )
    resumed = await collect_sse(url, 2, headers={"Last-Event-ID": last_id})
    assert [m["event"] for m in resumed] == ["detection", "end"]
    assert resumed[0]["id"] == received[1]["id"]
    resynced = await collect_sse(url, 1, params={"last_event_id": "another-instance-12"})
    assert resynced[0]["event"] == "resync"


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
    # NomadicML's fields, plus what the query was understood as and the session's own thresholds
    # (none set by the SDK); the SDK passes the dict through.
    interpretation = started.pop("interpretation")
    assert started.pop("options") is None
    assert started == {"session_id": session_id, "stream_id": stream_id, "status": "INITIALIZING"}
    assert interpretation["decision"] == "accepted"
    assert [t["phrase"] for t in interpretation["targets"]] == ["person"]
    assert first["status"] == "INITIALIZING" and first["name"] == "SDK cam"
    assert first["interpretation"] == interpretation
    assert session_id in listed
    command = await commands.wait_for(session_id, "start")
    assert command.rapid_review_query == "detect a person"  # type: ignore[union-attr]
    owner = key_fingerprint(API_KEY)

    follow = asyncio.ensure_future(asyncio.to_thread(sdk_follow_and_end, api.base_url, stream_id, session_id))
    await aggregator.events(version(session_id, stream_id, 0, 1, start=3.0))
    await aggregator.header(
        session_id, stream_id, SessionStatus.ACTIVE, cursor=1, events_cursor=1, created_by=owner
    )
    await asyncio.sleep(0.5)  # iter_events polls the ACTIVE session at least once
    assert not follow.done()
    await aggregator.events(
        version(session_id, stream_id, 0, 2, "updated", start=3.0, end=6.0),
        version(session_id, stream_id, 1, 3, start=1.0),
    )
    await aggregator.header(
        session_id,
        stream_id,
        SessionStatus.FINISHED,
        cursor=4,
        events_cursor=3,
        event_count=2,
        created_by=owner,
    )
    events, final, end = await asyncio.wait_for(follow, timeout=WAIT_S)
    assert sorted(events) == sorted([f"{session_id[:6]}-e0", f"{session_id[:6]}-e1"])
    assert final["status"] == "FINISHED" and len(final["events"]) == 2
    assert final["events"][1]["end_time"] == 6.0  # the merged event's latest version
    assert end == {"status": "already_ended"}

    with pytest.raises(APIError) as not_found:
        await asyncio.to_thread(sdk_client(api.base_url).livestream.get_session, stream_id, uuid.uuid4().hex)
    assert not_found.value.status_code == 404
    with pytest.raises(AuthenticationError, match="invalid API key"):
        await asyncio.to_thread(sdk_client(api.base_url, "wrong").livestream.get_sessions)


# --------------------------------------------------------------------------- tenants and limits

GLOBEX = {"Authorization": f"Bearer {GLOBEX_KEY}"}
INITECH_KEY, INITECH_KEY_2 = "initech-key-0123456789ab", "initech-key2-0123456789a"


async def test_another_tenant_gets_404_on_every_route_and_lists_only_its_own(
    api: ApiServer, http: httpx.AsyncClient, aggregator: Aggregator
) -> None:
    # Ours: started through the API (tenant recorded), and one published without a tenant
    # (a record older than tenants: the default tenant's, which is API_KEY's).
    started = await start_session(http, stream_id="s-ten")
    ours_id, stream_id = started["session_id"], "s-ten"
    legacy_id = uuid.uuid4().hex
    await aggregator.events(version(legacy_id, stream_id, 0, 1))
    await aggregator.header(
        legacy_id,
        stream_id,
        SessionStatus.ACTIVE,
        cursor=1,
        events_cursor=1,
        created_by=key_fingerprint(API_KEY),
    )
    await wait_visible(http, stream_id, legacy_id, events_total=1)
    assert (await http.get(f"/api/live/live-sessions/{stream_id}/{ours_id}")).json()["tenant"] == "default"
    # Theirs: a globex session.
    globex_id = uuid.uuid4().hex
    await aggregator.header(
        globex_id,
        stream_id,
        SessionStatus.ACTIVE,
        cursor=1,
        created_by=key_fingerprint(GLOBEX_KEY),
        tenant="globex",
    )

    async def globex_sees_theirs() -> bool:
        response = await http.get(f"/api/live/live-sessions/{stream_id}/{globex_id}", headers=GLOBEX)
        return response.status_code == 200

    await eventually(globex_sees_theirs, "globex to see its session")

    for session_id in (ours_id, legacy_id):
        base = f"/api/live/live-sessions/{stream_id}/{session_id}"
        for path in (base, f"{base}/events", f"{base}/events/stream"):
            answer = await http.get(path, headers=GLOBEX)
            assert answer.status_code == 404, (path, answer.text)
        ended = await http.post(
            "/api/live/end-session", data={"stream_id": stream_id, "session_id": session_id}, headers=GLOBEX
        )
        assert ended.status_code == 404  # not 403: another tenant's session does not exist for it
    assert (await http.get(f"/api/live/live-sessions/{stream_id}/{globex_id}")).status_code == 404
    assert (
        await http.post("/api/live/end-session", data={"stream_id": stream_id, "session_id": globex_id})
    ).status_code == 404

    for scope in ("personal", "org", "all"):
        listed = (
            await http.get("/api/live/live-sessions", params={"scope": scope, "limit": 1000}, headers=GLOBEX)
        ).json()
        assert [s["session_id"] for s in listed["sessions"]] == [globex_id], scope
        ours = (await http.get("/api/live/live-sessions", params={"scope": scope, "limit": 1000})).json()
        assert globex_id not in {s["session_id"] for s in ours["sessions"]}
    org = (await http.get("/api/live/live-sessions", params={"scope": "org", "limit": 1000})).json()
    assert {ours_id, legacy_id} <= {s["session_id"] for s in org["sessions"]}

    # Within a tenant scopes keep their meaning: another key of ours sees the session with
    # scope=org and reads it, not with personal, and may not end it (403).
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    personal = (await http.get("/api/live/live-sessions", headers=other)).json()["sessions"]
    assert ours_id not in {s["session_id"] for s in personal}
    same_org = (
        await http.get("/api/live/live-sessions", params={"scope": "org", "limit": 1000}, headers=other)
    ).json()
    assert ours_id in {s["session_id"] for s in same_org["sessions"]}
    assert (
        await http.get(f"/api/live/live-sessions/{stream_id}/{ours_id}", headers=other)
    ).status_code == 200
    forbidden = await http.post(
        "/api/live/end-session", data={"stream_id": stream_id, "session_id": ours_id}, headers=other
    )
    assert forbidden.status_code == 403


async def test_all_sessions_feed_carries_only_the_callers_tenant(
    api: ApiServer, http: httpx.AsyncClient, aggregator: Aggregator
) -> None:
    stream_id = "s-tenfeed"
    ours_id, globex_id = uuid.uuid4().hex, uuid.uuid4().hex
    url = f"{api.base_url}/api/live/events/stream"
    async with (
        httpx.AsyncClient(timeout=WAIT_S) as client,
        client.stream("GET", url, params={"scope": "all"}, headers=GLOBEX) as theirs,
        client.stream("GET", url, params={"scope": "all"}, headers=HEADERS) as ours,
    ):
        await asyncio.sleep(0.2)
        await aggregator.header(ours_id, stream_id, SessionStatus.ACTIVE, cursor=1)  # default tenant
        await aggregator.events(version(ours_id, stream_id, 0, 2))
        await aggregator.header(globex_id, stream_id, SessionStatus.ACTIVE, cursor=1, tenant="globex")
        seen_by_them = await asyncio.wait_for(anext(read_sse(theirs)), WAIT_S)
        our_messages = read_sse(ours)
        seen_by_us = [await asyncio.wait_for(anext(our_messages), WAIT_S) for _ in range(2)]
    assert json.loads(seen_by_them["data"])["session_id"] == globex_id
    assert {json.loads(m["data"])["session_id"] for m in seen_by_us} == {ours_id}


async def test_query_credentials_are_refused_off_sse_and_a_feed_token_opens_the_feed(
    api: ApiServer, http: httpx.AsyncClient, aggregator: Aggregator
) -> None:
    refused = await http.get("/api/live/live-sessions", params={"api_key": API_KEY}, headers={})
    assert refused.status_code == 401 and "accepted only by the SSE routes" in refused.json()["detail"]
    with_header_too = await http.get("/api/live/live-sessions", params={"api_key": API_KEY})
    assert with_header_too.status_code == 401

    session_id, stream_id = uuid.uuid4().hex, "s-token"
    await aggregator.events(version(session_id, stream_id, 0, 1))
    await aggregator.header(session_id, stream_id, SessionStatus.FINISHED, cursor=2, events_cursor=1)
    await wait_visible(http, stream_id, session_id, status="FINISHED", events_total=1)
    token = (await http.post("/api/live/feed-token")).json()["token"]
    url = f"{api.base_url}/api/live/live-sessions/{stream_id}/{session_id}/events/stream"
    async with (
        httpx.AsyncClient(timeout=WAIT_S) as browser,  # no headers: only the token
        browser.stream("GET", url, params={"token": token}) as response,
    ):
        assert response.status_code == 200
        messages = [m async for m in read_sse(response)]
    assert ids(messages) == [("detection", "1"), ("end", "2")]
    async with httpx.AsyncClient(timeout=WAIT_S) as browser:
        assert (await browser.get(url, params={"token": token[:-3]})).status_code == 401
        globex_token = (await browser.post(f"{api.base_url}/api/live/feed-token", headers=GLOBEX)).json()[
            "token"
        ]
        assert (await browser.get(url, params={"token": globex_token})).status_code == 404


@pytest.fixture(scope="module")
async def limited_api(kafka_bootstrap: str, api_topics: Topics) -> AsyncIterator[ApiServer]:
    """A second API on the same topics with tight per-key limits."""
    settings = ApiSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=api_topics.prefix,
        # A tenant of its own, so sessions of the other tests do not count against its limits.
        tenants=json.dumps({"initech": [INITECH_KEY, INITECH_KEY_2]}),
        sse_ping_seconds=1,
        rate_limit_per_second=0,
        max_active_sessions_per_key=2,
        max_active_sessions_per_tenant=3,
        max_sse_per_key=1,
    )
    server = ApiServer(settings)
    await server.start()

    async def ready() -> bool:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            return (await client.get("/healthz")).status_code == 200

    await eventually(ready, "the limited API to catch up", within_s=60)
    yield server
    server.stop()


async def test_running_sessions_and_open_feeds_are_capped_with_429(
    limited_api: ApiServer, aggregator: Aggregator
) -> None:
    mine, other = {"Authorization": f"Bearer {INITECH_KEY}"}, {"Authorization": f"Bearer {INITECH_KEY_2}"}
    async with httpx.AsyncClient(base_url=limited_api.base_url, timeout=WAIT_S) as client:
        form = {"source_url": "https://example.com/live.m3u8", "name": "cam"}
        first = await client.post("/api/live/start-session", data=form, headers=mine)
        second = await client.post("/api/live/start-session", data=form, headers=mine)
        assert first.status_code == second.status_code == 200
        over_key = await client.post("/api/live/start-session", data=form, headers=mine)
        assert over_key.status_code == 429 and over_key.headers["retry-after"]
        assert "this API key already has 2 sessions running" in over_key.json()["detail"]
        assert (await client.post("/api/live/start-session", data=form, headers=other)).status_code == 200
        over_tenant = await client.post("/api/live/start-session", data=form, headers=other)
        assert over_tenant.status_code == 429 and "organisation already has 3" in over_tenant.json()["detail"]

        # A finished session frees its place.
        done = first.json()
        await aggregator.header(
            done["session_id"],
            done["stream_id"],
            SessionStatus.FINISHED,
            created_by=key_fingerprint(INITECH_KEY),
            tenant="initech",
        )

        async def started_again() -> bool:
            response = await client.post("/api/live/start-session", data=form, headers=mine)
            return response.status_code == 200

        await eventually(started_again, "a start once a session finished")

        # One open feed per key: the second answers 429 until the first closes.
        url = "/api/live/events/stream"
        async with client.stream("GET", url, headers=mine) as open_feed:
            assert open_feed.status_code == 200
            second_feed = await client.get(url, headers=mine)
            assert second_feed.status_code == 429 and "1 event feeds open" in second_feed.json()["detail"]
            async with client.stream("GET", url, headers=other) as others_feed:  # per key
                assert others_feed.status_code == 200

        async def feed_slot_freed() -> bool:
            async with client.stream("GET", url, headers=mine) as reopened:
                return reopened.status_code == 200

        await eventually(feed_slot_freed, "the closed feed's slot to be freed")
