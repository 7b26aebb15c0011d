"""Named streams without Kafka: the attach-stream form, the stored streams, the session page link.

The TestClient tests never start the lifespan (no Kafka client exists), so they cover what is
answered before Kafka is touched: 401, 422, 503 and the page. The broker path is in
``test_api_streams_kafka``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import create_app
from api.feeds import AllSessionsFeed, SessionFeedHub
from api.sessions import Sessions
from api.settings import ApiSettings
from api.store import RawRecord, SessionStore, StoreWorker, StreamWritten, TopicKind
from api.views import SessionView
from livestream.kafka.serde import encode_value
from schemas.api import AttachStreamForm
from schemas.records import AttachedStream, SessionHeader, SessionStatus, stream_record_key
from schemas.topics import Topics

KEY = "streams-unit-key-0123456789"
SOURCE = "http://127.0.0.1:9/live.m3u8"
T0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


def stream(
    stream_id: str = "cam-1", tenant: str = "default", name: str = "Door", at: datetime = T0
) -> AttachedStream:
    return AttachedStream(
        stream_id=stream_id, tenant=tenant, stream_name=name, source_url=SOURCE, attached_at=at
    )


def make_header(session_id: str, stream_id: str) -> SessionHeader:
    return SessionHeader(
        stream_id=stream_id,
        session_id=session_id,
        name="door",
        source_url=SOURCE,
        status=SessionStatus.FINISHED,
        tenant="default",
        created_at=T0,
        updated_at=T0,
    )


def stream_record(value: AttachedStream) -> RawRecord:
    key = stream_record_key(value.tenant, value.stream_id).encode()
    return RawRecord(TopicKind.STREAMS, key, encode_value(value), "p.streams", 0)


# --------------------------------------------------------------------------- the form


def test_attach_form_trims_and_accepts_what_the_sdk_sends() -> None:
    form = AttachStreamForm(stream_id=" cam-1 ", stream_name="  Front door ", source_url=f" {SOURCE} ")
    assert (form.stream_id, form.stream_name, form.source_url) == ("cam-1", "Front door", SOURCE)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("stream_id", "bad id!", "stream_id must be"),
        ("stream_id", "", "stream_id must be"),
        ("stream_id", "a/b", "stream_id must be"),
        ("stream_name", "   ", "stream_name must not be empty"),
        ("stream_name", "x" * 201, "at most 200 characters"),
        ("source_url", "rtmp://127.0.0.1/live", "http:// or https://"),
        ("source_url", "http://", "source_url has no host"),
    ],
)
def test_attach_form_refuses_bad_fields_with_a_readable_reason(field: str, value: str, message: str) -> None:
    fields = {"stream_id": "cam-1", "stream_name": "Door", "source_url": SOURCE, field: value}
    with pytest.raises(ValidationError) as raised:
        AttachStreamForm(**fields)
    [error] = raised.value.errors()
    assert error["loc"] == (field,) and message in error["msg"]


# --------------------------------------------------------------------------- the routes, no Kafka


@pytest.fixture
def client() -> Iterator[TestClient]:
    # No `with`: the lifespan (and so every Kafka client) never starts.
    yield TestClient(create_app(ApiSettings(keys=KEY)))


def test_attach_stream_needs_a_key(client: TestClient) -> None:
    form = {"stream_id": "cam-1", "stream_name": "Door", "source_url": SOURCE}
    assert client.post("/api/live/attach-stream", data=form).status_code == 401
    wrong = client.post("/api/live/attach-stream", data=form, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401


def test_attach_stream_validation_errors_are_422_with_readable_detail(client: TestClient) -> None:
    response = client.post(
        "/api/live/attach-stream",
        headers={"X-API-Key": KEY},
        data={"stream_id": "bad id!", "stream_name": " ", "source_url": "ftp://127.0.0.1/x"},
    )
    assert response.status_code == 422
    errors = {tuple(error["loc"]): error["msg"] for error in response.json()["detail"]}
    assert "stream_id must be" in errors[("body", "stream_id")]
    assert errors[("body", "stream_name")] == "stream_name must not be empty"
    assert "http:// or https://" in errors[("body", "source_url")]

    missing = client.post("/api/live/attach-stream", headers={"X-API-Key": KEY}, data={})
    assert missing.status_code == 422
    assert {tuple(error["loc"]) for error in missing.json()["detail"]} == {
        ("body", "stream_id"),
        ("body", "stream_name"),
        ("body", "source_url"),
    }


def test_attach_stream_refuses_a_private_source_under_the_egress_policy() -> None:
    # The policy switched on explicitly (the suite allows private sources); an IP literal is
    # refused without any resolution, so nothing leaves this process.
    client = TestClient(create_app(ApiSettings(keys=KEY, allow_private_sources=False)))
    response = client.post(
        "/api/live/attach-stream",
        headers={"X-API-Key": KEY},
        data={"stream_id": "cam-1", "stream_name": "Door", "source_url": SOURCE},
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "egress policy" in detail or "private" in detail or "loopback" in detail, detail


def test_a_valid_attach_answers_503_until_kafka_is_up(client: TestClient) -> None:
    response = client.post(
        "/api/live/attach-stream",
        headers={"X-API-Key": KEY},
        data={"stream_id": "cam-1", "stream_name": "Door", "source_url": SOURCE},
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


def test_the_session_link_of_the_docs_serves_the_page_without_a_key(client: TestClient) -> None:
    response = client.get("/events/cam-1/0123456789abcdef")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == client.get("/").text
    # The page opens the session its path names, through the API with the user's key.
    assert "location.pathname.match(/^\\/events\\/" in response.text
    assert "openLinked" in response.text
    assert client.get("/events/cam-1").status_code == 404  # only the docs' two-part link


# --------------------------------------------------------------------------- the store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    opened = SessionStore(tmp_path / "store.sqlite3")
    yield opened
    opened.close()


def test_store_keeps_the_latest_stream_per_tenant_and_id(store: SessionStore) -> None:
    applied = store.apply(
        [
            stream_record(stream("cam-1", name="Door")),
            stream_record(stream("cam-1", tenant="globex", name="Theirs")),
            stream_record(stream("cam-1", name="Front door", at=T0 + timedelta(seconds=1))),
        ]
    )
    assert [c.stream.stream_name for c in applied.changes if isinstance(c, StreamWritten)] == [
        "Door",
        "Theirs",
        "Front door",
    ]
    ours = store.stream("default", "cam-1")
    assert ours is not None and ours.stream_name == "Front door"
    theirs = store.stream("globex", "cam-1")
    assert theirs is not None and theirs.stream_name == "Theirs"
    assert store.stream("initech", "cam-1") is None
    assert store.stream("default", "cam-2") is None


def test_a_stream_tombstone_removes_it_and_poison_records_are_skipped(store: SessionStore) -> None:
    store.apply([stream_record(stream("cam-1")), stream_record(stream("cam-2"))])
    store.apply(
        [
            RawRecord(TopicKind.STREAMS, b"default/cam-1", None, "p.streams", 1),
            RawRecord(TopicKind.STREAMS, b"no-slash", None, "p.streams", 2),  # poison key
            RawRecord(TopicKind.STREAMS, b"default/cam-3", b"{not json", "p.streams", 3),  # poison value
        ]
    )
    assert store.stream("default", "cam-1") is None
    assert store.stream("default", "cam-2") is not None
    assert store.stream("default", "cam-3") is None


def test_only_streams_created_for_sessions_and_left_unused_are_retirable(store: SessionStore) -> None:
    created = stream("auto-1").model_copy(update={"origin": "start-session"})
    attached = stream("door-cam")
    store.apply([stream_record(created), stream_record(attached)])
    used = make_header("s1", "auto-1")
    store.apply([RawRecord(TopicKind.HEADERS, b"s1", encode_value(used), "p.session-state", 0)])
    assert not store.retirable_stream("default", "auto-1")  # a stored session still uses it
    assert not store.retirable_stream("globex", "auto-1")  # not that tenant's stream
    store.apply([RawRecord(TopicKind.HEADERS, b"s1", None, "p.session-state", 1)])  # purged
    assert store.retirable_stream("default", "auto-1")
    assert not store.retirable_stream("default", "door-cam")  # attached: stays
    assert not store.retirable_stream("default", "never")


# --------------------------------------------------------------------------- own writes


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


async def test_a_stream_this_process_wrote_is_found_before_its_record_comes_back(sessions: Sessions) -> None:
    written = stream("cam-1")
    assert await sessions.find_stream("default", "cam-1") is None
    sessions.add_pending_stream(written)
    assert await sessions.find_stream("default", "cam-1") == written
    assert await sessions.find_stream("globex", "cam-1") is None  # never another tenant's
    # Once the topic brings the record back, the store answers (the overlay is dropped).
    sessions.apply(await sessions.store.apply([stream_record(written)]), live=True)
    assert sessions._pending_streams == {}
    assert await sessions.find_stream("default", "cam-1") == written


async def test_an_older_stored_record_does_not_drop_a_newer_own_write(sessions: Sessions) -> None:
    newer = stream("cam-1", name="Renamed", at=T0 + timedelta(seconds=5))
    sessions.add_pending_stream(newer)
    sessions.apply(await sessions.store.apply([stream_record(stream("cam-1"))]), live=True)
    found = await sessions.find_stream("default", "cam-1")
    assert found is not None and found.stream_name == "Renamed"


def test_the_streams_topic_is_compacted_and_co_partitioned() -> None:
    topics = Topics(prefix="p", partitions=4)
    [spec] = [spec for spec in topics.specs() if spec.name == topics.streams]
    assert spec.name == "p.streams" and spec.partitions == 4
    assert spec.config["cleanup.policy"] == "compact"
