"""Pure tests of the API: session view and overlay, feed fan-out, auth, settings, validation.

The TestClient tests never start the lifespan, so no Kafka client exists: they cover only
what is answered before Kafka is touched (401, 422, 503, the page).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import ApiKeyAuthenticator, bearer_token, key_fingerprint
from api.errors import AuthenticationFailed
from api.feeds import DeliveredEvents, FeedSignal, SessionFeedHub, session_feed
from api.settings import ApiSettings
from api.views import SessionView, pending_state
from livestream.errors import ConfigurationError
from schemas.records import (
    ChunkSummary,
    EndSession,
    Event,
    SessionState,
    SessionStatus,
    Severity,
    StartSession,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
KEY = "test-key-123"


def make_state(
    session_id: str = "s1",
    *,
    status: SessionStatus = SessionStatus.ACTIVE,
    updated: int = 0,
    created: int = 0,
    events: list[Event] | None = None,
    stream_id: str = "stream-a",
    created_by: str | None = None,
) -> SessionState:
    return SessionState(
        stream_id=stream_id,
        session_id=session_id,
        name=f"session {session_id}",
        source_url="https://example.com/live.m3u8",
        status=status,
        created_by=created_by,
        created_at=T0 + timedelta(seconds=created),
        updated_at=T0 + timedelta(seconds=updated),
        events=events or [],
    )


def make_event(event_id: str, session_id: str = "s1") -> Event:
    return Event(
        event_id=event_id,
        session_id=session_id,
        stream_id="stream-a",
        type="detection",
        label="person",
        description="a person",
        severity=Severity.MEDIUM,
        confidence=0.9,
        stream_time=1.0,
        start_time=1.0,
        end_time=2.0,
        capture_time=T0,
        chunk_index=0,
        chunk_relative_time=1.0,
        hls_cumulative_offset=0.0,
        t_start="00:01",
        t_end="00:02",
        analysis_id="a1",
        chunk_id="s1-c000000",
    )


def make_start(session_id: str = "s1", stream_id: str = "stream-a") -> StartSession:
    return StartSession(
        session_id=session_id,
        stream_id=stream_id,
        name="cam",
        source_url="https://example.com/live.m3u8",
        rapid_review_query="detect a person",
        created_by="key-abc",
        requested_at=T0,
    )


# --------------------------------------------------------------------------- session view


def test_newer_or_equal_state_replaces_and_older_is_ignored() -> None:
    view = SessionView()
    assert view.apply_state(make_state(updated=5, status=SessionStatus.ACTIVE))
    assert not view.apply_state(make_state(updated=4, status=SessionStatus.INITIALIZING))
    assert view.get("s1").status is SessionStatus.ACTIVE
    assert view.apply_state(make_state(updated=5, status=SessionStatus.ENDING))
    assert view.get("s1").status is SessionStatus.ENDING
    assert view.apply_state(make_state(updated=9, status=SessionStatus.FINISHED))
    assert view.get("s1").status is SessionStatus.FINISHED


def test_naive_timestamps_compare_as_utc() -> None:
    view = SessionView()
    view.apply_state(make_state(updated=5))
    naive_newer = make_state(updated=6, status=SessionStatus.ENDING).model_copy(
        update={"updated_at": (T0 + timedelta(seconds=6)).replace(tzinfo=None)}
    )
    assert view.apply_state(naive_newer)


def test_tombstone_removes_session() -> None:
    view = SessionView()
    view.apply_state(make_state())
    view.remove("s1")
    assert view.get("s1") is None
    assert len(view) == 0


def test_pending_start_is_served_until_published_state_arrives() -> None:
    view = SessionView()
    pending = view.add_pending_start(make_start())
    assert pending == pending_state(make_start())
    served = view.find("stream-a", "s1")
    assert served is not None
    assert served.status is SessionStatus.INITIALIZING
    assert (served.name, served.rapid_review_query, served.created_by) == (
        "cam",
        "detect a person",
        "key-abc",
    )
    assert served.created_at == T0
    # The aggregator's state wins even when its clock says it is older than the overlay.
    view.apply_state(make_state(updated=-10, status=SessionStatus.ACTIVE))
    assert view.get("s1").status is SessionStatus.ACTIVE
    assert len(view) == 1


def test_pending_start_never_hides_an_already_published_state() -> None:
    view = SessionView()
    view.apply_state(make_state(status=SessionStatus.ACTIVE))
    assert view.add_pending_start(make_start()).status is SessionStatus.ACTIVE
    assert view.get("s1").status is SessionStatus.ACTIVE


def test_find_requires_matching_stream_id() -> None:
    view = SessionView()
    view.apply_state(make_state(stream_id="stream-a"))
    assert view.find("stream-a", "s1") is not None
    assert view.find("stream-b", "s1") is None
    assert view.find("stream-a", "nope") is None


def test_end_request_shows_ending_until_the_aggregator_confirms() -> None:
    view = SessionView()
    view.apply_state(make_state(updated=0, status=SessionStatus.ACTIVE))
    view.mark_end_requested(EndSession(session_id="s1", stream_id="stream-a", requested_at=T0))
    assert view.get("s1").status is SessionStatus.ENDING
    # A late ACTIVE update (chunk results before the end was processed) keeps showing ENDING.
    view.apply_state(make_state(updated=1, status=SessionStatus.ACTIVE))
    assert view.get("s1").status is SessionStatus.ENDING
    view.apply_state(make_state(updated=2, status=SessionStatus.FINISHED))
    assert view.get("s1").status is SessionStatus.FINISHED


def test_sessions_listed_newest_first_and_filtered_by_creator() -> None:
    view = SessionView()
    view.apply_state(make_state("old", created=0, created_by="key-a"))
    view.apply_state(make_state("new", created=20, created_by="key-b"))
    view.add_pending_start(
        make_start("pending").model_copy(update={"requested_at": T0 + timedelta(seconds=10)})
    )
    assert [s.session_id for s in view.sessions()] == ["new", "pending", "old"]
    assert [s.session_id for s in view.sessions(created_by="key-a")] == ["old"]


# --------------------------------------------------------------------------- feed fan-out


async def collect(feed, count: int) -> list[dict[str, str]]:
    return [await anext(feed) for _ in range(count)]


async def test_feed_replays_then_streams_live_deduplicated_then_ends() -> None:
    hub = SessionFeedHub(queue_size=10)
    state = {"current": make_state(events=[make_event("e1"), make_event("e2")])}
    feed = session_feed(hub, lambda: state["current"], "s1")

    replayed = await collect(feed, 2)
    assert [(m["event"], m["id"]) for m in replayed] == [("detection", "e1"), ("detection", "e2")]
    assert json.loads(replayed[0]["data"])["event_id"] == "e1"
    assert hub.subscriber_count("s1") == 1

    hub.publish_event(make_event("e2"))  # already replayed: skipped
    hub.publish_event(make_event("e3"))
    hub.publish_event(make_event("x", session_id="other"))  # another session: not delivered
    assert (await anext(feed))["id"] == "e3"

    final = make_state(
        updated=5, status=SessionStatus.FINISHED, events=[make_event(i) for i in ("e1", "e3", "e4")]
    )
    hub.publish_state(final)
    tail = await collect(feed, 2)
    assert [m["event"] for m in tail] == ["detection", "end"]
    assert tail[0]["id"] == "e4"
    assert json.loads(tail[1]["data"])["status"] == "FINISHED"
    with pytest.raises(StopAsyncIteration):
        await anext(feed)
    assert hub.subscriber_count() == 0


async def test_feed_of_a_terminal_session_replays_and_ends_at_once() -> None:
    hub = SessionFeedHub(queue_size=10)
    done = make_state(status=SessionStatus.FAILED, events=[make_event("e1")])
    messages = [m async for m in session_feed(hub, lambda: done, "s1")]
    assert [m["event"] for m in messages] == ["detection", "end"]
    assert json.loads(messages[1]["data"])["status"] == "FAILED"
    assert hub.subscriber_count() == 0


async def test_slow_subscriber_is_disconnected_without_blocking_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = SessionFeedHub(queue_size=2)
    slow = hub.subscribe("s1")
    fast = hub.subscribe("s1")
    for index in range(2):
        hub.publish_event(make_event(f"e{index}"))
        fast.queue.get_nowait()
    hub.publish_event(make_event("e2"))  # slow's queue is full: it is dropped
    assert slow.queue.get_nowait() is FeedSignal.OVERFLOW
    assert hub.subscriber_count("s1") == 1
    assert fast.queue.get_nowait().event_id == "e2"
    assert "slow event-feed subscriber" in caplog.text


async def test_feed_closes_quietly_on_shutdown() -> None:
    hub = SessionFeedHub(queue_size=10)
    feed = session_feed(hub, lambda: make_state(), "s1")
    waiting = asyncio.ensure_future(anext(feed))
    await asyncio.sleep(0)  # let the feed subscribe and block on its queue
    hub.close_all()
    with pytest.raises(StopAsyncIteration):
        await waiting


# --------------------------------------------------------------------------- auth and settings


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_authenticator_accepts_any_configured_key_from_any_source() -> None:
    auth = ApiKeyAuthenticator(["k1", "k2"])
    assert auth.authenticate(authorization="Bearer k1") == key_fingerprint("k1")
    assert auth.authenticate(x_api_key="k2") == key_fingerprint("k2")
    assert auth.authenticate(query_api_key="k1") == key_fingerprint("k1")
    assert auth.authenticate(authorization="Bearer wrong", x_api_key="k2") == key_fingerprint("k2")
    with pytest.raises(AuthenticationFailed, match="missing"):
        auth.authenticate()
    with pytest.raises(AuthenticationFailed, match="invalid"):
        auth.authenticate(authorization="Bearer k3", x_api_key="k4")


def test_fingerprint_is_short_stable_and_hides_the_key() -> None:
    fingerprint = key_fingerprint("super-secret-key")
    assert fingerprint == key_fingerprint("super-secret-key")
    assert fingerprint != key_fingerprint("super-secret-kez")
    assert "secret" not in fingerprint
    assert len(fingerprint) == len("key-") + 12


def test_keys_parsed_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVESTREAM_API_KEYS", " a , b,, c ")
    monkeypatch.setenv("LIVESTREAM_API_PORT", "9123")
    settings = ApiSettings()
    assert settings.keys == ("a", "b", "c")
    assert (settings.host, settings.port) == ("127.0.0.1", 9123)


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
        ("get", "/api/live/live-sessions/a/b/events/stream"),
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


def test_end_session_and_scope_validation(client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    assert client.post("/api/live/end-session", headers=headers, data={"stream_id": "a"}).status_code == 422
    assert client.get("/api/live/live-sessions?scope=galaxy", headers=headers).status_code == 422


def test_valid_requests_answer_503_until_kafka_is_up(client: TestClient) -> None:
    response = client.post(
        "/api/live/start-session",
        data={"source_url": "https://example.com/live.m3u8", "name": "cam"},
        params={"api_key": KEY},
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["status"] == "starting"


def test_index_page_is_served_without_a_key(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert "EventSource" in response.text
    assert "api_key" in response.text


def test_start_session_refuses_a_query_naming_nothing_detectable(client: TestClient) -> None:
    response = client.post(
        "/api/live/start-session",
        headers={"X-API-Key": KEY},
        data={"source_url": "http://cam.local/live.m3u8", "name": "n", "rapid_review_query": "unicorns"},
    )
    assert response.status_code == 422
    assert "detects these COCO objects" in response.json()["detail"]


def test_placeholder_state_keeps_the_pending_identity_until_the_real_one() -> None:
    view = SessionView()
    view.add_pending_start(make_start())
    placeholder = make_state(updated=5).model_copy(update={"name": "", "source_url": ""})
    assert view.apply_state(placeholder)
    served = view.get("s1")
    assert served is not None and served.status is SessionStatus.ACTIVE  # progress from the aggregator
    assert (served.name, served.created_by) == ("cam", "key-abc")  # identity from the start command
    view.apply_state(make_state(updated=6))
    assert view.get("s1") == make_state(updated=6)


def folded(*indexes: int) -> list[ChunkSummary]:
    """Summaries of analysed chunks, as the aggregator lists them in a state."""
    return [
        ChunkSummary(
            chunk_id=f"c{i}",
            chunk_index=i,
            start_time=0,
            end_time=4,
            status="ok",
            event_count=1,
            analysis_id="x",
        )
        for i in indexes
    ]


async def test_feed_sends_updates_and_merges_so_clients_match_the_merged_state() -> None:
    hub = SessionFeedHub(queue_size=10)
    feed = session_feed(hub, lambda: make_state(), "s1")
    first = make_event("a")  # chunk 0, 1-2 s
    second = make_event("b").model_copy(update={"chunk_index": 1, "start_time": 2.0, "end_time": 4.0})
    receiving = asyncio.create_task(collect(feed, 2))
    await asyncio.sleep(0)  # let the feed start: it subscribes when first iterated
    assert hub.subscriber_count("s1") == 1
    hub.publish_event(first)
    hub.publish_event(second)
    assert [m["id"] for m in await asyncio.wait_for(receiving, 5)] == ["a", "b"]

    # The aggregator merged b into a (same object across the chunk boundary).
    merged = first.model_copy(update={"end_time": 4.0, "t_end": "00:04"})
    hub.publish_state(make_state(updated=3, events=[merged]).model_copy(update={"chunks": folded(0, 1)}))
    update, gone = await asyncio.wait_for(collect(feed, 2), 5)
    assert (update["event"], update["id"], json.loads(update["data"])["end_time"]) == ("update", "a", 4.0)
    assert (gone["event"], json.loads(gone["data"])) == ("merged", {"event_id": "b", "into": "a"})


def test_a_raw_event_arriving_after_the_state_that_merged_it_is_not_sent() -> None:
    delivered = DeliveredEvents()
    late = make_event("b").model_copy(update={"chunk_index": 1, "start_time": 2.0, "end_time": 4.0})
    merged = make_event("a").model_copy(update={"end_time": 4.0})
    state = make_state(events=[merged]).model_copy(update={"chunks": folded(0, 1)})
    assert [m["id"] for m in delivered.from_state(state)] == ["a"]
    assert delivered.from_event(late) == []
    assert [m["id"] for m in delivered.from_event(make_event("c").model_copy(update={"chunk_index": 2}))] == [
        "c"
    ]
