"""ChunkAnalyzer's tracked targets and sightings, and the session's options in the analyzer.

Pure: a fake detector answering per frame, hand-made interpretations, gray JPEG frames. No model,
no Kafka. Object targets are tracked (``ChunkResult.tracked``) and every satisfying box of every
frame is a ``Sighting``; absence, counts and whole-frame labels are not.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from analyzer.detector import Detection
from analyzer.scoring import ScoringPolicy
from analyzer.service import ChunkAnalyzer
from schemas.interpretation import (
    CountCondition,
    CountOp,
    Decision,
    DurationCondition,
    Interpretation,
    LabelMatch,
    ModelKind,
    Target,
)
from schemas.options import AnalysisOptions, Severity
from schemas.records import ChunkRecord, ChunkResult, Frame, TrackedTarget, chunk_id_for

GRAY = np.full((60, 80, 3), 100, np.uint8)
FRAME_TIMES = [8.0, 8.5, 9.0]  # chunk 2 of 4 s chunks, a frame every 0.5 s


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


GRAY_JPEG = jpeg(GRAY)


def chunk(
    interpretation: Interpretation,
    times: Sequence[float] = FRAME_TIMES,
    *,
    options: AnalysisOptions | None = None,
    frame_jpeg: bytes = GRAY_JPEG,
) -> ChunkRecord:
    return ChunkRecord(
        session_id="s-sight",
        stream_id="cams",
        chunk_id=chunk_id_for("s-sight", 2),
        chunk_index=2,
        start_time=8.0,
        end_time=12.0,
        hls_cumulative_offset=8.0,
        capture_time=times[0] if times else 8.0,
        captured_at=datetime(2026, 1, 1, tzinfo=UTC),
        media_sequences=[2],
        rapid_review_query=interpretation.query,
        interpretation=interpretation,
        options=options,
        frames=[Frame(stream_time=t, width=80, height=60, jpeg=frame_jpeg) for t in times],
    )


@dataclass
class PerFrameDetector:
    """Answers frame ``i`` of a chunk with ``frames[i]`` (the last entry for later frames)."""

    frames: list[list[Detection]]
    model_name: str = "fake-ssd"

    def detect(
        self, images: Sequence[np.ndarray], *, labels: Sequence[Collection[str] | None] | None = None
    ) -> list[list[Detection]]:
        # As the real detector: only the wanted classes (ObjectDetector.detect's ``labels``).
        wanted = labels if labels is not None else [None] * len(images)
        return [
            [d for d in self.frames[min(i, len(self.frames) - 1)] if names is None or d.label in names]
            for i, names in enumerate(wanted)
        ]


def analyzer(*frames: list[Detection]) -> ChunkAnalyzer:
    return ChunkAnalyzer(
        PerFrameDetector(list(frames)),  # type: ignore[arg-type]
        ScoringPolicy(),
        interpret=lambda q: pytest.fail("every record here carries its interpretation"),
        load_classifier=lambda: pytest.fail("no target here needs the classifier"),
    )


def detector_target(phrase: str, label: str, **fields: object) -> Target:
    return Target(
        phrase=phrase,
        noun=label,
        labels=(LabelMatch(label=label, model=ModelKind.DETECTOR, score=1.0),),
        **fields,
    )


def accepted(*targets: Target, query: str) -> Interpretation:
    return Interpretation(query=query, targets=targets, decision=Decision.ACCEPTED)


A_PERSON = accepted(detector_target("person", "person"), query="a person")
LEFT = (0.1, 0.2, 0.3, 0.6)
RIGHT = (0.6, 0.25, 0.85, 0.7)


def two_people(t: int) -> list[Detection]:
    """Two people in frame ``t``: a confident one walking right, a less sure one standing."""
    step = 0.05 * t
    return [
        Detection("person", 0.9, (LEFT[0] + step, LEFT[1], LEFT[2] + step, LEFT[3])),
        Detection("person", 0.7, RIGHT),
    ]


# --------------------------------------------------------------------------- tracked targets


def test_an_object_target_is_tracked_with_every_box_of_every_frame_as_a_sighting() -> None:
    result = analyzer(two_people(0), two_people(1), two_people(2)).analyze(chunk(A_PERSON))
    assert result.status == "ok" and result.error is None
    assert result.targets == ["person"]
    assert result.tracked == [TrackedTarget(label="person")]
    assert result.tracked[0].min_duration_s == 0.0
    assert result.frame_times == FRAME_TIMES
    assert len(result.sightings) == 6
    # Sorted by stream time, then best first within a frame; boxes rounded to 4 places.
    expected = [
        (t, det.score, tuple(round(v, 4) for v in det.box))
        for i, t in enumerate(FRAME_TIMES)
        for det in two_people(i)
    ]
    assert [(s.stream_time, s.confidence, s.box) for s in result.sightings] == expected
    assert {s.label for s in result.sightings} == {"person"}
    assert all(s.detail for s in result.sightings)
    assert [s.box for s in result.sightings[::2]] == [
        (0.1, 0.2, 0.3, 0.6),
        (0.15, 0.2, 0.35, 0.6),
        (0.2, 0.2, 0.4, 0.6),
    ]
    assert all(s.box == RIGHT for s in result.sightings[1::2])
    # The per-chunk events are still there (the events topic).
    assert [e.label for e in result.events] == ["person"]
    # The result survives the topic: sightings and tracked targets round-trip through JSON.
    assert ChunkResult.model_validate_json(result.to_bytes()) == result


def test_a_detection_below_the_threshold_is_no_sighting() -> None:
    frames = [Detection("person", 0.9, LEFT), Detection("person", 0.3, RIGHT), Detection("dog", 0.95, RIGHT)]
    result = analyzer(frames).analyze(chunk(A_PERSON, [4.0]))
    assert [(s.box, s.confidence) for s in result.sightings] == [(LEFT, 0.9)]


def test_frame_times_are_the_chunks_sampled_frames_even_without_sightings() -> None:
    result = analyzer([]).analyze(chunk(A_PERSON, [8.0, 8.5, 9.0, 9.5]))
    assert result.status == "ok"
    assert result.frame_times == [8.0, 8.5, 9.0, 9.5]
    assert result.tracked == [TrackedTarget(label="person")]
    assert result.sightings == [] and result.events == []


@pytest.mark.parametrize(
    ("interpretation", "frames", "label"),
    [
        (
            accepted(
                detector_target("cats", "cat", count=CountCondition(op=CountOp.EXACTLY, n=2)),
                query="two cats",
            ),
            [Detection("cat", 0.9, LEFT), Detection("cat", 0.8, RIGHT)],
            "exactly 2 cats",
        ),
        (accepted(detector_target("cat", "cat", negated=True), query="no cat"), [], "no cat"),
    ],
    ids=["count", "absence"],
)
def test_counts_and_absence_are_not_tracked_but_still_have_events(
    interpretation: Interpretation, frames: list[Detection], label: str
) -> None:
    result = analyzer(frames).analyze(chunk(interpretation))
    assert result.status == "ok"
    assert result.tracked == [] and result.sightings == []
    assert result.targets == [label]
    assert [e.label for e in result.events] == [label]
    assert result.frame_times == FRAME_TIMES


def test_a_whole_frame_classifier_label_is_not_tracked() -> None:
    scene = Target(
        phrase="beach",
        noun="beach",
        labels=(LabelMatch(label="seashore", model=ModelKind.CLASSIFIER, parent=None, score=1.0),),
    )

    class Scenes:
        model_name = "fake-classifier"

        def classify(self, images: Sequence[np.ndarray], top_k: int = 5) -> list[list[tuple[str, float]]]:
            return [[("seashore", 0.9)] for _ in images]

    result = ChunkAnalyzer(
        PerFrameDetector([[]]),  # type: ignore[arg-type]
        ScoringPolicy(),
        classifier=Scenes(),  # type: ignore[arg-type]
    ).analyze(chunk(accepted(scene, query="a beach")))
    assert result.status == "ok", result.error
    assert result.tracked == [] and result.sightings == []


def test_a_tracked_target_with_a_duration_carries_its_minimum_duration() -> None:
    loiter = accepted(
        detector_target("person", "person", duration=DurationCondition(op=CountOp.MORE_THAN, seconds=10)),
        query="a person for more than 10 seconds",
    )
    result = analyzer(two_people(0)).analyze(chunk(loiter))
    assert result.tracked == [TrackedTarget(label=result.targets[0], min_duration_s=10.0)]
    assert len(result.sightings) == 6


def test_an_upper_bound_duration_is_tracked_at_once() -> None:
    brief = accepted(
        detector_target("person", "person", duration=DurationCondition(op=CountOp.AT_MOST, seconds=5)),
        query="a person for at most 5 seconds",
    )
    result = analyzer(two_people(0)).analyze(chunk(brief))
    assert result.tracked == [TrackedTarget(label=result.targets[0], min_duration_s=0.0)]


def test_only_the_object_targets_of_a_mixed_query_are_tracked() -> None:
    mixed = accepted(
        detector_target("person", "person"),
        detector_target("dog", "dog", negated=True),
        query="a person and no dog",
    )
    result = analyzer([Detection("person", 0.9, LEFT)]).analyze(chunk(mixed))
    assert result.targets == ["person", "no dog"]
    assert result.tracked == [TrackedTarget(label="person")]
    assert {s.label for s in result.sightings} == {"person"} and len(result.sightings) == 3
    assert {e.label for e in result.events} == {"person", "no dog"}


# --------------------------------------------------------------------------- session options


def test_the_sessions_detection_threshold_makes_a_weaker_detection_weak() -> None:
    weak = [Detection("person", 0.7, RIGHT)]
    default = analyzer(weak).analyze(chunk(A_PERSON))
    assert len(default.events) == 1 and len(default.sightings) == 3
    assert not any(s.weak for s in default.sightings)

    # 0.7 is below 0.8 but above its keep threshold (0.7 x 0.8 = 0.56): no event, weak sightings
    # only (they may keep an object already tracked, never start one).
    strict = analyzer(weak).analyze(chunk(A_PERSON, options=AnalysisOptions(detection_threshold=0.8)))
    assert strict.status == "ok"
    assert strict.events == []
    assert len(strict.sightings) == 3 and all(s.weak and s.confidence == 0.7 for s in strict.sightings)
    assert strict.tracked == [TrackedTarget(label="person")]

    both = [Detection("person", 0.9, LEFT), *weak]
    kept = analyzer(both).analyze(chunk(A_PERSON, options=AnalysisOptions(detection_threshold=0.8)))
    assert {(s.confidence, s.weak) for s in kept.sightings} == {(0.9, False), (0.7, True)}
    assert len(kept.sightings) == 6

    # Below the keep threshold: no sighting at all.
    faint = analyzer([Detection("person", 0.5, RIGHT)]).analyze(
        chunk(A_PERSON, options=AnalysisOptions(detection_threshold=0.8))
    )
    assert faint.events == [] and faint.sightings == []


def test_a_lower_detection_threshold_admits_a_weaker_detection() -> None:
    faint = [Detection("person", 0.3, RIGHT)]
    assert analyzer(faint).analyze(chunk(A_PERSON)).sightings == []  # below 0.5 x 0.7 too
    lenient = analyzer(faint).analyze(chunk(A_PERSON, options=AnalysisOptions(detection_threshold=0.25)))
    assert len(lenient.sightings) == 3 and len(lenient.events) == 1


def test_the_sessions_severity_thresholds_decide_the_events_severity() -> None:
    seen = [Detection("person", 0.65, LEFT)]
    [default] = analyzer(seen).analyze(chunk(A_PERSON)).events
    assert default.severity is Severity.MEDIUM
    [high] = analyzer(seen).analyze(chunk(A_PERSON, options=AnalysisOptions(severity_high=0.6))).events
    assert high.severity is Severity.HIGH
    [low] = analyzer(seen).analyze(chunk(A_PERSON, options=AnalysisOptions(severity_medium=0.7))).events
    assert low.severity is Severity.LOW


# --------------------------------------------------------------------------- failures


def test_a_failed_chunk_has_no_tracked_targets_and_no_sightings() -> None:
    result = analyzer(two_people(0)).analyze(chunk(A_PERSON, frame_jpeg=b"not a jpeg"))
    assert result.status == "failed" and result.error
    assert result.events == [] and result.tracked == [] and result.sightings == []


def test_a_refused_interpretation_has_no_sightings() -> None:
    refused = Interpretation(query="unicorns", decision=Decision.REFUSED, warnings=("nothing",))
    result = analyzer(two_people(0)).analyze(chunk(refused))
    assert result.status == "failed"
    assert result.tracked == [] and result.sightings == []
