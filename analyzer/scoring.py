"""Pure scoring: per-frame judgements of one chunk -> events for the query's targets.

``analyzer.judge`` decides, per frame, which targets are satisfied (with a confidence, a best
box and what was seen); this module groups them in time. A target satisfied in consecutive
sampled frames is one event spanning those frames. One missed frame inside a run is tolerated
(``max_gap_frames``) because a detector's score flickers around its threshold; a longer gap
starts a new event. Events never cross the chunk boundary here; the aggregator merges an object
that stays visible across chunks.

An event's ``label`` is the target's label (``judge.target_label``: the query's phrase with its
count, negation and relation words), its ``confidence`` the best frame's, its ``box`` that
frame's best box (None for absence and whole-frame targets) and its thumbnail that frame.
The ``description`` is ``describe_event``'s sentence (the aggregator's wording) followed by what
was seen in the best frame and the target's notes (a duration the aggregator must check).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from analyzer.judge import DetectionLike, Hit, JudgedFrame, Thresholds
from schemas.options import AnalysisOptions, Severity, severity_for
from schemas.records import (
    ChunkRecord,
    Event,
    Sighting,
    describe_event,
    event_id_for,
    format_mmss,
)

EVENT_TYPE = "detection"


@dataclass(frozen=True)
class FrameDetections:
    """The detections of one sampled frame, at its stream time."""

    stream_time: float
    detections: Sequence[DetectionLike]


@dataclass(frozen=True)
class ScoringPolicy:
    threshold: float = 0.5
    max_gap_frames: int = 1
    # The image classifier (``analyzer.judge``): a target's labels must hold this much probability
    # among the top ``classifier_top_k`` classes of a crop or frame. 0.15 keeps a tabby cat whose
    # probability EfficientNet-Lite0 spreads over three cat breeds (0.40 / 0.32 / 0.19 on
    # skimage's chelsea) and refuses the long tail of guesses (the astronaut's best is 0.16).
    classifier_min_probability: float = 0.15
    classifier_top_k: int = 5
    # An open query (nothing asked) reports only confident detections: false positives of
    # objects nobody asked for would be pure noise.
    open_query_threshold: float = 0.6

    def thresholds(self, *, open_query: bool = False, options: AnalysisOptions | None = None) -> Thresholds:
        """The session's thresholds: its own ``detection_threshold`` when it set one."""
        if options is not None and options.detection_threshold is not None:
            detection = options.detection_threshold
        elif open_query:
            detection = max(self.threshold, self.open_query_threshold)
        else:
            detection = self.threshold
        return Thresholds(
            detection=detection,
            classifier_probability=self.classifier_min_probability,
            classifier_top_k=self.classifier_top_k,
        )

    @staticmethod
    def severity(confidence: float, options: AnalysisOptions | None = None) -> Severity:
        """The documented rule (``schemas.options.severity_for``), with the session's thresholds."""
        return severity_for(confidence, options)


@dataclass(frozen=True)
class ReportedTarget:
    """A target that becomes events: its index in the judged frames' hits, its label, its notes."""

    index: int
    label: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Run:
    first: int  # index of the first frame with a hit
    last: int  # index of the last frame with a hit
    best: Hit
    best_index: int  # the frame of ``best``: the event's thumbnail shows it


def _runs(hits: list[Hit | None], max_gap_frames: int) -> list[_Run]:
    runs: list[_Run] = []
    current: _Run | None = None
    for index, hit in enumerate(hits):
        if hit is None:
            continue
        if current is not None and index - current.last - 1 <= max_gap_frames:
            # Strictly greater: on a tie the earlier frame stays the best (deterministic).
            if hit.confidence > current.best.confidence:
                current = _Run(current.first, index, hit, index)
            else:
                current = _Run(current.first, index, current.best, current.best_index)
        else:
            if current is not None:
                runs.append(current)
            current = _Run(index, index, hit, index)
    if current is not None:
        runs.append(current)
    return runs


def _frame_end(frames: Sequence[JudgedFrame], index: int, chunk_end: float) -> float:
    """A frame stands for the stream time until the next sampled frame (or the chunk's end)."""
    if index + 1 < len(frames):
        return frames[index + 1].stream_time
    return max(chunk_end, frames[index].stream_time)


def score_judged(
    chunk: ChunkRecord,
    frames: Sequence[JudgedFrame],
    targets: Sequence[ReportedTarget],
    analysis_id: str,
    policy: ScoringPolicy,
) -> list[Event]:
    """Events of ``targets`` in one chunk, sorted by start time then label."""
    ordered = sorted(frames, key=lambda f: f.stream_time)
    events: list[Event] = []
    for target in targets:
        hits = [frame.hits.get(target.index) for frame in ordered]
        for run in _runs(hits, policy.max_gap_frames):
            start = ordered[run.first].stream_time
            end = _frame_end(ordered, run.last, chunk.end_time)
            confidence = round(float(run.best.confidence), 4)
            relative = start - chunk.start_time
            description = "; ".join(
                part
                for part in (
                    describe_event(target.label, start, end, confidence),
                    run.best.detail,
                    *target.notes,
                )
                if part
            )
            box = run.best.box
            events.append(
                Event(
                    event_id=event_id_for(chunk.session_id, chunk.chunk_index, target.label, start),
                    session_id=chunk.session_id,
                    stream_id=chunk.stream_id,
                    type=EVENT_TYPE,
                    label=target.label,
                    description=description,
                    severity=policy.severity(confidence, chunk.options),
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
                    box=tuple(round(float(v), 4) for v in box) if box is not None else None,
                    # The thumbnail's frame; ``thumbnail_event_id`` is set once it is stored.
                    thumbnail_time=ordered[run.best_index].stream_time,
                )
            )
    events.sort(key=lambda e: (e.start_time, e.label))
    return events


def sightings_of(frames: Sequence[JudgedFrame], targets: Sequence[ReportedTarget]) -> list[Sighting]:
    """Every satisfying box of every tracked target in every frame, for the aggregator's tracker,
    then its weak boxes (``weak``: they may keep an object already tracked, never start one).

    Only tracked targets (``judge.is_tracked``) have any; sorted by stream time, then target
    order, then strong before weak, then confidence (best first).
    """
    sightings: list[Sighting] = []
    for frame in sorted(frames, key=lambda f: f.stream_time):
        for target in targets:
            hit = frame.hits.get(target.index)
            instances = [*(hit.instances if hit is not None else ()), *frame.weak.get(target.index, ())]
            sightings += [
                Sighting(
                    label=target.label,
                    stream_time=frame.stream_time,
                    box=tuple(round(float(v), 4) for v in instance.box),  # type: ignore[arg-type]
                    confidence=instance.confidence,
                    detail=instance.detail,
                    weak=instance.weak,
                )
                for instance in instances
            ]
    return sightings


def score_chunk(
    chunk: ChunkRecord,
    frames: Sequence[FrameDetections],
    targets: Sequence[str],
    analysis_id: str,
    policy: ScoringPolicy,
) -> list[Event]:
    """Events of plain detector classes (``targets``): each labelled with its class.

    The simple case of ``score_judged`` (a class is satisfied in a frame by its best detection at
    or above ``policy.threshold``), for callers that have detections and class names only.
    """
    judged: list[JudgedFrame] = []
    for frame in frames:
        hits: dict[int, Hit] = {}
        for index, label in enumerate(targets):
            found = [d for d in frame.detections if d.label == label and d.score >= policy.threshold]
            if found:
                best = max(found, key=lambda d: d.score)
                hits[index] = Hit(float(best.score), tuple(best.box), len(found), "")
        judged.append(JudgedFrame(frame.stream_time, hits))
    reported = [ReportedTarget(index, label) for index, label in enumerate(targets)]
    return score_judged(chunk, judged, reported, analysis_id, policy)
