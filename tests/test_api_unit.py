"""Pure tests of the API: view and overlay, store, paging, feeds, auth, settings, validation.

No Kafka here: the store is a real SQLite file in a temporary directory, fed with the records
the aggregator would publish. The TestClient tests never start the lifespan, so no Kafka client
exists: they cover only what is answered before Kafka is touched (401, 422, 503, the page).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import Authenticator, bearer_token, key_fingerprint
from api.errors import AuthenticationFailed, InvalidCursor
from api.feeds import (
    AllSessionsFeed,
    FeedSignal,
    LiveEvent,
    SessionFeedHub,
    all_sessions_feed,
    parse_cursor,
    session_feed,
)
from api.sessions import (
    Sessions,
    decode_list_cursor,
    encode_list_cursor,
    header_json,
    merge_newest_first,
    session_json,
    session_key,
)
from api.settings import ApiSettings
from api.store import (
    EventWritten,
    HeaderWritten,
    ListsQuery,
    RawRecord,
    SessionPurged,
    SessionStore,
    StoreWorker,
    TopicKind,
)
from api.tenants import Audience, Caller, KeyRing, Owner
from api.tokens import FeedTokens
from api.views import SessionView, pending_header
from livestream.errors import ConfigurationError
from schemas.api import SessionResponse
from schemas.records import (
    ChunkResult,
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

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
KEY = "test-key-0123456789"
EVERYONE = Audience("default")


# --------------------------------------------------------------------------- record builders


def make_header(
    session_id: str = "s1",
    *,
    status: SessionStatus = SessionStatus.ACTIVE,
    updated: int = 0,
    created: int = 0,
    stream_id: str = "stream-a",
    created_by: str | None = None,
    tenant: str | None = None,
    cursor: int = 0,
    events_cursor: int = 0,
) -> SessionHeader:
    return SessionHeader(
        stream_id=stream_id,
        session_id=session_id,
        name=f"session {session_id}",
        source_url="https://example.com/live.m3u8",
        status=status,
        created_by=created_by,
        tenant=tenant,
        created_at=T0 + timedelta(seconds=created),
        updated_at=T0 + timedelta(seconds=updated),
        ended_at=T0 + timedelta(seconds=updated) if status.terminal else None,
        cursor=cursor,
        events_cursor=events_cursor,
    )


def make_event(event_id: str, session_id: str = "s1", start: float = 1.0, end: float | None = None) -> Event:
    return Event(
        event_id=event_id,
        session_id=session_id,
        stream_id="stream-a",
        type="detection",
        label="person",
        description="a person",
        severity=Severity.MEDIUM,
        confidence=0.9,
        stream_time=start,
        start_time=start,
        end_time=start + 1 if end is None else end,
        capture_time=start,
        captured_at=T0,
        chunk_index=0,
        chunk_relative_time=start,
        hls_cumulative_offset=0.0,
        t_start="00:01",
        t_end="00:02",
        analysis_id="a1",
        chunk_id=f"{session_id}-c000000",
        created_at=T0,
    )


def make_version(
    number: int,
    cursor: int,
    lifecycle: EventLifecycle = "opened",
    session_id: str = "s1",
    start: float | None = None,
    end: float | None = None,
) -> SessionEvent:
    start_time = float(number) if start is None else start
    return SessionEvent(
        session_id=session_id,
        stream_id="stream-a",
        number=number,
        cursor=cursor,
        lifecycle=lifecycle,
        event=make_event(f"{session_id}-e{number}", session_id, start_time, end),
        written_at=T0,
    )


def make_chunk(index: int, session_id: str = "s1") -> SessionChunk:
    return SessionChunk(
        session_id=session_id,
        stream_id="stream-a",
        chunk=ChunkSummary(
            chunk_id=f"{session_id}-c{index:06d}",
            chunk_index=index,
            start_time=4.0 * index,
            end_time=4.0 * (index + 1),
            status="ok",
            event_count=0,
            analysis_id="a1",
        ),
        written_at=T0,
    )


def make_start(session_id: str = "s1", stream_id: str = "stream-a", at: int = 0) -> StartSession:
    return StartSession(
        session_id=session_id,
        stream_id=stream_id,
        name="cam",
        source_url="https://example.com/live.m3u8",
        rapid_review_query="detect a person",
        created_by="key-abc",
        requested_at=T0 + timedelta(seconds=at),
    )


def header_record(header: SessionHeader) -> RawRecord:
    return RawRecord(TopicKind.HEADERS, header.session_id.encode(), header.to_bytes())


def event_record(version: SessionEvent) -> RawRecord:
    key = event_record_key(version.session_id, version.number).encode()
    return RawRecord(TopicKind.EVENTS, key, version.to_bytes())


def chunk_record(chunk: SessionChunk) -> RawRecord:
    key = chunk_record_key(chunk.session_id, chunk.chunk.chunk_index).encode()
    return RawRecord(TopicKind.CHUNKS, key, chunk.to_bytes())


def tombstone(kind: TopicKind, key: str) -> RawRecord:
    return RawRecord(kind, key.encode(), None)


# --------------------------------------------------------------------------- session view


def test_published_headers_replace_each_other_in_the_order_applied() -> None:
    view = SessionView()
    view.apply_header(make_header(updated=5, status=SessionStatus.ACTIVE), T0)
    # The partition's order wins, as compaction keeps it, not the clocks in the records.
    view.apply_header(make_header(updated=4, status=SessionStatus.ENDING), T0)
    assert view.cached("s1").status is SessionStatus.ENDING
    view.apply_header(make_header(updated=9, status=SessionStatus.FINISHED), T0)
    assert view.cached("s1").status is SessionStatus.FINISHED


def test_purge_forgets_the_session() -> None:
    view = SessionView()
    view.apply_header(make_header(), T0)
    view.add_pending_start(make_start("s2"))
    view.remove("s1")
    view.remove("s2")
    assert view.cached("s1") is None and view.cached("s2") is None
    assert len(view) == 0


def test_pending_start_is_served_until_published_header_arrives() -> None:
    view = SessionView()
    pending = view.add_pending_start(make_start())
    assert pending == pending_header(make_start())
    served = view.cached("s1")
    assert served is not None
    assert served.status is SessionStatus.INITIALIZING
    assert (served.name, served.rapid_review_query, served.created_by) == (
        "cam",
        "detect a person",
        "key-abc",
    )
    assert served.created_at == T0
    assert [h.session_id for h in view.pending_starts()] == ["s1"]
    # The aggregator's header wins even when its clock says it is older than the overlay.
    view.apply_header(make_header(updated=-10, status=SessionStatus.ACTIVE), T0)
    assert view.cached("s1").status is SessionStatus.ACTIVE
    assert view.pending_starts() == []
    assert len(view) == 1


def test_pending_start_never_hides_an_already_published_header() -> None:
    view = SessionView()
    view.apply_header(make_header(status=SessionStatus.ACTIVE), T0)
    assert view.add_pending_start(make_start()).status is SessionStatus.ACTIVE
    assert view.cached("s1").status is SessionStatus.ACTIVE


def test_end_request_shows_ending_until_the_aggregator_confirms() -> None:
    view = SessionView()
    view.apply_header(make_header(updated=0, status=SessionStatus.ACTIVE), T0)
    command = EndSession(session_id="s1", stream_id="stream-a", requested_at=T0)
    view.mark_end_requested(command, view.cached("s1"))
    assert view.cached("s1").status is SessionStatus.ENDING
    # A late ACTIVE update (chunk results before the end was processed) keeps showing ENDING.
    view.apply_header(make_header(updated=1, status=SessionStatus.ACTIVE), T0)
    assert view.cached("s1").status is SessionStatus.ENDING
    view.apply_header(make_header(updated=2, status=SessionStatus.FINISHED), T0)
    assert view.cached("s1").status is SessionStatus.FINISHED


def test_placeholder_header_keeps_the_pending_identity_until_the_real_one() -> None:
    view = SessionView()
    view.add_pending_start(make_start())
    placeholder = make_header(updated=5).model_copy(update={"name": "", "source_url": ""})
    view.apply_header(placeholder, T0)
    served = view.cached("s1")
    assert served is not None and served.status is SessionStatus.ACTIVE  # progress from the aggregator
    assert (served.name, served.created_by) == ("cam", "key-abc")  # identity from the start command
    view.apply_header(make_header(updated=6), T0)
    assert view.cached("s1") == make_header(updated=6)


def test_memory_keeps_active_sessions_and_only_recent_finished_ones() -> None:
    view = SessionView(recent_finished=2, recent_finished_s=60)
    now = T0 + timedelta(seconds=100)
    for index in range(5):
        view.apply_header(make_header(f"active{index}"), now)
    # Finished long ago (a replay at start-up): straight to the store, never held.
    view.apply_header(make_header("ancient", status=SessionStatus.FINISHED, updated=0), now)
    assert view.cached("ancient") is None
    for index in range(3):
        view.apply_header(make_header(f"done{index}", status=SessionStatus.FINISHED, updated=90 + index), now)
    assert (view.active_count, view.finished_count) == (5, 2)
    assert view.cached("done0") is None  # the oldest of three, beyond the count
    assert view.cached("done2") is not None
    view.expire(now + timedelta(seconds=60))
    assert view.finished_count == 0 and view.active_count == 5
    # What memory no longer holds is served from the store, with the overlay still applied.
    stored = make_header("done2", status=SessionStatus.FINISHED)
    assert view.overlay("done2", stored) == stored


# --------------------------------------------------------------------------- store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    opened = SessionStore(tmp_path / "store.sqlite3", cache_mib=4)
    yield opened
    opened.close()


def test_store_materializes_headers_chunks_and_latest_event_versions(store: SessionStore) -> None:
    applied = store.apply(
        [
            header_record(make_header(status=SessionStatus.ACTIVE, cursor=1)),
            event_record(make_version(0, 2, start=9.0)),
            chunk_record(make_chunk(0)),
            event_record(make_version(1, 3, start=5.0)),
            event_record(make_version(0, 4, "updated", start=9.0, end=12.0)),
            header_record(make_header(status=SessionStatus.FINISHED, cursor=6, events_cursor=5)),
            event_record(make_version(1, 5, "closed", start=5.0)),
            chunk_record(make_chunk(1)),
        ]
    )
    # Event versions first (a terminal header is judged against them), then headers in order.
    kinds = [type(change).__name__ for change in applied.changes]
    assert kinds == ["EventWritten"] * 4 + ["HeaderWritten"] * 2
    first, second = [c for c in applied.changes if isinstance(c, HeaderWritten)]
    assert (first.previous_status, second.previous_status) == (None, SessionStatus.ACTIVE)
    assert second.max_event_cursor == 5 and applied.stored_sessions == 1

    assert store.header("s1").status is SessionStatus.FINISHED
    lists = store.session_lists("s1", ListsQuery())
    events = [Event.model_validate(e) for e in json.loads(lists.events_json)]
    # Latest version of each merged event, by start time.
    assert [(e.event_id, e.end_time) for e in events] == [("s1-e1", 6.0), ("s1-e0", 12.0)]
    assert [c["chunk_index"] for c in json.loads(lists.chunks_json)] == [0, 1]
    assert (lists.events_total, lists.chunks_total) == (2, 2)
    assert store.row_counts("s1") == (1, 2, 2)

    assert [(v.number, v.cursor, v.lifecycle) for v in store.events_after("s1", 0, 10)] == [
        (0, 4, "updated"),
        (1, 5, "closed"),
    ]
    assert [v.cursor for v in store.events_after("s1", 4, 10)] == [5]
    page = store.events_page("s1", 0, 1)
    assert page.last_cursor == 4
    assert [SessionEvent.model_validate(v) for v in json.loads(page.events_json)] == [
        make_version(0, 4, "updated", start=9.0, end=12.0)
    ]
    assert store.events_page("s1", 5, 10).last_cursor is None


def test_store_pages_events_by_cursor_and_chunks_by_index(store: SessionStore) -> None:
    store.apply([header_record(make_header())])
    store.apply([event_record(make_version(n, n + 1, start=100.0 - n)) for n in range(10)])
    store.apply([chunk_record(make_chunk(i)) for i in range(25)])

    first = store.session_lists("s1", ListsQuery(events_limit=4, chunks_limit=10))
    assert [e["event_id"] for e in json.loads(first.events_json)] == [f"s1-e{n}" for n in range(4)]
    assert first.events_next_cursor == 4 and first.events_total == 10
    # Without chunks_after: the most recent chunks, oldest of them first.
    assert [c["chunk_index"] for c in json.loads(first.chunks_json)] == list(range(15, 25))
    assert first.chunks_next_after is None and first.chunks_total == 25

    rest = store.session_lists(
        "s1", ListsQuery(events_after=4, events_limit=6, chunks_after=-1, chunks_limit=10)
    )
    assert [e["event_id"] for e in json.loads(rest.events_json)] == [f"s1-e{n}" for n in range(4, 10)]
    assert rest.events_next_cursor is None
    assert [c["chunk_index"] for c in json.loads(rest.chunks_json)] == list(range(10))
    assert rest.chunks_next_after == 9
    last = store.session_lists("s1", ListsQuery(chunks_after=19, chunks_limit=10))
    assert [c["chunk_index"] for c in json.loads(last.chunks_json)] == list(range(20, 25))
    assert last.chunks_next_after is None


def test_purge_removes_the_session_and_drops_its_late_records(store: SessionStore) -> None:
    store.apply(
        [
            header_record(make_header("s1", created_by="k")),
            header_record(make_header("s2")),
            event_record(make_version(0, 1)),
            chunk_record(make_chunk(0)),
        ]
    )
    applied = store.apply([tombstone(TopicKind.HEADERS, "s1")])
    assert applied.changes == [SessionPurged("s1", "stream-a", Owner("default", "k"))]
    assert applied.stored_sessions == 1
    assert store.row_counts("s1") == (0, 0, 0)
    # Records of the purged session still on their way (other topics) are dropped...
    late = store.apply([event_record(make_version(1, 2)), chunk_record(make_chunk(1))])
    assert late.changes == [] and store.row_counts("s1") == (0, 0, 0)
    # ...and their own tombstones are harmless.
    store.apply([tombstone(TopicKind.EVENTS, "s1/event/1"), tombstone(TopicKind.CHUNKS, "s1/chunk/1")])
    assert store.header("s2") is not None


def test_chunk_and_event_tombstones_remove_one_row_and_poison_records_are_skipped(
    store: SessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.apply(
        [header_record(make_header())]
        + [event_record(make_version(n, n + 1)) for n in range(3)]
        + [chunk_record(make_chunk(i)) for i in range(3)]
    )
    with caplog.at_level(logging.WARNING):
        applied = store.apply(
            [
                tombstone(TopicKind.EVENTS, "s1/event/1"),
                tombstone(TopicKind.CHUNKS, "s1/chunk/2"),
                RawRecord(TopicKind.EVENTS, b"s1/event/9", b"{not json", "t.session-events", 7),
                tombstone(TopicKind.CHUNKS, "s1-no-index"),
                event_record(make_version(3, 4)),
            ]
        )
    assert [c.record.number for c in applied.changes if isinstance(c, EventWritten)] == [3]
    assert store.row_counts("s1") == (1, 2, 3)
    assert caplog.text.count("skipping a poison record") == 2
    assert "offset=7" in caplog.text


def test_store_lists_headers_newest_first_by_keyset(store: SessionStore) -> None:
    store.apply(
        [
            header_record(make_header(f"s{i}", created=i % 3, created_by="a" if i % 2 else "b"))
            for i in range(6)
        ]
    )
    everything = store.list_headers(EVERYONE, None, 10)
    keys = [session_key(h) for h in everything]
    assert keys == sorted(keys, reverse=True) and len(keys) == 6
    page = store.list_headers(EVERYONE, None, 2)
    after = store.list_headers(EVERYONE, session_key(page[-1]), 10)
    assert [h.session_id for h in page + after] == [h.session_id for h in everything]
    assert {h.session_id for h in store.list_headers(Audience("default", "a"), None, 10)} == {
        "s1",
        "s3",
        "s5",
    }


# --------------------------------------------------------------------------- paging and bodies


def test_list_cursor_round_trips_and_foreign_cursors_are_refused() -> None:
    key = (1_700_000_000_123_456, "abc:def")
    assert decode_list_cursor(encode_list_cursor(key)) == key
    for bad in ("!!", "bm9jb2xvbg", encode_list_cursor((1, "x"))[:-3] + "%%%"):
        with pytest.raises(InvalidCursor):
            decode_list_cursor(bad)


def test_merge_lists_pending_starts_among_stored_sessions_once() -> None:
    stored = [make_header("c", created=30), make_header("a", created=10)]
    pending = [
        pending_header(make_start("b", at=20)),
        pending_header(make_start("c", at=30)),  # both: its first header is being applied
        pending_header(make_start("z", at=40)),
    ]
    page, more = merge_newest_first(stored, pending, None, 3)
    assert [h.session_id for h in page] == ["z", "c", "b"] and more
    assert page[1].status is SessionStatus.ACTIVE  # the stored one
    page, more = merge_newest_first(stored[1:], pending, session_key(page[-1]), 3)
    assert [h.session_id for h in page] == ["a"] and not more


def test_session_json_is_a_valid_session_response(store: SessionStore) -> None:
    header = make_header(status=SessionStatus.ACTIVE)
    store.apply(
        [
            header_record(header),
            event_record(make_version(0, 1, start=3.0)),
            event_record(make_version(1, 2, start=0.5)),
            chunk_record(make_chunk(0)),
        ]
    )
    body = session_json(header, store.session_lists("s1", ListsQuery()))
    response = SessionResponse.model_validate_json(body)
    assert response.session_id == "s1" and response.status is SessionStatus.ACTIVE
    assert [e.event_id for e in response.events] == ["s1-e1", "s1-e0"]
    assert response.events[1] == make_version(0, 1, start=3.0).event
    assert response.chunks == [make_chunk(0).chunk]
    assert (response.events_total, response.chunks_total) == (2, 1)
    assert response.events_next_cursor is None


def test_the_aggregators_reorder_window_is_not_served(store: SessionStore) -> None:
    waiting = ChunkResult(
        session_id="s1",
        stream_id="stream-a",
        chunk_id="s1-c000003",
        chunk_index=3,
        analysis_id="a3",
        start_time=12.0,
        end_time=16.0,
        frame_count=8,
        status="ok",
        model="m",
        targets=["cat"],
        events=[make_event("s1-late", start=13.0)],
        inference_ms=1.0,
    )
    header = make_header().model_copy(update={"pending_results": [waiting]})
    body = json.loads(session_json(header, store.session_lists("s1", ListsQuery())))
    assert "pending_results" not in body and body["session_id"] == "s1"


# --------------------------------------------------------------------------- sessions and feeds


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    worker = await StoreWorker.open(tmp_path, cache_mib=4)
    yield Sessions(
        SessionView(recent_finished=10, recent_finished_s=3600),
        worker,
        SessionFeedHub(queue_size=50),
        AllSessionsFeed(ring_size=5, queue_size=50, epoch="ep1"),
        clock=lambda: T0,
    )
    await worker.close()
    assert not worker.location.path.exists()


async def feed(sessions: Sessions, *records: RawRecord, live: bool = True) -> None:
    """Store ``records`` and hand the changes to memory and feeds, as the topics reader does."""
    sessions.apply(await sessions.store.apply(records), live=live)


async def take(messages: AsyncIterator[dict[str, str]], count: int) -> list[dict[str, str]]:
    return [await asyncio.wait_for(anext(messages), 5) for _ in range(count)]


def summary(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(m["event"], m["id"]) for m in messages]


async def test_sessions_serve_memory_first_then_the_store(sessions: Sessions) -> None:
    await feed(sessions, header_record(make_header("old", status=SessionStatus.FINISHED, updated=-7200)))
    await feed(sessions, header_record(make_header("new", created=5)))
    sessions.add_pending_start(make_start("pending", at=3))
    assert sessions.view.cached("old") is None  # finished two hours ago: the store has it
    assert (await sessions.header("old")).status is SessionStatus.FINISHED
    assert (await sessions.header("pending")).status is SessionStatus.INITIALIZING
    assert await sessions.header("nope") is None
    assert sessions.stored_sessions == 2

    body = json.loads(await sessions.list_body(EVERYONE, None, 2, include_events=False))
    assert [s["session_id"] for s in body["sessions"]] == ["new", "pending"]
    assert "events" not in body["sessions"][0] and body["next_cursor"]
    rest = json.loads(await sessions.list_body(EVERYONE, body["next_cursor"], 2, include_events=True))
    assert [s["session_id"] for s in rest["sessions"]] == ["old"] and rest["next_cursor"] is None
    assert rest["sessions"][0]["events"] == [] and rest["sessions"][0]["events_total"] == 0
    mine_only = Audience("default", "key-abc")
    mine = json.loads(await sessions.list_body(mine_only, None, 10, include_events=False))
    assert [s["session_id"] for s in mine["sessions"]] == ["pending"]


async def test_session_feed_replays_then_streams_and_ends_after_the_last_event(sessions: Sessions) -> None:
    await feed(
        sessions, header_record(make_header(cursor=2, events_cursor=2)), event_record(make_version(0, 1))
    )
    await feed(sessions, event_record(make_version(1, 2)))
    messages = session_feed(sessions.hub, sessions, "s1")
    replayed = await take(messages, 2)
    assert summary(replayed) == [("detection", "1"), ("detection", "2")]
    data = json.loads(replayed[0]["data"])
    assert (data["event_id"], data["number"], data["lifecycle"], data["cursor"]) == ("s1-e0", 0, "opened", 1)
    assert sessions.hub.subscriber_count("s1") == 1

    # The terminal header arrives before the event versions it counts (topics are unordered).
    await feed(sessions, header_record(make_header(status=SessionStatus.FINISHED, cursor=6, events_cursor=5)))
    await feed(sessions, event_record(make_version(2, 3)), event_record(make_version(0, 4, "closed")))
    assert summary(await take(messages, 2)) == [("detection", "3"), ("update", "4")]
    pending = asyncio.ensure_future(anext(messages))
    await asyncio.sleep(0.05)
    assert not pending.done()  # cursor 5 has not been delivered yet: no end
    await feed(sessions, event_record(make_version(1, 5, "closed")))
    assert (await asyncio.wait_for(pending, 5))["id"] == "5"
    end = await take(messages, 1)
    assert summary(end) == [("end", "6")]
    assert json.loads(end[0]["data"])["status"] == "FINISHED"
    with pytest.raises(StopAsyncIteration):
        await anext(messages)
    assert sessions.hub.subscriber_count() == 0


async def test_session_feed_resumes_after_last_event_id_exactly(sessions: Sessions) -> None:
    await feed(
        sessions,
        header_record(make_header(cursor=5, events_cursor=5)),
        *[event_record(make_version(n, n + 1)) for n in range(4)],
        event_record(make_version(1, 5, "updated")),  # number 1's latest version moves to cursor 5
    )
    resumed = session_feed(sessions.hub, sessions, "s1", last_event_id="3")
    assert summary(await take(resumed, 2)) == [("detection", "4"), ("update", "5")]
    await feed(sessions, event_record(make_version(4, 6)))
    assert summary(await take(resumed, 1)) == [("detection", "6")]
    await resumed.aclose()
    # Small replay pages must not change what is sent.
    paged = session_feed(sessions.hub, sessions, "s1", last_event_id="0", replay_page=2)
    assert [m["id"] for m in await take(paged, 4)] == ["1", "3", "4", "5"]
    await paged.aclose()
    assert parse_cursor(" 12 ") == 12 and parse_cursor("-1") is None and parse_cursor("x") is None


@pytest.mark.parametrize("last_event_id", ["garbage", "999"])
async def test_session_feed_resyncs_when_the_cursor_cannot_be_honoured(
    sessions: Sessions, last_event_id: str
) -> None:
    await feed(
        sessions,
        header_record(make_header(cursor=3, events_cursor=2)),
        event_record(make_version(0, 1)),
        event_record(make_version(1, 2)),
    )
    messages = session_feed(sessions.hub, sessions, "s1", last_event_id=last_event_id)
    (resync,) = await take(messages, 1)
    assert (resync["event"], resync["id"]) == ("resync", "2")
    assert json.loads(resync["data"])["session_id"] == "s1"
    # It continues from the current state: only what comes next.
    await feed(sessions, event_record(make_version(2, 4)))
    assert summary(await take(messages, 1)) == [("detection", "4")]
    await messages.aclose()


async def test_feed_of_a_finished_session_replays_and_ends_and_a_resume_from_end_only_ends(
    sessions: Sessions,
) -> None:
    await feed(
        sessions,
        event_record(make_version(0, 1, "closed")),
        header_record(make_header(status=SessionStatus.FAILED, cursor=2, events_cursor=1)),
    )
    messages = [m async for m in session_feed(sessions.hub, sessions, "s1")]
    assert summary(messages) == [("update", "1"), ("end", "2")]
    assert json.loads(messages[1]["data"])["status"] == "FAILED"
    again = [m async for m in session_feed(sessions.hub, sessions, "s1", last_event_id="2")]
    assert summary(again) == [("end", "2")]
    assert sessions.hub.subscriber_count() == 0


async def test_feed_closes_on_purge_and_on_shutdown(sessions: Sessions) -> None:
    await feed(sessions, header_record(make_header("s1")), header_record(make_header("s2")))
    purged = asyncio.ensure_future(anext(session_feed(sessions.hub, sessions, "s1")))
    stopped = asyncio.ensure_future(anext(session_feed(sessions.hub, sessions, "s2")))
    await asyncio.sleep(0.05)
    await feed(sessions, tombstone(TopicKind.HEADERS, "s1"))
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(purged, 5)
    assert await sessions.header("s1") is None
    sessions.close_feeds()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(stopped, 5)


async def test_slow_subscriber_is_disconnected_without_blocking_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = SessionFeedHub(queue_size=2)
    slow = hub.subscribe("s1")
    fast = hub.subscribe("s1")
    for cursor in (1, 2):
        hub.publish("s1", LiveEvent(make_version(cursor, cursor)))
        fast.queue.get_nowait()
    hub.publish("s1", LiveEvent(make_version(3, 3)))  # slow's queue is full: it is dropped
    assert slow.queue.get_nowait() is FeedSignal.OVERFLOW
    assert hub.subscriber_count("s1") == 1
    item = fast.queue.get_nowait()
    assert isinstance(item, LiveEvent) and item.record.cursor == 3
    assert "slow event-feed subscriber" in caplog.text


async def test_all_sessions_feed_filters_by_scope_and_defers_end(sessions: Sessions) -> None:
    everyone = all_sessions_feed(sessions.all_feed, EVERYONE)
    mine = all_sessions_feed(sessions.all_feed, Audience("default", "k1"))
    # Generators subscribe when first iterated: start both before anything happens.
    first = asyncio.ensure_future(anext(everyone))
    first_mine = asyncio.ensure_future(anext(mine))
    await asyncio.sleep(0)
    await feed(sessions, header_record(make_header("s2", created_by="k2")))
    await feed(sessions, header_record(make_header("s1", created_by="k1", cursor=1)))
    await feed(sessions, event_record(make_version(0, 2, session_id="s1")))
    finished = make_header("s1", created_by="k1", status=SessionStatus.FINISHED, cursor=5, events_cursor=4)
    await feed(sessions, header_record(finished))
    await feed(sessions, event_record(make_version(0, 4, "closed", session_id="s1")))
    await feed(sessions, tombstone(TopicKind.HEADERS, "s2"))

    received = [await asyncio.wait_for(first, 5), *await take(everyone, 5)]
    assert [(m["event"], m["id"]) for m in received] == [
        ("status", "ep1-1"),
        ("status", "ep1-2"),
        ("detection", "ep1-3"),
        ("update", "ep1-4"),
        ("end", "ep1-5"),  # only after the version with the header's events_cursor
        ("removed", "ep1-6"),
    ]
    assert json.loads(received[0]["data"])["session_id"] == "s2"
    assert json.loads(received[2]["data"])["session_id"] == "s1"
    assert json.loads(received[5]["data"]) == {"session_id": "s2", "stream_id": "stream-a"}
    mine_received = [await asyncio.wait_for(first_mine, 5), *await take(mine, 3)]
    assert [m["id"] for m in mine_received] == ["ep1-2", "ep1-3", "ep1-4", "ep1-5"]
    await everyone.aclose()
    await mine.aclose()
    assert sessions.all_feed.subscriber_count == 0


async def test_all_sessions_feed_resumes_from_its_ring_or_resyncs(sessions: Sessions) -> None:
    for index in range(8):  # the ring keeps the last 5: ep1-4 .. ep1-8
        await feed(sessions, header_record(make_header(f"s{index}")))
    resumed = all_sessions_feed(sessions.all_feed, EVERYONE, "ep1-5")
    assert [m["id"] for m in await take(resumed, 3)] == ["ep1-6", "ep1-7", "ep1-8"]
    await resumed.aclose()
    oldest_resumable = all_sessions_feed(sessions.all_feed, EVERYONE, "ep1-3")
    assert [m["id"] for m in await take(oldest_resumable, 1)] == ["ep1-4"]
    await oldest_resumable.aclose()
    for stale in ("ep1-2", "ep1-99", "other-5", "nonsense"):
        current = sessions.all_feed.last_id
        messages = all_sessions_feed(sessions.all_feed, EVERYONE, stale)
        (resync,) = await take(messages, 1)
        assert (resync["event"], resync["id"]) == ("resync", current)
        await feed(sessions, header_record(make_header(f"next-{stale}")))
        assert (await take(messages, 1))[0]["event"] == "status"
        await messages.aclose()


async def test_replay_at_startup_feeds_no_all_sessions_messages(sessions: Sessions) -> None:
    await feed(sessions, header_record(make_header("s1")), event_record(make_version(0, 1)), live=False)
    assert sessions.all_feed.last_id == "ep1-0"
    assert (await sessions.header("s1")) is not None


# --------------------------------------------------------------------------- auth and settings


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_authenticator_accepts_any_configured_key_from_headers_and_feed_credentials() -> None:
    k1, k2 = "k1-0123456789abcdef", "k2-0123456789abcdef"
    tokens = FeedTokens(60)
    auth = Authenticator(KeyRing({"acme": (k1,), "globex": (k2,)}), tokens)
    assert auth.from_headers(authorization=f"Bearer {k1}") == Caller("acme", key_fingerprint(k1))
    assert auth.from_headers(x_api_key=k2) == Caller("globex", key_fingerprint(k2))
    assert auth.from_headers(authorization="Bearer wrong", x_api_key=k2).tenant == "globex"
    with pytest.raises(AuthenticationFailed, match="missing"):
        auth.from_headers()
    with pytest.raises(AuthenticationFailed, match="invalid"):
        auth.from_headers(authorization="Bearer k3", x_api_key="k4")
    # SSE routes: headers, then a feed token, then ?api_key= (unless switched off).
    assert auth.for_feed(query_api_key=k1).tenant == "acme"
    assert auth.for_feed(token=tokens.issue(Caller("globex", key_fingerprint(k2))).token).tenant == "globex"
    with pytest.raises(AuthenticationFailed, match="no longer configured"):
        auth.for_feed(token=tokens.issue(Caller("globex", key_fingerprint("gone-0123456789abc"))).token)
    with pytest.raises(AuthenticationFailed, match="missing"):
        auth.for_feed()
    strict = Authenticator(KeyRing({"acme": (k1,)}), tokens, sse_query_api_key=False)
    with pytest.raises(AuthenticationFailed, match="feed-token"):
        strict.for_feed(query_api_key=k1)


def test_fingerprint_is_short_stable_and_hides_the_key() -> None:
    fingerprint = key_fingerprint("super-secret-key")
    assert fingerprint == key_fingerprint("super-secret-key")
    assert fingerprint != key_fingerprint("super-secret-kez")
    assert "secret" not in fingerprint
    assert len(fingerprint) == len("key-") + 12


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIVESTREAM_API_KEYS", " a , b,, c ")
    monkeypatch.setenv("LIVESTREAM_API_PORT", "9123")
    monkeypatch.setenv("LIVESTREAM_API_STORE_DIR", str(tmp_path))
    monkeypatch.setenv("LIVESTREAM_API_RECENT_FINISHED_SESSIONS", "7")
    settings = ApiSettings()
    assert settings.keys == ("a", "b", "c")
    assert (settings.host, settings.port) == ("127.0.0.1", 9123)
    assert (settings.store_dir, settings.recent_finished_sessions) == (tmp_path, 7)
    monkeypatch.delenv("LIVESTREAM_API_STORE_DIR")
    assert ApiSettings(keys="k").store_dir is None


async def test_store_file_is_fresh_per_process_and_removed_at_close(tmp_path: Path) -> None:
    first, second = await StoreWorker.open(tmp_path, 4), await StoreWorker.open(tmp_path, 4)
    assert first.location.path != second.location.path and first.location.path.parent == tmp_path
    await first.close()
    await second.close()
    assert not any(await asyncio.to_thread(lambda: list(tmp_path.iterdir())))


def test_no_keys_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIVESTREAM_API_KEYS", raising=False)
    with pytest.raises(ConfigurationError, match="LIVESTREAM_API_KEYS"):
        create_app(ApiSettings())
    with pytest.raises(ConfigurationError):
        create_app(ApiSettings(keys=" , "))


# --------------------------------------------------------------------------- HTTP without Kafka


@pytest.fixture
def client() -> Iterator[TestClient]:
    # No `with`: the lifespan (and so every Kafka client) never starts.
    yield TestClient(create_app(ApiSettings(keys=KEY)))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/live/live-sessions"),
        ("get", "/api/live/live-sessions/a/b"),
        ("get", "/api/live/live-sessions/a/b/events"),
        ("get", "/api/live/live-sessions/a/b/events/stream"),
        ("get", "/api/live/events/stream"),
        ("post", "/api/live/start-session"),
        ("post", "/api/live/end-session"),
    ],
)
def test_api_routes_reject_missing_and_wrong_keys(client: TestClient, method: str, path: str) -> None:
    missing = getattr(client, method)(path)
    assert missing.status_code == 401
    assert "missing API key" in missing.json()["detail"]
    wrong = getattr(client, method)(path, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json() == {"detail": "invalid API key"}
    assert wrong.headers["www-authenticate"] == "Bearer"


def test_start_session_validation_errors_are_readable(client: TestClient) -> None:
    response = client.post(
        "/api/live/start-session",
        headers={"X-API-Key": KEY},
        data={"source_url": "rtmp://example.com/live", "name": "  ", "stream_id": "bad id!"},
    )
    assert response.status_code == 422
    errors = {tuple(error["loc"]): error["msg"] for error in response.json()["detail"]}
    assert "http:// or https://" in errors[("body", "source_url")]
    assert errors[("body", "name")] == "name must not be empty"
    assert "stream_id must be" in errors[("body", "stream_id")]

    missing = client.post("/api/live/start-session", headers={"X-API-Key": KEY}, data={})
    assert missing.status_code == 422
    assert {tuple(error["loc"]) for error in missing.json()["detail"]} == {
        ("body", "source_url"),
        ("body", "name"),
    }


@pytest.mark.parametrize(
    "path",
    [
        "/api/live/live-sessions?scope=galaxy",
        "/api/live/live-sessions?limit=0",
        "/api/live/live-sessions?limit=1001",
        "/api/live/live-sessions/a/b?events_after=-1",
        "/api/live/live-sessions/a/b?chunks_limit=10001",
        "/api/live/live-sessions/a/b/events?limit=1001",
        "/api/live/live-sessions/a/b/events?after=x",
        "/api/live/events/stream?scope=galaxy",
    ],
)
def test_query_parameters_are_validated(client: TestClient, path: str) -> None:
    assert client.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 422


def test_end_session_form_is_validated(client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    assert client.post("/api/live/end-session", headers=headers, data={"stream_id": "a"}).status_code == 422


def test_valid_requests_answer_503_until_kafka_is_up(client: TestClient) -> None:
    response = client.post(
        "/api/live/start-session",
        data={"source_url": "https://example.com/live.m3u8", "name": "cam"},
        headers={"X-API-Key": KEY},
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["status"] == "starting"


def test_index_page_is_served_without_a_key(client: TestClient) -> None:
    """The page and the modules it imports (transitively) are served without a key, and together
    they use the feeds as documented: feed tokens for EventSource, resyncs, paging cursors."""
    response = client.get("/")
    assert response.status_code == 200
    texts, pending, seen = (
        [response.text],
        re.findall(r'from "(/static/js/[\w.-]+\.js)"', response.text),
        set(),
    )
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        module = client.get(path)
        assert module.status_code == 200, path
        assert module.headers["content-type"].startswith(("application/javascript", "text/javascript")), path
        texts.append(module.text)
        pending += re.findall(r'from "(/static/js/[\w.-]+\.js)"', module.text)
    assert {"/static/js/app.js", "/static/js/session.js", "/static/js/sessions.js"} <= seen
    served = "\n".join(texts)
    for needed in ("EventSource", "feed-token", "token=", "resync", "next_cursor"):
        assert needed in served, needed


@pytest.mark.parametrize(
    "source_url",
    ["http://127.0.0.1:9/live.m3u8", "http://localhost/live.m3u8", "http://[::ffff:127.0.0.1]/x.m3u8"],
)
def test_start_session_refuses_a_private_source_under_the_egress_policy(source_url: str) -> None:
    # The policy switched on explicitly (the suite allows private sources); IP literals and
    # ``localhost`` are refused without any resolution, so nothing leaves this process.
    client = TestClient(create_app(ApiSettings(keys=KEY, allow_private_sources=False)))
    response = client.post(
        "/api/live/start-session", headers={"X-API-Key": KEY}, data={"source_url": source_url, "name": "n"}
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "egress policy" in detail or "private" in detail or "loopback" in detail, detail


def test_served_headers_redact_credentials_in_the_source_url() -> None:
    header = make_header().model_copy(
        update={"source_url": "https://user:secret@cam.test/live.m3u8?token=abc"}
    )
    served = json.loads(header_json(header))["source_url"]
    assert "secret" not in served and "abc" not in served and "cam.test/live.m3u8" in served


def test_start_session_refuses_a_query_naming_nothing_detectable(client: TestClient) -> None:
    response = client.post(
        "/api/live/start-session",
        headers={"X-API-Key": KEY},
        data={"source_url": "http://cam.local/live.m3u8", "name": "n", "rapid_review_query": "unicorns"},
    )
    assert response.status_code == 422
    body = response.json()
    assert "'unicorns' matches nothing the models can see" in body["detail"]
    # The interpretation says what was understood (nothing) so the user can rephrase.
    assert body["interpretation"]["decision"] == "refused" and body["interpretation"]["targets"] == []


def test_start_session_refuses_a_negated_action_and_names_why(client: TestClient) -> None:
    response = client.post(
        "/api/live/start-session",
        headers={"X-API-Key": KEY},
        data={
            "source_url": "http://cam.local/live.m3u8",
            "name": "n",
            "rapid_review_query": "a person not falling",
        },
    )
    assert response.status_code == 422
    assert response.json()["interpretation"]["decision"] == "refused"
    assert "falling" in response.json()["detail"]
