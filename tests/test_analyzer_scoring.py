"""Pure scoring of per-frame detections into events (no model, no Kafka)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from analyzer.judge import Hit, JudgedFrame
from analyzer.scoring import FrameDetections, ReportedTarget, ScoringPolicy, score_chunk, score_judged
from schemas.records import ChunkRecord, Severity, chunk_id_for


@dataclass(frozen=True)
class Det:
    label: str
    score: float
    box: tuple[float, float, float, float] = (0.1, 0.1, 0.5, 0.5)


CAPTURED = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def chunk(index: int = 3, start: float = 12.0, end: float = 16.0) -> ChunkRecord:
    return ChunkRecord(
        session_id="s1",
        stream_id="st",
        chunk_id=chunk_id_for("s1", index),
        chunk_index=index,
        start_time=start,
        end_time=end,
        hls_cumulative_offset=start,
        capture_time=start,
        captured_at=CAPTURED,
        media_sequences=[6, 7],
        rapid_review_query="a cat",
        frames=[],
    )


def frames(*per_frame: list[Det], start: float = 12.0, step: float = 0.5) -> list[FrameDetections]:
    return [FrameDetections(start + i * step, dets) for i, dets in enumerate(per_frame)]


def test_consecutive_hits_make_one_event_with_times_and_fields() -> None:
    dets = frames([], [Det("cat", 0.7)], [Det("cat", 0.9)], [Det("cat", 0.6)], [], [], [], [])
    [event] = score_chunk(chunk(), dets, ["cat"], "a1", ScoringPolicy())
    assert event.label == "cat"
    assert event.start_time == 12.5 and event.end_time == 14.0
    assert event.t_start == "00:12" and event.t_end == "00:14"
    assert event.confidence == 0.9 and event.severity is Severity.HIGH
    assert event.chunk_relative_time == 0.5
    # capture_time is the stream time of the event's first frame; captured_at that frame's clock.
    assert event.capture_time == event.stream_time == 12.5
    assert event.captured_at == CAPTURED + timedelta(seconds=0.5)
    assert event.chunk_index == 3 and event.chunk_id == "s1-c000003"
    assert event.hls_cumulative_offset == 12.0
    assert "cat visible from 00:12 to 00:14" in event.description


def test_below_threshold_and_other_labels_are_ignored() -> None:
    dets = frames([Det("cat", 0.3)], [Det("dog", 0.95)], [Det("cat", 0.49)])
    assert score_chunk(chunk(), dets, ["cat"], "a1", ScoringPolicy(threshold=0.5)) == []


def test_one_missed_frame_is_bridged_two_split_the_event() -> None:
    hit = [Det("cat", 0.8)]
    bridged = score_chunk(chunk(), frames(hit, [], hit), ["cat"], "a", ScoringPolicy(max_gap_frames=1))
    assert len(bridged) == 1
    split = score_chunk(chunk(), frames(hit, [], [], hit), ["cat"], "a", ScoringPolicy(max_gap_frames=1))
    assert [e.start_time for e in split] == [12.0, 13.5]


def test_last_frame_extends_to_chunk_end_and_ids_are_deterministic() -> None:
    dets = frames([], [], [], [], [], [], [], [Det("person", 0.55)])
    first = score_chunk(chunk(), dets, ["person", "cat"], "a1", ScoringPolicy())
    again = score_chunk(chunk(), dets, ["person", "cat"], "a2", ScoringPolicy())
    assert [e.end_time for e in first] == [16.0]
    assert first[0].severity is Severity.LOW
    assert first[0].event_id == again[0].event_id  # redelivery yields the same id


def test_several_targets_sorted_by_time() -> None:
    dets = frames([Det("cup", 0.7)], [Det("person", 0.8), Det("cup", 0.7)], [Det("person", 0.8)])
    events = score_chunk(chunk(), dets, ["person", "cup"], "a", ScoringPolicy())
    assert [(e.label, e.start_time) for e in events] == [("cup", 12.0), ("person", 12.5)]


def test_judged_frames_become_events_labelled_with_the_phrase() -> None:
    seen = Hit(
        0.8, (0.2, 0.2, 0.4, 0.4), 2, "2 in the frame; best: car 0.80, red on 70% of its central pixels"
    )
    absent = Hit(0.9, None, 0, "none detected")
    judged = [
        JudgedFrame(12.0, {0: seen, 1: absent}),
        JudgedFrame(12.5, {1: absent}),
        JudgedFrame(13.0, {0: Hit(0.95, (0.3, 0.3, 0.5, 0.5), 2, "better")}),
    ]
    targets = [ReportedTarget(0, "at least 2 red cars"), ReportedTarget(1, "no dog", ("a note",))]
    cars, no_dog = score_judged(chunk(), judged, targets, "a", ScoringPolicy())
    assert (cars.label, cars.start_time, cars.end_time, cars.confidence) == (
        "at least 2 red cars",
        12.0,
        16.0,  # the last frame stands for the time until the chunk's end
        0.95,
    )
    assert cars.box == (0.3, 0.3, 0.5, 0.5) and cars.thumbnail_time == 13.0
    assert cars.description.endswith("(max confidence 0.95); better")
    assert (no_dog.label, no_dog.box, no_dog.end_time, no_dog.thumbnail_time) == ("no dog", None, 13.0, 12.0)
    assert no_dog.description.endswith("; none detected; a note")
    # Ids hash the label: the same chunk judged again yields the same ids.
    again = score_judged(chunk(), judged, targets, "b", ScoringPolicy())
    assert [e.event_id for e in again] == [cars.event_id, no_dog.event_id]
