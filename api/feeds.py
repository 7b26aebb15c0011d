"""Fan-out of a session's events to its Server-Sent-Events subscribers (no Kafka here).

``SessionFeedHub`` hands each subscriber its own bounded queue; the events reader pushes
``Event``s and the session-state reader pushes ``SessionState``s into it. A subscriber
whose queue is full is disconnected (with a warning) instead of slowing everyone down.
``session_feed`` turns one subscription into SSE messages: replay what the session state
already holds, then live events, de-duplicated by ``event_id``, then ``end`` once the
session reaches a terminal status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum

from schemas.api import FeedEnd
from schemas.records import Event, SessionState

logger = logging.getLogger(__name__)


class FeedSignal(Enum):
    """Out-of-band items that close a subscription."""

    OVERFLOW = "overflow"  # the subscriber fell too far behind and was dropped
    SHUTDOWN = "shutdown"  # the service is stopping


FeedItem = Event | SessionState | FeedSignal
SseMessage = dict[str, str]


@dataclass(eq=False)
class Subscription:
    session_id: str
    queue: asyncio.Queue[FeedItem]
    closed: bool = field(default=False)


class SessionFeedHub:
    """Per-session subscriber queues; every publish is non-blocking."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = {}

    def subscribe(self, session_id: str) -> Subscription:
        subscription = Subscription(session_id, asyncio.Queue(maxsize=self._queue_size))
        self._subscribers.setdefault(session_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.closed = True
        peers = self._subscribers.get(subscription.session_id)
        if peers is not None:
            peers.discard(subscription)
            if not peers:
                del self._subscribers[subscription.session_id]

    def subscriber_count(self, session_id: str | None = None) -> int:
        if session_id is not None:
            return len(self._subscribers.get(session_id, ()))
        return sum(len(peers) for peers in self._subscribers.values())

    def publish_event(self, event: Event) -> None:
        self._offer(event.session_id, event)

    def publish_state(self, state: SessionState) -> None:
        self._offer(state.session_id, state)

    def close_all(self) -> None:
        """Tell every subscriber the service is stopping (their streams end without ``end``)."""
        for peers in list(self._subscribers.values()):
            for subscription in list(peers):
                self._replace_with_signal(subscription, FeedSignal.SHUTDOWN)

    def _offer(self, session_id: str, item: FeedItem) -> None:
        for subscription in list(self._subscribers.get(session_id, ())):
            try:
                subscription.queue.put_nowait(item)
            except asyncio.QueueFull:
                logger.warning(
                    "disconnecting a slow event-feed subscriber (session_id=%s, queue_size=%d)",
                    session_id,
                    self._queue_size,
                )
                self._replace_with_signal(subscription, FeedSignal.OVERFLOW)

    def _replace_with_signal(self, subscription: Subscription, signal: FeedSignal) -> None:
        # Drop what the subscriber has not read: it is being closed anyway, and the room
        # guarantees the signal fits.
        self.unsubscribe(subscription)
        while not subscription.queue.empty():
            subscription.queue.get_nowait()
        subscription.queue.put_nowait(signal)


def detection_message(event: Event) -> SseMessage:
    return {"event": "detection", "id": event.event_id, "data": event.model_dump_json()}


def end_message(state: SessionState) -> SseMessage:
    end = FeedEnd(
        session_id=state.session_id,
        stream_id=state.stream_id,
        status=state.status,
        status_reason=state.status_reason,
    )
    return {"event": "end", "data": end.model_dump_json()}


async def session_feed(
    hub: SessionFeedHub,
    current_state: Callable[[], SessionState | None],
    session_id: str,
) -> AsyncIterator[SseMessage]:
    """SSE messages of one session: replayed events, live events, then ``end``.

    Subscribes *before* reading the current state so nothing published in between is lost;
    duplicates that creates are removed by ``event_id``.
    """
    subscription = hub.subscribe(session_id)
    seen_event_ids: set[str] = set()

    def unseen(events: list[Event]) -> list[Event]:
        fresh = [event for event in events if event.event_id not in seen_event_ids]
        seen_event_ids.update(event.event_id for event in fresh)
        return fresh

    try:
        state = current_state()
        if state is not None:
            for event in unseen(state.events):
                yield detection_message(event)
            if state.status.terminal:
                yield end_message(state)
                return
        while True:
            item = await subscription.queue.get()
            if isinstance(item, FeedSignal):
                if item is FeedSignal.OVERFLOW:
                    logger.warning("event feed closed: subscriber too slow (session_id=%s)", session_id)
                return
            if isinstance(item, Event):
                for event in unseen([item]):
                    yield detection_message(event)
                continue
            # A session state: it may hold events this reader has not delivered yet (the
            # events and state topics are not ordered with each other), so flush them first.
            for event in unseen(item.events):
                yield detection_message(event)
            if item.status.terminal:
                yield end_message(item)
                return
    finally:
        hub.unsubscribe(subscription)
