"""Pure tests of event merging across chunk boundaries."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.merge import merge_events
from schemas.records import Event, Severity, describe_event, event_id_for, format_mmss

SESSION = "sess-merge"
CAPTURE_0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
CREATED = datetime(2025, 1, 1, 12, 5, 0, tzinfo=UTC)


def make_event(label: str, start: float, end: float, confidence: float = 0.7, chunk_index: int = 0) -> Event:
    return Event(
        event_id=event_id_for(SESSION, chunk_index, label, start),
        session_id=SESSION,
        stream_id="stream-1",
        type="detection",
        label=label,
        description=describe_event(label, start, end, confidence),
        severity=Severity.HIGH if confidence >= 0.8 else Severity.MEDIUM,
        confidence=confidence,
        stream_time=start,
        start_time=start,
        end_time=end,
        capture_time=CAPTURE_0 + timedelta(seconds=start),
        chunk_index=chunk_index,
        chunk_relative_time=0.0,
        hls_cumulative_offset=0.0,
        t_start=format_mmss(start),
        t_end=format_mmss(end),
        created_at=CREATED,
        analysis_id=f"analysis-{chunk_index}",
        chunk_id=f"{SESSION}-c{chunk_index:06d}",
        query="detect a cat",
    )


def test_empty_inputs_give_no_events() -> None:
    assert merge_events([], [], 1.5) == []


def test_distinct_labels_and_far_apart_events_stay_separate_and_sorted() -> None:
    cat_late = make_event("cat", 30.0, 32.0)
    dog = make_event("dog", 5.0, 6.0)
    cat_early = make_event("cat", 5.0, 7.0)
    merged = merge_events([cat_late], [dog, cat_early], 1.5)
    assert [(e.label, e.start_time) for e in merged] == [("cat", 5.0), ("dog", 5.0), ("cat", 30.0)]
    assert merged[0] == cat_early  # untouched when nothing merges


def test_duplicate_event_id_is_dropped() -> None:
    cat = make_event("cat", 1.0, 3.0)
    assert merge_events([cat], [cat], 1.5) == [cat]
    assert merge_events([], [cat, cat], 1.5) == [cat]


def test_event_across_chunk_boundary_is_extended() -> None:
    first = make_event("cat", 12.0, 16.0, confidence=0.91, chunk_index=1)
    second = make_event("cat", 16.5, 20.0, confidence=0.6, chunk_index=2)
    [merged] = merge_events([first], [second], 1.5)
    assert merged.event_id == first.event_id
    assert (merged.start_time, merged.end_time) == (12.0, 20.0)
    assert (merged.t_start, merged.t_end) == ("00:12", "00:20")
    assert merged.capture_time == first.capture_time
    assert merged.chunk_index == 1
    assert merged.confidence == 0.91
    assert merged.severity is Severity.HIGH
    assert merged.description == "cat visible from 00:12 to 00:20 (max confidence 0.91)"


def test_gap_beyond_tolerance_keeps_two_events() -> None:
    first = make_event("cat", 12.0, 16.0)
    second = make_event("cat", 17.6, 20.0, chunk_index=1)
    assert len(merge_events([first], [second], 1.5)) == 2
    assert len(merge_events([first], [second], 2.0)) == 1


def test_gap_exactly_at_tolerance_merges() -> None:
    first = make_event("cat", 0.0, 4.0)
    second = make_event("cat", 5.5, 8.0, chunk_index=1)
    assert len(merge_events([first], [second], 1.5)) == 1


def test_same_label_different_label_not_merged() -> None:
    cat = make_event("cat", 0.0, 4.0)
    dog = make_event("dog", 4.0, 8.0, chunk_index=1)
    assert len(merge_events([cat], [dog], 1.5)) == 2


def test_later_chunk_arriving_first_is_merged_with_earlier_one() -> None:
    later = make_event("cat", 4.2, 8.0, confidence=0.95, chunk_index=1)
    earlier = make_event("cat", 1.0, 4.0, confidence=0.7, chunk_index=0)
    [merged] = merge_events([later], [earlier], 1.5)
    assert merged.event_id == earlier.event_id
    assert (merged.start_time, merged.end_time, merged.confidence) == (1.0, 8.0, 0.95)


def test_middle_chunk_bridges_two_existing_events() -> None:
    a = make_event("cat", 0.0, 4.0, chunk_index=0)
    c = make_event("cat", 8.0, 12.0, chunk_index=2)
    existing = merge_events([a], [c], 1.5)
    assert len(existing) == 2
    b = make_event("cat", 4.0, 8.0, chunk_index=1)
    [merged] = merge_events(existing, [b], 1.5)
    assert (merged.event_id, merged.start_time, merged.end_time) == (a.event_id, 0.0, 12.0)


def test_redelivered_constituent_of_merged_event_changes_nothing() -> None:
    a = make_event("cat", 0.0, 4.0, chunk_index=0)
    b = make_event("cat", 4.5, 8.0, chunk_index=1)
    merged = merge_events([a], [b], 1.5)
    assert merge_events(merged, [b], 1.5) == merged
    assert merge_events(merged, [a], 1.5) == merged


def test_contained_event_does_not_shorten() -> None:
    long = make_event("cat", 0.0, 10.0, confidence=0.6)
    short = make_event("cat", 2.0, 3.0, confidence=0.9, chunk_index=1)
    [merged] = merge_events([long], [short], 1.5)
    assert (merged.start_time, merged.end_time, merged.confidence) == (0.0, 10.0, 0.9)


@pytest.mark.parametrize("tolerance", [0.0, 1.5])
def test_merging_is_order_independent(tolerance: float) -> None:
    chunks = [
        [make_event("cat", 0.0, 4.0, 0.6, 0), make_event("cup", 1.0, 2.0, 0.8, 0)],
        [make_event("cat", 4.0, 8.0, 0.9, 1), make_event("person", 6.0, 8.0, 0.7, 1)],
        [make_event("cat", 8.5, 9.0, 0.7, 2), make_event("person", 8.0, 12.0, 0.75, 2)],
        [make_event("cup", 14.0, 16.0, 0.65, 3)],
        [make_event("cat", 20.0, 21.0, 0.55, 4)],
    ]
    outcomes = set()
    for order in itertools.permutations(chunks):
        events: list[Event] = []
        for chunk_events in order:
            events = merge_events(events, chunk_events, tolerance)
        outcomes.add(tuple(e.model_dump_json() for e in events))
    assert len(outcomes) == 1
    events = [Event.model_validate_json(raw) for raw in next(iter(outcomes))]
    spans = [(e.label, e.start_time, e.end_time) for e in events]
    if tolerance == 1.5:
        assert spans == [
            ("cat", 0.0, 9.0),
            ("cup", 1.0, 2.0),
            ("person", 6.0, 12.0),
            ("cup", 14.0, 16.0),
            ("cat", 20.0, 21.0),
        ]
    else:
        assert ("cat", 8.5, 9.0) in spans and ("cat", 0.0, 8.0) in spans
