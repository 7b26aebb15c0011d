"""The sessions the API serves: memory (``SessionView``) first, the SQLite store second.

``Sessions.apply`` takes what one batch of topic records changed in the store (see
``api.store``) into the in-memory view and the SSE feeds; the read methods answer the routes.
Response bodies with event lists are assembled from the JSON text the store holds, so a
session with 10,000 events is served without decoding and re-encoding each one, and without
that work on the event loop.

Session list cursors are opaque to clients: URL-safe base64 of ``<created_at µs>:<session_id>``
of the last session of a page (keyset paging, so pages stay stable while sessions start).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from api.errors import InvalidCursor, SessionNotFound
from api.feeds import AllSessionsFeed, FeedSignal, LiveEvent, SessionFeedHub
from api.store import (
    AppliedBatch,
    EventWritten,
    HeaderWritten,
    ListsQuery,
    SessionLists,
    SessionPurged,
    StoreWorker,
    StreamWritten,
    created_at_us,
)
from api.tenants import Audience, Owner, owner_of
from api.views import SessionView
from livestream.redact import redact_url
from schemas.records import AttachedStream, EndSession, SessionEvent, SessionHeader, StartSession

if TYPE_CHECKING:  # a type only: api.thumbnails imports the routes' modules, which import this one
    from api.thumbnails import ThumbnailLinks

SessionKey = tuple[int, str]


def utcnow() -> datetime:
    return datetime.now(UTC)


def session_key(header: SessionHeader) -> SessionKey:
    """Sort key of the session list (newest first = descending)."""
    return created_at_us(header.created_at), header.session_id


def encode_list_cursor(key: SessionKey) -> str:
    return base64.urlsafe_b64encode(f"{key[0]}:{key[1]}".encode()).decode().rstrip("=")


def decode_list_cursor(cursor: str) -> SessionKey:
    """The key a list cursor names; ``InvalidCursor`` when the API did not issue it."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, _, session_id = text.partition(":")
        if not session_id:
            raise ValueError("no session id")
        return int(micros), session_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor("cursor is not one this API issued", cursor=cursor[:64]) from exc


def merge_newest_first(
    stored: list[SessionHeader], pending: list[SessionHeader], before: SessionKey | None, limit: int
) -> tuple[list[SessionHeader], bool]:
    """One page of the stored headers (already newest first, up to ``limit + 1``) and the pending starts.

    A session both stored and pending (its first header is being applied) is listed once, as
    stored. Returns the page and whether more sessions follow it.
    """
    stored_ids = {header.session_id for header in stored}
    candidates = stored + [
        header
        for header in pending
        if header.session_id not in stored_ids and (before is None or session_key(header) < before)
    ]
    candidates.sort(key=session_key, reverse=True)
    return candidates[:limit], len(candidates) > limit


# The aggregator's reorder window: results of chunks it has not folded yet. Internal to its
# ordering (their events reach clients once folded), so the API does not serve it.
INTERNAL_HEADER_FIELDS = frozenset({"pending_results"})


def header_json(header: SessionHeader, links: ThumbnailLinks | None = None) -> str:
    """A header as the API serves it: without the reorder window, credentials in its source redacted.

    Ingest keeps fetching the real URL; every key of the tenant may read the session, so user
    info and secret-looking query values (``?token=``) are never shown. With ``links``, the
    events still open carry their signed ``thumbnail_url`` like every other event served (a
    handful of small events: re-encoding them here is cheap).
    """
    if header.source_url:
        header = header.model_copy(update={"source_url": redact_url(header.source_url)})
    if links is None or not header.open_events:
        return header.model_dump_json(exclude=INTERNAL_HEADER_FIELDS)
    body = header.model_dump(mode="json", exclude=INTERNAL_HEADER_FIELDS)
    for version in body["open_events"]:
        event = version["event"]
        event["thumbnail_url"] = links.url(header.session_id, event.get("thumbnail_event_id"))
    return json.dumps(body, separators=(",", ":"))


def session_json(header: SessionHeader, lists: SessionLists, links: ThumbnailLinks | None = None) -> str:
    """The ``SessionResponse`` JSON of ``header`` with its lists spliced in as stored text.

    The header's JSON is an object with at least one field, so its closing brace is replaced by
    the list fields.
    """
    return (
        header_json(header, links)[:-1]
        + f',"chunks":{lists.chunks_json},"events":{lists.events_json}'
        + f',"chunks_total":{lists.chunks_total},"events_total":{lists.events_total}'
        + f',"events_next_cursor":{json.dumps(lists.events_next_cursor)}'
        + f',"chunks_next_after":{json.dumps(lists.chunks_next_after)}}}'
    )


class Sessions:
    """The view, the store and the feeds together: what routes read and the reader feeds."""

    def __init__(
        self,
        view: SessionView,
        store: StoreWorker,
        hub: SessionFeedHub,
        all_feed: AllSessionsFeed,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.view = view
        self.default_tenant = view.default_tenant
        self.store = store
        self.hub = hub
        self.all_feed = all_feed
        self._clock = clock
        self.stored_sessions = 0
        # Streams this process wrote whose record has not come back from the topic yet, so a
        # start-session right after attach-stream finds the stream (other replicas see it once
        # they read the record).
        self._pending_streams: dict[tuple[str, str], AttachedStream] = {}

    # ------------------------------------------------------------------ writes from the topics

    def apply(self, batch: AppliedBatch, *, live: bool) -> None:
        """Bring memory and feeds up to what ``batch`` stored (runs on the event loop, cheap).

        ``live`` is False while replaying the topics at start-up: the all-sessions feed carries
        only what happens after the API caught up.
        """
        now = self._clock()
        for change in batch.changes:
            if isinstance(change, EventWritten):
                session_id = change.record.session_id
                self.hub.publish(session_id, LiveEvent(change.record, change.stages))
                if live:
                    self.all_feed.on_event(change.record, self._owner(session_id, change.owner))
            elif isinstance(change, HeaderWritten):
                header = change.header
                self.view.apply_header(header, now)
                self.hub.publish(header.session_id, header)
                if live:
                    self.all_feed.on_header(
                        header,
                        self._owner(header.session_id, owner_of(header, self.default_tenant)),
                        change.previous_status,
                        change.max_event_cursor,
                    )
            elif isinstance(change, SessionPurged):
                owner = self._owner(change.session_id, change.owner)
                self.view.remove(change.session_id)
                self.hub.close_session(change.session_id, FeedSignal.PURGED)
                if live:
                    self.all_feed.on_purged(change.session_id, change.stream_id, owner)
            elif isinstance(change, StreamWritten):
                self._stream_stored(change.stream)
        self.view.expire(now)
        self.stored_sessions = batch.stored_sessions

    def _owner(self, session_id: str, stored: Owner | None) -> Owner | None:
        """Whose the session is: the stored header's tenant, else what memory knows (a pending start)."""
        if stored is not None and stored.tenant is not None:
            return stored
        return self.view.owner(session_id) or stored

    def close_feeds(self) -> None:
        self.hub.close_all()
        self.all_feed.close_all()

    # ------------------------------------------------------------------ the API's own writes

    def add_pending_start(self, command: StartSession) -> SessionHeader:
        return self.view.add_pending_start(command)

    def mark_end_requested(self, command: EndSession, current: SessionHeader) -> None:
        self.view.mark_end_requested(command, current)

    def add_pending_stream(self, stream: AttachedStream) -> None:
        """A stream record this process produced (acknowledged), until the store has it."""
        self._pending_streams[(stream.tenant, stream.stream_id)] = stream

    def _stream_stored(self, stored: AttachedStream) -> None:
        key = (stored.tenant, stored.stream_id)
        pending = self._pending_streams.get(key)
        if pending is not None and stored.attached_at >= pending.attached_at:
            del self._pending_streams[key]

    # ------------------------------------------------------------------ reads

    async def header(self, session_id: str) -> SessionHeader | None:
        """The session's header with the overlay: from memory, else from the store."""
        cached = self.view.cached(session_id)
        if cached is not None:
            return cached
        return self.view.overlay(session_id, await self.store.header(session_id))

    async def find_stream(self, tenant: str, stream_id: str) -> AttachedStream | None:
        """The tenant's named stream: what this process just wrote, else the store."""
        pending = self._pending_streams.get((tenant, stream_id))
        if pending is not None:
            return pending
        return await self.store.stream(tenant, stream_id)

    async def find(self, stream_id: str, session_id: str, tenant: str) -> SessionHeader:
        """The session's header; ``SessionNotFound`` when unknown, of another stream or another tenant.

        Another tenant's session answers exactly like one that does not exist.
        """
        header = await self.header(session_id)
        if (
            header is None
            or header.stream_id != stream_id
            or owner_of(header, self.default_tenant).tenant != tenant
        ):
            raise SessionNotFound("session not found", stream_id=stream_id, session_id=session_id)
        return header

    def running_counts(self, tenant: str, key_id: str) -> tuple[int, int]:
        """Sessions not FINISHED/FAILED of the key and of the tenant."""
        owners = self.view.running()
        return (
            sum(1 for owner in owners if owner.tenant == tenant and owner.created_by == key_id),
            sum(1 for owner in owners if owner.tenant == tenant),
        )

    async def max_event_cursor(self, session_id: str) -> int:
        return await self.store.max_event_cursor(session_id)

    async def events_after(self, session_id: str, after: int, limit: int) -> list[SessionEvent]:
        return await self.store.events_after(session_id, after, limit)

    async def session_body(
        self, header: SessionHeader, query: ListsQuery, links: ThumbnailLinks | None = None
    ) -> str:
        """The session's JSON; with ``links`` each event carries its signed ``thumbnail_url``."""
        lists = await self.store.session_lists(header.session_id, query, links)
        return session_json(header, lists, links)

    async def events_page_body(
        self, session_id: str, after: int, limit: int, links: ThumbnailLinks | None = None
    ) -> str:
        page = await self.store.events_page(session_id, after, limit, links)
        return f'{{"events":{page.events_json},"next_cursor":{json.dumps(page.last_cursor)}}}'

    async def list_body(
        self,
        audience: Audience,
        cursor: str | None,
        limit: int,
        include_events: bool,
        links: ThumbnailLinks | None = None,
    ) -> str:
        """A page of ``audience``'s sessions newest first, as JSON."""
        before = decode_list_cursor(cursor) if cursor else None
        stored = await self.store.list_headers(audience, before, limit + 1)
        page, more = merge_newest_first(stored, self.view.pending_starts(audience), before, limit)
        items: list[str] = []
        for listed in page:
            header = self.view.overlay(listed.session_id, listed) or listed
            if include_events:
                items.append(await self.session_body(header, ListsQuery(), links))
            else:
                items.append(header_json(header, links))
        next_cursor = encode_list_cursor(session_key(page[-1])) if more and page else None
        return f'{{"sessions":[{",".join(items)}],"next_cursor":{json.dumps(next_cursor)}}}'
