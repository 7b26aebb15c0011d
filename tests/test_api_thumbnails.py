"""Thumbnail URLs and the thumbnail route of the API (no Kafka: the store, the links, the route)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from api import playback
from api.sessions import header_json
from api.settings import ApiSettings
from api.signing import PlaybackSigner
from api.store import ListsQuery, RawRecord, SessionStore, TopicKind
from api.thumbnails import ThumbnailLinks, thumbnail_links, with_thumbnail_url, with_thumbnail_urls
from api.thumbnails import router as thumbnails_router
from ingest.storage import thumbnail_key
from livestream.blobstore.local import LocalBlobStore
from livestream.kafka.serde import encode_value
from schemas.records import (
    Event,
    SessionEvent,
    SessionHeader,
    SessionStatus,
    Severity,
    chunk_id_for,
    event_id_for,
)

SECRET = "t" * 32
SESSION = "0123456789abcdef0123456789abcdef"
OTHER_SESSION = "fedcba9876543210fedcba9876543210"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
BASE = "https://video.example.test"


def event(number: int, *, thumbnail: bool = True) -> Event:
    event_id = event_id_for(SESSION, number, "cat", float(number))
    return Event(
        event_id=event_id,
        session_id=SESSION,
        stream_id="st",
        type="detection",
        label="cat",
        description='a "cat" \\ quoted',
        severity=Severity.HIGH,
        confidence=0.9,
        stream_time=float(number),
        start_time=float(number),
        end_time=float(number) + 1,
        capture_time=float(number),
        captured_at=NOW,
        chunk_index=number,
        chunk_relative_time=0.0,
        hls_cumulative_offset=0.0,
        t_start="00:00",
        t_end="00:01",
        analysis_id="a",
        chunk_id=chunk_id_for(SESSION, number),
        thumbnail_event_id=event_id if thumbnail else None,
        thumbnail_time=float(number) + 0.5 if thumbnail else None,
    )


def links() -> ThumbnailLinks:
    return ThumbnailLinks(PlaybackSigner(secret=SECRET.encode()), BASE)


def signed_path(url: str) -> tuple[str, str, str]:
    """(path, expires, sig) of a thumbnail URL."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return parts.path, query["expires"][0], query["sig"][0]


# --------------------------------------------------------------------------- pure


def test_a_thumbnail_url_is_signed_for_its_session_and_name() -> None:
    the_links = links()
    thumb = event(0).thumbnail_event_id
    url = the_links.url(SESSION, thumb)
    assert url is not None and url.startswith(f"{BASE}/playback/{SESSION}/thumbs/{thumb}.jpg?expires=")
    _, expires, sig = signed_path(url)
    assert the_links.signer.verify(SESSION, f"thumbs/{thumb}.jpg", expires, sig)
    assert the_links.url(SESSION, None) is None


def test_urls_are_spliced_into_stored_json_without_reencoding_it() -> None:
    text = event(0).model_dump_json()
    spliced = with_thumbnail_url(text, "https://x.test/a?b=1&c=2")
    assert (
        spliced.startswith(text[:-1]) and json.loads(spliced)["thumbnail_url"] == "https://x.test/a?b=1&c=2"
    )
    assert json.loads(with_thumbnail_url(text, None))["thumbnail_url"] is None
    record = SessionEvent(
        session_id=SESSION, stream_id="st", number=0, cursor=1, lifecycle="opened", event=event(0)
    )
    decorated = json.loads(
        links().record_json(SESSION, record.model_dump_json(), record.event.thumbnail_event_id)
    )
    assert decorated["event"]["thumbnail_url"].startswith(f"{BASE}/playback/{SESSION}/thumbs/")
    assert SessionEvent.model_validate(decorated) == record  # nothing else changed


def test_sse_event_messages_get_a_url_and_others_pass_through() -> None:
    data = event(0).model_dump(mode="json") | {"number": 0, "lifecycle": "opened", "cursor": 1}
    message = {"event": "detection", "id": "1", "data": json.dumps(data)}
    out = links().sse_message(message)
    assert out["id"] == "1" and json.loads(out["data"])["thumbnail_url"].startswith(BASE)
    none = links().sse_message({**message, "data": json.dumps(data | {"thumbnail_event_id": None})})
    assert json.loads(none["data"])["thumbnail_url"] is None
    end = {"event": "end", "id": "9", "data": "{}"}
    assert links().sse_message(end) is end


def test_the_store_returns_every_event_with_its_url(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "store.sqlite3")
    header = SessionHeader(
        stream_id="st",
        session_id=SESSION,
        name="n",
        source_url="https://example.test/a.m3u8",
        status=SessionStatus.ACTIVE,
        created_at=NOW,
        updated_at=NOW,
    )
    records = [RawRecord(TopicKind.HEADERS, SESSION.encode(), encode_value(header), "p.state", 0)]
    for number in range(3):
        version = SessionEvent(
            session_id=SESSION,
            stream_id="st",
            number=number,
            cursor=number + 1,
            lifecycle="opened",
            event=event(number, thumbnail=number != 1),
        )
        key = f"{SESSION}/event/{number}".encode()
        records.append(RawRecord(TopicKind.EVENTS, key, encode_value(version), "p.events", number))
    store.apply(records)
    for query in (ListsQuery(), ListsQuery(events_after=0, events_limit=2)):
        served = json.loads(store.session_lists(SESSION, query, links()).events_json)
        assert served and all("thumbnail_url" in e for e in served)
        for e in served:
            if e["thumbnail_event_id"] is None:
                assert e["thumbnail_url"] is None
            else:
                assert f"/thumbs/{e['thumbnail_event_id']}.jpg?" in e["thumbnail_url"]
    plain = json.loads(store.session_lists(SESSION, ListsQuery()).events_json)
    assert all("thumbnail_url" not in e for e in plain)
    page = json.loads(store.events_page(SESSION, 0, 10, links()).events_json)
    assert [("thumbnail_url" in r["event"]) for r in page] == [True, True, True]
    assert page[1]["event"]["thumbnail_url"] is None
    store.close()


# --------------------------------------------------------------------------- the route


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    app = FastAPI()
    settings = ApiSettings(keys="k" * 16, playback_secret=SECRET)
    playback.install(app, settings, LocalBlobStore(tmp_path))
    app.include_router(thumbnails_router)
    out = io.BytesIO()
    Image.new("RGB", (64, 36), (200, 10, 10)).save(out, format="JPEG")
    LocalBlobStore(tmp_path).put(thumbnail_key(SESSION, event(0).event_id), out.getvalue(), "image/jpeg")
    (tmp_path / "secret.jpg").write_bytes(b"not yours")
    return TestClient(app)


def test_the_route_serves_a_signed_thumbnail_as_a_jpeg(client: TestClient) -> None:
    the_links = ThumbnailLinks(client.app.state.playback.signer, "http://testserver")  # type: ignore[attr-defined]
    url = the_links.url(SESSION, event(0).thumbnail_event_id)
    assert url is not None
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size == (64, 36)
    head = client.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(response.content))
    # Tampered: another session, another name, another expiry, another signature.
    path, expires, sig = signed_path(url)
    for bad in (
        url.replace(SESSION, OTHER_SESSION),
        url.replace(str(event(0).thumbnail_event_id), str(event(1).thumbnail_event_id)),
        f"{path}?expires={int(expires) + 1}&sig={sig}",
        f"{path}?expires={expires}&sig={sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}",
        path,
    ):
        refused = client.get(bad)
        assert refused.status_code == 403, bad
        assert "detail" in refused.json()


def test_the_route_refuses_expired_urls_and_serves_only_thumbnail_names(client: TestClient) -> None:
    signer = client.app.state.playback.signer  # type: ignore[attr-defined]
    name = f"thumbs/{event(0).thumbnail_event_id}.jpg"
    expired = signer.sign(SESSION, name, expires=1_000)
    response = client.get(f"/playback/{SESSION}/{name}?{expired.query()}")
    assert response.status_code == 403 and "expired" in response.json()["detail"]
    # A valid signature on a name that is not a thumbnail is still not served.
    for other in ("thumbs/secret.jpg", "thumbs/..%2Fsecret.jpg"):
        signed = signer.sign(SESSION, other)
        assert client.get(f"/playback/{SESSION}/{other}?{signed.query()}").status_code in (403, 404)
    missing = f"thumbs/{event(2).thumbnail_event_id}.jpg"
    assert (
        client.get(f"/playback/{SESSION}/{missing}?{signer.sign(SESSION, missing).query()}").status_code
        == 404
    )


def test_links_start_with_the_public_base_url_when_set(tmp_path: Path) -> None:
    app = FastAPI()
    settings = ApiSettings(keys="k" * 16, playback_secret=SECRET, public_base_url=BASE)
    playback.install(app, settings, LocalBlobStore(tmp_path))

    class Request:  # what thumbnail_links reads of a request
        def __init__(self) -> None:
            self.app = app
            self.base_url = "http://internal:8000/"

    made = thumbnail_links(Request())  # type: ignore[arg-type]
    assert made.base_url == BASE


def test_the_feed_wrapper_signs_events_and_closes_the_feed_with_it() -> None:
    closed: list[bool] = []

    async def feed() -> AsyncIterator[dict[str, str]]:
        try:
            data = event(0).model_dump(mode="json") | {"number": 0, "lifecycle": "opened", "cursor": 1}
            yield {"event": "detection", "id": "1", "data": json.dumps(data)}
            yield {"event": "end", "id": "2", "data": "{}"}
        finally:
            closed.append(True)

    async def first_then_leave() -> tuple[dict[str, str], bool]:
        wrapped = with_thumbnail_urls(feed(), links())
        message = await anext(wrapped)
        await wrapped.aclose()  # what the SSE response does when the client goes away
        return message, bool(closed)  # closed by now, not later by the garbage collector

    message, closed_with_it = asyncio.run(first_then_leave())
    assert json.loads(message["data"])["thumbnail_url"].startswith(BASE)
    assert closed_with_it


def test_the_events_still_open_in_a_header_carry_their_urls_too() -> None:
    version = SessionEvent(
        session_id=SESSION, stream_id="st", number=0, cursor=1, lifecycle="opened", event=event(0)
    )
    header = SessionHeader(
        stream_id="st",
        session_id=SESSION,
        name="n",
        source_url="https://user:pw@example.test/a.m3u8",
        status=SessionStatus.ACTIVE,
        created_at=NOW,
        updated_at=NOW,
        open_events=[version],
    )
    served = json.loads(header_json(header, links()))
    assert served["open_events"][0]["event"]["thumbnail_url"].startswith(f"{BASE}/playback/{SESSION}/thumbs/")
    assert "pw" not in served["source_url"] and "pending_results" not in served
    assert SessionHeader.model_validate(served).open_events == [version]
    assert json.loads(header_json(header)) == json.loads(header_json(header, None))
