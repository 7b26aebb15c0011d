"""Fan-out of a session's events to its Server-Sent-Events subscribers (no Kafka here).

``SessionFeedHub`` hands each subscriber its own bounded queue; the events reader pushes
``Event``s and the session-state reader pushes ``SessionState``s into it. A subscriber
whose queue is full is disconnected (with a warning) instead of slowing everyone down.
``session_feed`` turns one subscription into SSE messages: replay what the session state
already holds, then live events, de-duplicated by ``event_id``, then ``end`` once the
session reaches a terminal status.

Messages (``id`` is always the event's ``event_id``):

* ``detection``: a new event (from the events topic as soon as an analyzer publishes it, or
  from the session state);
* ``update``: an event already sent changed, because the aggregator merged the same object
  seen in the next chunk into it (later ``end_time``/``t_end``, maybe higher confidence);
* ``merged``: an event already sent was folded into another one (data: ``event_id`` and
  ``into``), so a client showing both should drop it;
* ``end``: the session reached FINISHED or FAILED (data: ``FeedEnd``); the stream closes.

So a client that applies ``update``/``merged`` shows exactly the session's merged events.
"""

from __future__ import annotations

import asyncio
import json
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


def update_message(event: Event) -> SseMessage:
    return {"event": "update", "id": event.event_id, "data": event.model_dump_json()}


def merged_message(event: Event, into: Event | None) -> SseMessage:
    data = json.dumps({"event_id": event.event_id, "into": into.event_id if into else None})
    return {"event": "merged", "id": event.event_id, "data": data}


def _extent(event: Event) -> tuple[float, float, float]:
    return (event.start_time, event.end_time, event.confidence)


class DeliveredEvents:
    """What one feed has sent, to turn each new input into the messages that bring it up to date."""

    def __init__(self) -> None:
        self._sent: dict[str, Event] = {}
        self._folded_chunks: set[int] = set()

    def from_event(self, event: Event) -> list[SseMessage]:
        # The two topics are not ordered with each other: once a state has folded the
        # event's chunk, the state already accounts for it (listed or merged away).
        if event.event_id in self._sent or event.chunk_index in self._folded_chunks:
            return []
        self._sent[event.event_id] = event
        return [detection_message(event)]

    def from_state(self, state: SessionState) -> list[SseMessage]:
        messages: list[SseMessage] = []
        for event in state.events:
            sent = self._sent.get(event.event_id)
            if sent is None:
                messages.append(detection_message(event))
            elif _extent(sent) != _extent(event):
                messages.append(update_message(event))
            self._sent[event.event_id] = event
        # An event sent from the events topic whose chunk the state has folded, yet which the
        # state does not list, was merged into an earlier event of the same label.
        listed = {event.event_id for event in state.events}
        folded = self._folded_chunks = {chunk.chunk_index for chunk in state.chunks}
        for event_id, sent in list(self._sent.items()):
            if event_id not in listed and sent.chunk_index in folded:
                into = next(
                    (
                        e
                        for e in state.events
                        if e.label == sent.label and e.start_time <= sent.start_time <= e.end_time
                    ),
                    None,
                )
                messages.append(merged_message(sent, into))
                del self._sent[event_id]
        return messages


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
    delivered = DeliveredEvents()
    try:
        state = current_state()
        if state is not None:
            for message in delivered.from_state(state):
                yield message
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
                for message in delivered.from_event(item):
                    yield message
                continue
            # A session state: it may hold events this reader has not delivered yet (the
            # events and state topics are not ordered with each other) and merges.
            for message in delivered.from_state(item):
                yield message
            if item.status.terminal:
                yield end_message(item)
                return
    finally:
        hub.unsubscribe(subscription)
