"""Server-Sent-Events feeds: fan-out to bounded subscriber queues, resumable by ``Last-Event-ID``.

No Kafka and no SQLite here: the reader hands what each batch stored to the hubs, and the
feeds read history through a ``SessionFeedSource`` (the store). A subscriber whose queue is
full is disconnected (with a warning) instead of slowing everyone down; it reconnects with
its ``Last-Event-ID`` and misses nothing.

**Per-session feed** (``.../live-sessions/{stream_id}/{session_id}/events/stream``). Every
message's ``id`` is the session's feed cursor (a decimal integer; it grows with every merged
event version and status change the aggregator writes):

* ``detection``: a merged event opened (data: the ``Event`` JSON plus ``number``,
  ``lifecycle`` and ``cursor``);
* ``update``: a merged event grew or closed (same data; ``lifecycle`` ``updated``/``closed``).
  Compaction keeps only an event's latest version, so a replay may show an event first as
  ``update``: clients upsert by ``event_id`` (or ``number``) on both;
* ``end``: the session is FINISHED or FAILED and every event version up to its last one was
  sent (data: ``FeedEnd``; id: the header's cursor); the stream closes;
* ``resync``: the ``Last-Event-ID`` (header, or ``last_event_id`` query parameter for
  browsers) is not a cursor or is beyond anything the session has; refetch the session, the
  feed continues from the current state (data: ``FeedResync``).

Without ``Last-Event-ID`` the feed replays the latest version of every event, in cursor order,
then goes live; with it, exactly the versions after that cursor, then live.

**All-sessions feed** (``/api/live/events/stream?scope=personal|org|all``; only the caller's
tenant's sessions, only its key's with ``personal``): ``detection`` and
``update`` as above (the data carries ``session_id``/``stream_id``), ``status`` when a session's
status changes (``FeedStatus``), ``end`` once a session is terminal and its events were sent
(``FeedEnd``), ``removed`` when retention purged it (``FeedRemoved``). Ids are
``<epoch>-<seq>``: ``epoch`` names this API process (random at start-up), ``seq`` counts its
messages. The last ``ring_size`` messages are kept in memory; a ``Last-Event-ID`` of this epoch
still in that ring resumes exactly after it, any other (another process, too old, unparsable)
gets one ``resync`` (refetch the session list) and the feed continues live. The feed carries
what this process saw after it caught up with the topics, never a replay of history.

Heartbeats are SSE comments sent by sse-starlette's ping, so idle feeds stay open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, Protocol, TypeVar

from api.store import NO_CURSOR
from api.tenants import Audience, Owner
from livestream.stages import StageTimes, observe
from schemas.api import FeedEnd, FeedRemoved, FeedResync, FeedStatus
from schemas.records import SessionEvent, SessionHeader, SessionStatus

logger = logging.getLogger(__name__)

REPLAY_PAGE = 1000  # event versions read from the store per query while replaying


class FeedSignal(Enum):
    """Out-of-band items that close a subscription."""

    OVERFLOW = "overflow"  # the subscriber fell too far behind and was dropped
    SHUTDOWN = "shutdown"  # the service is stopping
    PURGED = "purged"  # the session was removed by retention


SseMessage = dict[str, str]
T = TypeVar("T")


@dataclass(eq=False)
class Subscription(Generic[T]):
    """One subscriber's bounded queue; ``key`` is its session (None on the all-sessions feed)."""

    key: str | None
    queue: asyncio.Queue[T | FeedSignal]
    audience: Audience | None = None  # all-sessions feed: whose sessions it carries
    closed: bool = field(default=False)


def offer(subscription: Subscription[T], item: T, queue_size: int) -> bool:
    """Queue ``item`` without blocking; False (and the subscriber is closed) when it is full."""
    try:
        subscription.queue.put_nowait(item)
    except asyncio.QueueFull:
        logger.warning(
            "disconnecting a slow event-feed subscriber (session_id=%s, queue_size=%d)",
            subscription.key or "*",
            queue_size,
        )
        close_with(subscription, FeedSignal.OVERFLOW)
        return False
    return True


def close_with(subscription: Subscription[T], signal: FeedSignal) -> None:
    """Replace what the subscriber has not read by ``signal`` (it is closing; the room makes it fit)."""
    subscription.closed = True
    while not subscription.queue.empty():
        subscription.queue.get_nowait()
    subscription.queue.put_nowait(signal)


# --------------------------------------------------------------------------- messages


def parse_cursor(text: str | None) -> int | None:
    """A session feed id (a non-negative decimal integer), else None."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def event_data(record: SessionEvent) -> str:
    data = record.event.model_dump(mode="json")
    data.update(number=record.number, lifecycle=record.lifecycle, cursor=record.cursor)
    return json.dumps(data)


def event_kind(record: SessionEvent) -> str:
    return "detection" if record.lifecycle == "opened" else "update"


def event_message(record: SessionEvent) -> SseMessage:
    return {"event": event_kind(record), "id": str(record.cursor), "data": event_data(record)}


def feed_end(header: SessionHeader) -> FeedEnd:
    return FeedEnd(
        session_id=header.session_id,
        stream_id=header.stream_id,
        status=header.status,
        status_reason=header.status_reason,
    )


def end_message(header: SessionHeader) -> SseMessage:
    return {"event": "end", "id": str(header.cursor), "data": feed_end(header).model_dump_json()}


def resync_message(message_id: str, resync: FeedResync) -> SseMessage:
    return {"event": "resync", "id": message_id, "data": resync.model_dump_json()}


def end_due(header: SessionHeader, delivered_cursor: int) -> bool:
    """The ``end`` goes out once the header is terminal and its last event version was delivered.

    The header and event topics are not ordered with each other, so a terminal header may
    arrive before the last events it counts.
    """
    return header.status.terminal and delivered_cursor >= header.events_cursor


# --------------------------------------------------------------------------- per-session feed


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """An event version as the topic reader got it, with its stage stamps for ``sse_delivered``."""

    record: SessionEvent
    stages: StageTimes | None = None


SessionItem = LiveEvent | SessionHeader


class SessionFeedHub:
    """Per-session subscriber queues; every publish is non-blocking."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[str, set[Subscription[SessionItem]]] = {}

    def subscribe(self, session_id: str) -> Subscription[SessionItem]:
        subscription: Subscription[SessionItem] = Subscription(
            session_id, asyncio.Queue(maxsize=self._queue_size)
        )
        self._subscribers.setdefault(session_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription[SessionItem]) -> None:
        subscription.closed = True
        assert subscription.key is not None
        peers = self._subscribers.get(subscription.key)
        if peers is not None:
            peers.discard(subscription)
            if not peers:
                del self._subscribers[subscription.key]

    def subscriber_count(self, session_id: str | None = None) -> int:
        if session_id is not None:
            return len(self._subscribers.get(session_id, ()))
        return sum(len(peers) for peers in self._subscribers.values())

    def publish(self, session_id: str, item: SessionItem) -> None:
        for subscription in list(self._subscribers.get(session_id, ())):
            if not offer(subscription, item, self._queue_size):
                self.unsubscribe(subscription)

    def close_session(self, session_id: str, signal: FeedSignal) -> None:
        for subscription in list(self._subscribers.get(session_id, ())):
            close_with(subscription, signal)
            self.unsubscribe(subscription)

    def close_all(self) -> None:
        """Tell every subscriber the service is stopping (their streams end without ``end``)."""
        for session_id in list(self._subscribers):
            self.close_session(session_id, FeedSignal.SHUTDOWN)


class SessionFeedSource(Protocol):
    """Where a feed reads the session's current header and its stored event versions."""

    async def header(self, session_id: str) -> SessionHeader | None: ...

    async def max_event_cursor(self, session_id: str) -> int: ...

    async def events_after(self, session_id: str, after: int, limit: int) -> list[SessionEvent]: ...


async def session_feed(
    hub: SessionFeedHub,
    source: SessionFeedSource,
    session_id: str,
    last_event_id: str | None = None,
    replay_page: int = REPLAY_PAGE,
) -> AsyncIterator[SseMessage]:
    """SSE messages of one session: stored versions after ``last_event_id``, live ones, then ``end``.

    Subscribes *before* reading the store, so nothing stored in between is lost; versions
    both replayed and queued are sent once (a session's versions arrive in cursor order).
    """
    subscription = hub.subscribe(session_id)
    try:
        header = await source.header(session_id)
        if header is None:
            return  # purged since the route found it: nothing will ever come
        position = NO_CURSOR
        if last_event_id is not None:
            requested = parse_cursor(last_event_id)
            stored = await source.max_event_cursor(session_id)
            newest = max(stored, header.cursor)
            if requested is None or requested > newest:
                # Continue after what the store holds, which is what a refetch will show.
                position = stored
                reason = "Last-Event-ID is not a cursor" if requested is None else "Last-Event-ID is ahead"
                yield resync_message(
                    str(position),
                    FeedResync(
                        reason=f"{reason} of this session: refetch it",
                        session_id=session_id,
                        stream_id=header.stream_id,
                    ),
                )
            else:
                position = requested
        while True:
            page = await source.events_after(session_id, position, replay_page)
            for record in page:
                yield event_message(record)
                position = record.cursor
            if len(page) < replay_page:
                break
        if end_due(header, position):
            yield end_message(header)
            return
        while True:
            item = await subscription.queue.get()
            if isinstance(item, FeedSignal):
                return  # closed (the hub logged an overflow); a client resumes with Last-Event-ID
            if isinstance(item, LiveEvent):
                if item.record.cursor <= position:
                    continue  # already replayed from the store
                yield event_message(item.record)
                # Resumed once sse-starlette wrote the message and asks for the next one.
                if item.stages:
                    observe(item.stages, "sse_delivered")
                position = item.record.cursor
            else:
                header = item
            if end_due(header, position):
                yield end_message(header)
                return
    finally:
        hub.unsubscribe(subscription)


# --------------------------------------------------------------------------- all-sessions feed


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One message of the all-sessions feed, kept in the ring for resuming."""

    seq: int
    owner: Owner | None
    message: SseMessage


class AllSessionsFeed:
    """The feed of every session's messages, with its own ids and a bounded ring for resuming."""

    def __init__(self, ring_size: int, queue_size: int, epoch: str | None = None) -> None:
        self.epoch = epoch or uuid.uuid4().hex[:12]
        self._queue_size = queue_size
        self._ring: deque[FeedEntry] = deque(maxlen=ring_size)
        self._seq = 0
        self._subscribers: set[Subscription[SseMessage]] = set()
        # Terminal headers whose last event versions have not been seen yet.
        self._pending_ends: dict[str, SessionHeader] = {}

    @property
    def last_id(self) -> str:
        return f"{self.epoch}-{self._seq}"

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _resume_point(self, last_event_id: str) -> int | None:
        """The seq to resume after, or None when the ring cannot honour ``last_event_id``."""
        epoch, _, seq_text = last_event_id.strip().rpartition("-")
        if epoch != self.epoch or not (seq_text.isascii() and seq_text.isdigit()):
            return None
        seq = int(seq_text)
        oldest_kept = self._ring[0].seq if self._ring else self._seq + 1
        if seq > self._seq or seq < oldest_kept - 1:
            return None
        return seq

    def subscribe(
        self, audience: Audience, last_event_id: str | None = None
    ) -> tuple[Subscription[SseMessage], list[SseMessage]]:
        """A live subscription plus what to send first (the missed messages, or one ``resync``).

        Synchronous, so no message can slip between the ring's snapshot and the subscription.
        """
        subscription: Subscription[SseMessage] = Subscription(
            None, asyncio.Queue(maxsize=self._queue_size), audience=audience
        )
        self._subscribers.add(subscription)
        if last_event_id is None:
            return subscription, []
        after = self._resume_point(last_event_id)
        if after is None:
            resync = FeedResync(reason="Last-Event-ID is unknown to this API instance or too old: refetch")
            return subscription, [resync_message(self.last_id, resync)]
        missed = [
            entry.message
            for entry in self._ring
            if entry.seq > after and entry.owner is not None and audience.sees(entry.owner)
        ]
        return subscription, missed

    def unsubscribe(self, subscription: Subscription[SseMessage]) -> None:
        subscription.closed = True
        self._subscribers.discard(subscription)

    def close_all(self) -> None:
        for subscription in list(self._subscribers):
            close_with(subscription, FeedSignal.SHUTDOWN)
            self.unsubscribe(subscription)

    def _publish(self, owner: Owner | None, kind: str, data: str) -> None:
        """Send to the subscribers whose audience sees ``owner``'s sessions (None: nobody's, none)."""
        self._seq += 1
        entry = FeedEntry(self._seq, owner, {"event": kind, "id": self.last_id, "data": data})
        self._ring.append(entry)
        for subscription in list(self._subscribers):
            if owner is None or subscription.audience is None or not subscription.audience.sees(owner):
                continue
            if not offer(subscription, entry.message, self._queue_size):
                self.unsubscribe(subscription)

    def on_event(self, record: SessionEvent, owner: Owner | None) -> None:
        self._publish(owner, event_kind(record), event_data(record))
        pending = self._pending_ends.get(record.session_id)
        if pending is not None and end_due(pending, record.cursor):
            del self._pending_ends[record.session_id]
            self._publish(owner, "end", feed_end(pending).model_dump_json())

    def on_header(
        self,
        header: SessionHeader,
        owner: Owner | None,
        previous_status: SessionStatus | None,
        max_event_cursor: int,
    ) -> None:
        if header.status == previous_status:
            return
        if not header.status.terminal:
            self._publish(owner, "status", FeedStatus.of(header).model_dump_json())
        elif end_due(header, max_event_cursor):
            self._pending_ends.pop(header.session_id, None)
            self._publish(owner, "end", feed_end(header).model_dump_json())
        else:
            self._pending_ends[header.session_id] = header

    def on_purged(self, session_id: str, stream_id: str | None, owner: Owner | None) -> None:
        self._pending_ends.pop(session_id, None)
        self._publish(
            owner, "removed", FeedRemoved(session_id=session_id, stream_id=stream_id).model_dump_json()
        )


async def all_sessions_feed(
    feed: AllSessionsFeed, audience: Audience, last_event_id: str | None = None
) -> AsyncIterator[SseMessage]:
    """SSE messages of every session ``audience`` sees (its tenant's; only its key's for ``personal``)."""
    subscription, first = feed.subscribe(audience, last_event_id)
    try:
        for message in first:
            yield message
        while True:
            item = await subscription.queue.get()
            if isinstance(item, FeedSignal):
                return  # closed (the hub logged an overflow); a client resumes with Last-Event-ID
            yield item
    finally:
        feed.unsubscribe(subscription)
