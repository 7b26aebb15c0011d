"""Merging of a session's events across chunk boundaries (pure, order-independent).

The analyzer reports each chunk separately, so an object that stays visible across a chunk
boundary arrives as two events (end of chunk N, start of chunk N+1). Same-label events whose
spans overlap or are separated by at most ``gap_tolerance_s`` are one event.

Merging is the union of intervals, each widened by the tolerance: a union is commutative and
associative, so folding chunk results in any order (or twice) yields the same events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from schemas.records import Event, describe_event

_SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}


def merge_events(existing: list[Event], new: list[Event], gap_tolerance_s: float) -> list[Event]:
    """Return ``existing`` plus ``new``, de-duplicated by event_id and merged across small gaps.

    Sorted by (start_time, label, event_id).
    """
    by_id: dict[str, Event] = {}
    for event in [*existing, *new]:
        by_id.setdefault(event.event_id, event)  # an id already known (redelivery) is dropped

    by_label: dict[str, list[Event]] = defaultdict(list)
    for event in by_id.values():
        by_label[event.label].append(event)

    merged: list[Event] = []
    for events in by_label.values():
        merged.extend(_merge_same_label(events, gap_tolerance_s))
    merged.sort(key=lambda e: (e.start_time, e.label, e.event_id))
    return merged


def _merge_same_label(events: list[Event], gap_tolerance_s: float) -> list[Event]:
    """Sweep the events of one label by start time, grouping those within the tolerance."""
    ordered = sorted(events, key=lambda e: (e.start_time, e.event_id))
    groups: list[list[Event]] = []
    group_end = float("-inf")
    for event in ordered:
        if groups and event.start_time <= group_end + gap_tolerance_s:
            groups[-1].append(event)
            group_end = max(group_end, event.end_time)
        else:
            groups.append([event])
            group_end = event.end_time
    return [_combine(group) for group in groups]


def _combine(group: Iterable[Event]) -> Event:
    """One event for a group: identity and start from the earliest, end from the latest."""
    members = list(group)
    if len(members) == 1:
        return members[0]
    first = min(members, key=lambda e: (e.start_time, e.event_id))
    last = max(members, key=lambda e: (e.end_time, e.event_id))
    confidence = max(e.confidence for e in members)
    severity = max((e.severity for e in members), key=lambda s: _SEVERITY_RANK.get(s.value, 0))
    return first.model_copy(
        update={
            "end_time": last.end_time,
            "t_end": last.t_end,
            "confidence": confidence,
            "severity": severity,
            "description": describe_event(first.label, first.start_time, last.end_time, confidence),
        }
    )
