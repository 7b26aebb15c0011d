"""Pure scoring: per-frame detections of one chunk -> events for the query's targets.

A target seen in consecutive sampled frames is one event spanning those frames. One missed
frame inside a run is tolerated (``max_gap_frames``) because a detector's score flickers
around its threshold; a longer gap starts a new event. Events never cross the chunk
boundary here; the aggregator merges an object that stays visible across chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from schemas.records import (
    ChunkRecord,
    Event,
    Severity,
    describe_event,
    event_id_for,
    format_mmss,
)

EVENT_TYPE = "detection"


class DetectionLike(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def box(self) -> tuple[float, float, float, float]: ...


@dataclass(frozen=True)
class FrameDetections:
    """The detections of one sampled frame, at its stream time."""

    stream_time: float
    detections: Sequence[DetectionLike]


@dataclass(frozen=True)
class ScoringPolicy:
    threshold: float = 0.5
    max_gap_frames: int = 1
    # Severity says how sure we are, since the query does not say how bad a sighting is.
    high_confidence: float = 0.8
    medium_confidence: float = 0.6

    def severity(self, confidence: float) -> Severity:
        if confidence >= self.high_confidence:
            return Severity.HIGH
        if confidence >= self.medium_confidence:
            return Severity.MEDIUM
        return Severity.LOW


@dataclass(frozen=True)
class _Run:
    first: int  # index of the first frame with a hit
    last: int  # index of the last frame with a hit
    best: DetectionLike
    best_index: int  # the frame of ``best``: the event's thumbnail shows it


def _best_per_frame(
    frames: Sequence[FrameDetections], label: str, threshold: float
) -> list[DetectionLike | None]:
    best: list[DetectionLike | None] = []
    for frame in frames:
        hits = [d for d in frame.detections if d.label == label and d.score >= threshold]
        best.append(max(hits, key=lambda d: d.score) if hits else None)
    return best


def _runs(best: list[DetectionLike | None], max_gap_frames: int) -> list[_Run]:
    runs: list[_Run] = []
    current: _Run | None = None
    for index, detection in enumerate(best):
        if detection is None:
            continue
        if current is not None and index - current.last - 1 <= max_gap_frames:
            # Strictly greater: on a tie the earlier frame stays the best (deterministic).
            if detection.score > current.best.score:
                current = _Run(current.first, index, detection, index)
            else:
                current = _Run(current.first, index, current.best, current.best_index)
        else:
            if current is not None:
                runs.append(current)
            current = _Run(index, index, detection, index)
    if current is not None:
        runs.append(current)
    return runs


def _frame_end(frames: Sequence[FrameDetections], index: int, chunk_end: float) -> float:
    """A frame stands for the stream time until the next sampled frame (or the chunk's end)."""
    if index + 1 < len(frames):
        return frames[index + 1].stream_time
    return max(chunk_end, frames[index].stream_time)


def score_chunk(
    chunk: ChunkRecord,
    frames: Sequence[FrameDetections],
    targets: Sequence[str],
    analysis_id: str,
    policy: ScoringPolicy,
) -> list[Event]:
    """Events of ``targets`` in one chunk, sorted by start time then label."""
    ordered = sorted(frames, key=lambda f: f.stream_time)
    events: list[Event] = []
    for label in targets:
        for run in _runs(_best_per_frame(ordered, label, policy.threshold), policy.max_gap_frames):
            start = ordered[run.first].stream_time
            end = _frame_end(ordered, run.last, chunk.end_time)
            confidence = round(float(run.best.score), 4)
            relative = start - chunk.start_time
            events.append(
                Event(
                    event_id=event_id_for(chunk.session_id, chunk.chunk_index, label, start),
                    session_id=chunk.session_id,
                    stream_id=chunk.stream_id,
                    type=EVENT_TYPE,
                    label=label,
                    description=describe_event(label, start, end, confidence),
                    severity=policy.severity(confidence),
                    confidence=confidence,
                    stream_time=start,
                    start_time=start,
                    end_time=end,
                    capture_time=start,
                    # The chunk's wall clock is that of its first frame (capture_time), not its start.
                    captured_at=chunk.captured_at + timedelta(seconds=start - chunk.capture_time),
                    chunk_index=chunk.chunk_index,
                    chunk_relative_time=round(relative, 3),
                    hls_cumulative_offset=chunk.hls_cumulative_offset,
                    t_start=format_mmss(start),
                    t_end=format_mmss(end),
                    analysis_id=analysis_id,
                    chunk_id=chunk.chunk_id,
                    query=chunk.rapid_review_query,
                    box=tuple(round(float(v), 4) for v in run.best.box),
                    # The thumbnail's frame; ``thumbnail_event_id`` is set once it is stored.
                    thumbnail_time=ordered[run.best_index].stream_time,
                )
            )
    events.sort(key=lambda e: (e.start_time, e.label))
    return events
