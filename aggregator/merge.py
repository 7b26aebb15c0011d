"""Incremental merging of a session's events across chunk boundaries (pure, no I/O).

The analyzer reports each chunk separately, so an object that stays visible across a chunk
boundary arrives as two events (end of chunk N, start of chunk N+1). Same-label events whose
spans overlap or are separated by at most ``gap_tolerance_s`` are one merged event.

The reducer feeds chunks to ``EventLog.add_chunk`` strictly in chunk order (results that arrive
early wait in the session's reorder window), which is what keeps this cheap *and* exact:

* only the newest merged event of each label (of each tracked object: ``aggregator.tracked``)
  can still grow, so at most one event per label (per object) is *open*; every other event
  is *closed* and immutable, and never needs to be looked at again;
* an open event closes as soon as no later chunk can reach it: once the analysed stream time
  passes its end by more than the gap tolerance (every later detection starts after that), or
  when growing it would make it longer than ``max_event_duration_s`` (then the detection that
  would have grown it opens a new event: a parked car seen for a week is a series of events,
  each at most that long, not one event that never closes);
* each change is one ``SessionEvent`` record: ``opened``, ``updated`` (its window or confidence
  grew), ``closed``; each record takes the next value of the session's feed cursor;
* thumbnails: a merged event shows the thumbnail of its most confident detection
  (``thumbnail_event_id`` follows ``confidence``; on a tie the earlier detection keeps it). Every
  merge leaves one of the two thumbnails unreferenced, the detection's own or the one it took
  over; ``EventLog.discarded_thumbnails`` collects those, for the aggregator to delete
  (``aggregator.thumbnails``).

So the cost of a chunk depends on the chunk's own detections and the number of open labels,
never on how long the session has run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from schemas.records import Event, EventLifecycle, SessionEvent, describe_event

# Open events are keyed by label, and tracked ones by label and track: one open event per object.
EventKey = tuple[str, int | None]


def event_key(event: Event) -> EventKey:
    return (event.label, event.track_id)


_SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}


@dataclass(frozen=True)
class MergePolicy:
    gap_tolerance_s: float
    max_event_duration_s: float


def grown(event: Event, detection: Event) -> Event:
    """``event`` widened by ``detection`` (same label): identity and start stay, end and confidence
    grow, and the thumbnail moves to ``detection``'s when it is more confident and has one (a
    detection stored without a thumbnail never takes the event's away)."""
    end_time = max(event.end_time, detection.end_time)
    t_end = event.t_end if event.end_time >= detection.end_time else detection.t_end
    confidence = max(event.confidence, detection.confidence)
    severity = max(event.severity, detection.severity, key=lambda s: _SEVERITY_RANK.get(s.value, 0))
    update: dict[str, object] = {}
    if detection.confidence > event.confidence and detection.thumbnail_event_id is not None:
        update = {
            "thumbnail_event_id": detection.thumbnail_event_id,
            "thumbnail_time": detection.thumbnail_time,
        }
    if (end_time, confidence, severity) == (event.end_time, event.confidence, event.severity) and not update:
        return event
    # The analyzer's description is ``describe_event``'s sentence, then what was seen in its best
    # frame ("car 0.90, red on 94% of its central pixels") and notes, joined by "; ". The merged
    # sentence is rewritten for the whole span; what was seen is kept from the more confident side.
    best = detection if detection.confidence > event.confidence else event
    seen = best.description.partition("; ")[2]
    sentence = describe_event(event.label, event.start_time, end_time, confidence)
    return event.model_copy(
        update={
            "end_time": end_time,
            "t_end": t_end,
            "confidence": confidence,
            "severity": severity,
            "description": f"{sentence}; {seen}" if seen else sentence,
            **update,
        }
    )


def unreferenced_thumbnails(event: Event, detection: Event, merged: Event) -> list[str]:
    """Thumbnails of ``event`` and ``detection`` that ``merged`` (their merge) no longer shows."""
    candidates = [event.thumbnail_event_id, detection.thumbnail_event_id]
    return [t for t in dict.fromkeys(candidates) if t is not None and t != merged.thumbnail_event_id]


@dataclass
class EventLog:
    """One fold's working copy of a session's merged events: open ones, counters, records written.

    Built from the session header (``open_events``, ``event_count``, ``cursor``) and written back
    into it by the reducer; ``written`` collects the ``SessionEvent`` records to publish, in cursor
    order.
    """

    session_id: str
    stream_id: str
    now: datetime
    cursor: int
    event_count: int
    open_by_key: dict[str, SessionEvent]
    written: list[SessionEvent] = field(default_factory=list)
    # Raw event ids whose thumbnails no merged event shows any more (merged away by this fold).
    discarded_thumbnails: list[str] = field(default_factory=list)

    @classmethod
    def resume(
        cls,
        session_id: str,
        stream_id: str,
        now: datetime,
        *,
        cursor: int,
        event_count: int,
        open_events: Iterable[SessionEvent],
    ) -> EventLog:
        return cls(
            session_id, stream_id, now, cursor, event_count, {event_key(e.event): e for e in open_events}
        )

    @property
    def open_events(self) -> list[SessionEvent]:
        return sorted(self.open_by_key.values(), key=lambda e: e.number)

    @property
    def events_cursor(self) -> int | None:
        """Cursor of the newest record written by this fold (None if none)."""
        return self.written[-1].cursor if self.written else None

    def add_chunk(self, detections: Iterable[Event], chunk_end_time: float, policy: MergePolicy) -> None:
        """Merge the detections of the next chunk (in chunk order), then close what can no longer grow."""
        for detection in sorted(detections, key=lambda e: (e.start_time, e.label, e.event_id)):
            current = self.open_by_key.get(event_key(detection))
            if current is None:
                self._open(detection)
                continue
            reaches = detection.start_time <= current.event.end_time + policy.gap_tolerance_s
            longest = max(current.event.end_time, detection.end_time) - current.event.start_time
            if reaches and longest <= policy.max_event_duration_s:
                widened = grown(current.event, detection)
                self.discarded_thumbnails += unreferenced_thumbnails(current.event, detection, widened)
                if widened is not current.event:
                    self.open_by_key[event_key(detection)] = self._write(current.number, "updated", widened)
                continue
            # Either the detection starts beyond the gap (later detections start later still,
            # so the open event can no longer grow) or growing would exceed the maximum duration.
            self.close(event_key(detection))
            self._open(detection)
        for key, current in list(self.open_by_key.items()):
            if key[1] is None and current.event.end_time + policy.gap_tolerance_s < chunk_end_time:
                self.close(key)

    def add_standalone(self, detections: Iterable[Event]) -> None:
        """Detections that arrived after their chunk was declared missing: each opens and closes."""
        for detection in sorted(detections, key=lambda e: (e.start_time, e.label, e.event_id)):
            number = self.event_count
            self.event_count += 1
            self._write(number, "opened", detection)
            self._write(number, "closed", detection)

    def close(self, key: EventKey) -> None:
        current = self.open_by_key.pop(key)
        self._write(current.number, "closed", current.event)

    def close_all(self) -> None:
        for current in self.open_events:
            self.close(event_key(current.event))

    def replace(self, key: EventKey, event: Event) -> None:
        """Write ``event`` as the new version of the open event ``key`` (unchanged: nothing written)."""
        current = self.open_by_key[key]
        if event != current.event:
            self.open_by_key[key] = self._write(current.number, "updated", event)

    def _open(self, detection: Event) -> None:
        number = self.event_count
        self.event_count += 1
        self.open_by_key[event_key(detection)] = self._write(number, "opened", detection)

    def open(self, event: Event) -> None:
        """Open ``event`` as a new merged event (its key must not be open)."""
        self._open(event)

    def _write(self, number: int, lifecycle: EventLifecycle, event: Event) -> SessionEvent:
        self.cursor += 1
        record = SessionEvent(
            session_id=self.session_id,
            stream_id=self.stream_id,
            number=number,
            cursor=self.cursor,
            lifecycle=lifecycle,
            event=event,
            written_at=self.now,
        )
        self.written.append(record)
        return record
