"""Per-frame judgements of an interpretation (analyzer.judge, analyzer.colour) and their events.

Pure: synthetic frames, hand-made detections and interpretations, a fake classifier. No model,
no Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest

from analyzer.colour import read_colour
from analyzer.judge import (
    Classifications,
    FrameInput,
    Thresholds,
    crop,
    detector_labels,
    judge_chunk,
    judge_frame,
    needs_classifier,
    needs_crops,
    needs_pixels,
    relation_holds,
    reported_targets,
    target_label,
)
from analyzer.models.coco_labels import COCO_CLASS_NAMES
from analyzer.scoring import ReportedTarget, ScoringPolicy, score_judged
from analyzer.service import _notes
from schemas.interpretation import (
    Condition,
    CountCondition,
    CountOp,
    Decision,
    DurationCondition,
    Interpretation,
    LabelMatch,
    ModelKind,
    RelationKind,
    Target,
)
from schemas.records import ChunkRecord, chunk_id_for

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Det:
    label: str
    score: float
    box: Box = (0.1, 0.1, 0.5, 0.5)


def detector_target(phrase: str, label: str, **fields: object) -> Target:
    return Target(
        phrase=phrase,
        noun=label,
        labels=(LabelMatch(label=label, model=ModelKind.DETECTOR, score=1.0),),
        **fields,
    )


def classifier_target(phrase: str, label: str, parent: str | None) -> Target:
    match = LabelMatch(label=label, model=ModelKind.CLASSIFIER, parent=parent, score=1.0)
    return Target(phrase=phrase, noun=phrase, labels=(match,))


def interp(*targets: Target, conditions: Sequence[Condition] = ()) -> Interpretation:
    return Interpretation(
        query="test", targets=tuple(targets), conditions=tuple(conditions), decision=Decision.ACCEPTED
    )


def judge(interpretation: Interpretation, detections: list[Det], image: np.ndarray | None = None) -> dict:
    frame = FrameInput(0.0, detections, image)
    return dict(judge_chunk(interpretation, [frame], None, Thresholds())[0].hits)


def painted(
    boxes: Sequence[tuple[Box, tuple[int, int, int]]], size: tuple[int, int] = (200, 300)
) -> np.ndarray:
    """A mid-gray frame with each normalised box filled with its RGB colour."""
    height, width = size
    image = np.full((height, width, 3), 90, np.uint8)
    for (x0, y0, x1, y1), rgb in boxes:
        image[int(y0 * height) : int(y1 * height), int(x0 * width) : int(x1 * width)] = rgb
    return image


# --------------------------------------------------------------------------- colour


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((200, 20, 20), "red"),
        ((240, 140, 20), "orange"),
        ((230, 220, 30), "yellow"),
        ((30, 160, 40), "green"),
        ((30, 60, 200), "blue"),
        ((40, 200, 220), "blue"),  # cyan is folded into blue
        ((130, 40, 200), "purple"),
        ((250, 150, 180), "pink"),  # light, weakly saturated red
        ((220, 40, 180), "pink"),  # magenta
        ((120, 70, 20), "brown"),  # dark orange
        ((10, 10, 10), "black"),
        ((245, 245, 245), "white"),
        ((128, 128, 128), "gray"),
        ((60, 60, 62), "black"),  # dark unsaturated
    ],
)
def test_a_box_of_one_colour_is_named(rgb: tuple[int, int, int], name: str) -> None:
    box = (0.2, 0.2, 0.6, 0.8)
    reading = read_colour(painted([(box, rgb)]), box)
    assert reading is not None and reading.name == name and reading.share > 0.9


def test_a_red_car_with_dark_windows_is_red_and_a_white_van_with_a_red_logo_is_white() -> None:
    box = (0.0, 0.0, 1.0, 1.0)
    car = np.zeros((100, 100, 3), np.uint8)
    car[:, :] = (200, 20, 20)
    car[25:60, :] = (20, 20, 25)  # windows and tyres: most of the central region is dark
    reading = read_colour(car, box)
    assert reading is not None and reading.name == "red" and reading.share < 0.5
    van = np.full((100, 100, 3), 240, np.uint8)
    van[45:52, 40:60] = (200, 20, 20)  # a small logo in the middle
    assert (reading := read_colour(van, box)) is not None and reading.name == "white"


def test_only_the_central_region_counts_and_tiny_boxes_are_not_judged() -> None:
    box = (0.2, 0.2, 0.8, 0.8)
    image = painted([(box, (30, 60, 200)), ((0.35, 0.35, 0.65, 0.65), (200, 20, 20))])
    # The blue border is outside the central half of the box: the red middle names it.
    assert (reading := read_colour(image, box)) is not None and reading.name == "red"
    assert read_colour(image, (0.5, 0.5, 0.505, 0.505)) is None


def test_colour_target_matches_on_pixels() -> None:
    red_box, blue_box = (0.05, 0.1, 0.35, 0.6), (0.55, 0.1, 0.95, 0.6)
    image = painted([(red_box, (210, 30, 30)), (blue_box, (30, 60, 210))])
    detections = [Det("car", 0.9, red_box), Det("car", 0.8, blue_box)]
    red = judge(interp(detector_target("red car", "car", colour="red")), detections, image)
    assert red[0].box == red_box and red[0].confidence == 0.9 and "red on" in red[0].detail
    blue = judge(interp(detector_target("blue car", "car", colour="blue")), detections, image)
    assert blue[0].box == blue_box and blue[0].confidence == 0.8
    assert judge(interp(detector_target("green car", "car", colour="green")), detections, image) == {}


# --------------------------------------------------------------------------- labels, size, counts


def test_detector_labels_match_by_class_above_the_threshold() -> None:
    target = interp(detector_target("cat", "cat"))
    assert judge(target, [Det("cat", 0.49), Det("dog", 0.9)]) == {}
    [hit] = judge(target, [Det("cat", 0.3), Det("cat", 0.7, (0.2, 0.2, 0.4, 0.4))]).values()
    assert (hit.confidence, hit.box, hit.count) == (0.7, (0.2, 0.2, 0.4, 0.4), 1)


def test_size_is_the_share_of_the_frame() -> None:
    small_box, large_box = (0.1, 0.1, 0.2, 0.2), (0.3, 0.3, 0.9, 0.9)  # 1 % and 36 % of the frame
    detections = [Det("dog", 0.8, small_box), Det("dog", 0.7, large_box)]
    assert judge(interp(detector_target("small dog", "dog", size="small")), detections)[0].box == small_box
    assert judge(interp(detector_target("large dog", "dog", size="large")), detections)[0].box == large_box
    assert judge(interp(detector_target("large dog", "dog", size="large")), detections[:1]) == {}


@pytest.mark.parametrize(
    ("op", "n", "boxes", "satisfied"),
    [
        (CountOp.MORE_THAN, 3, 4, True),
        (CountOp.MORE_THAN, 3, 3, False),
        (CountOp.AT_LEAST, 2, 2, True),
        (CountOp.EXACTLY, 2, 3, False),
        (CountOp.AT_MOST, 2, 2, True),
        (CountOp.FEWER_THAN, 2, 2, False),
    ],
)
def test_counts_compare_satisfying_boxes_per_frame(op: CountOp, n: int, boxes: int, satisfied: bool) -> None:
    target = interp(detector_target("people", "person", count=CountCondition(op=op, n=n)))
    scores = [0.9, 0.8, 0.7, 0.6, 0.55][:boxes]
    detections = [Det("person", s, (0.1 * i, 0.1, 0.1 * i + 0.05, 0.5)) for i, s in enumerate(scores)]
    detections.append(Det("person", 0.3))  # below the threshold: not counted
    hits = judge(target, detections)
    assert (0 in hits) is satisfied
    if satisfied:
        assert hits[0].count == boxes


def test_a_count_is_as_sure_as_the_weakest_box_it_needs() -> None:
    target = interp(detector_target("people", "person", count=CountCondition(op=CountOp.MORE_THAN, n=2)))
    detections = [Det("person", s) for s in (0.95, 0.9, 0.6, 0.55)]
    [hit] = judge(target, detections).values()
    assert hit.confidence == 0.6 and hit.count == 4 and hit.box == detections[0].box
    assert hit.detail.startswith("4 in the frame")


# --------------------------------------------------------------------------- absence


def test_absence_is_satisfied_without_a_satisfying_box() -> None:
    no_cat = interp(detector_target("cat", "cat", negated=True))
    [hit] = judge(no_cat, []).values()
    assert (hit.confidence, hit.box, hit.count, hit.detail) == (1.0, None, 0, "none detected")
    [near_miss] = judge(no_cat, [Det("cat", 0.35), Det("dog", 0.9)]).values()
    assert near_miss.confidence == 0.65 and "nearest miss 0.35" in near_miss.detail
    assert judge(no_cat, [Det("cat", 0.8)]) == {}


def test_absence_of_a_colour_ignores_objects_of_other_colours() -> None:
    box = (0.2, 0.2, 0.6, 0.8)
    blue_car = painted([(box, (30, 60, 210))])
    no_red_car = interp(detector_target("red car", "car", colour="red", negated=True))
    assert judge(no_red_car, [Det("car", 0.9, box)], blue_car)[0].confidence == 1.0
    red_car = painted([(box, (210, 30, 30))])
    assert judge(no_red_car, [Det("car", 0.9, box)], red_car) == {}


# --------------------------------------------------------------------------- relations


def test_near_is_a_gap_below_half_the_larger_box() -> None:
    person = (0.10, 0.10, 0.30, 0.90)  # sqrt(area) = 0.4
    assert relation_holds(RelationKind.NEAR, person, (0.45, 0.5, 0.55, 0.6))  # gap 0.15 <= 0.2
    assert relation_holds(RelationKind.NEAR, person, (0.2, 0.5, 0.4, 0.6))  # overlapping
    assert not relation_holds(RelationKind.NEAR, person, (0.55, 0.5, 0.65, 0.6))  # gap 0.25
    # In pixels: on a wide frame the same normalised gap is longer than the boxes' size.
    assert not relation_holds(RelationKind.NEAR, person, (0.45, 0.5, 0.55, 0.6), width=400, height=100)


def test_on_needs_the_bottom_in_the_objects_top_half_and_overlap() -> None:
    table = (0.2, 0.5, 0.8, 0.9)
    assert relation_holds(RelationKind.ON, (0.4, 0.3, 0.5, 0.55), table)  # a cup on the table
    assert relation_holds(RelationKind.ON, (0.4, 0.3, 0.5, 0.49), table)  # just above its box
    assert not relation_holds(RelationKind.ON, (0.4, 0.3, 0.5, 0.8), table)  # bottom in its lower half
    assert not relation_holds(RelationKind.ON, (0.4, 0.1, 0.5, 0.3), table)  # floating above
    assert not relation_holds(RelationKind.ON, (0.7, 0.3, 0.95, 0.55), table)  # mostly beside it


def test_holding_needs_a_person_overlapping_the_object() -> None:
    person, cup = (0.2, 0.1, 0.5, 0.9), (0.45, 0.4, 0.6, 0.5)  # a third of the cup inside the person
    assert relation_holds(RelationKind.HOLDING, person, cup, subject_label="person")
    assert not relation_holds(RelationKind.HOLDING, person, cup, subject_label="dog")
    assert not relation_holds(RelationKind.HOLDING, person, (0.6, 0.4, 0.7, 0.5), subject_label="person")


def test_inside_is_the_subjects_centre_in_the_objects_box() -> None:
    car = (0.2, 0.2, 0.8, 0.8)
    assert relation_holds(RelationKind.INSIDE, (0.3, 0.3, 0.5, 0.5), car)
    assert relation_holds(RelationKind.INSIDE, (0.1, 0.1, 0.5, 0.5), car)  # centre (0.3, 0.3)
    assert not relation_holds(RelationKind.INSIDE, (0.0, 0.0, 0.3, 0.3), car)


def person_holding_cup(negated: bool = False, evaluation: str = "boxes") -> Interpretation:
    condition = Condition(
        relation=RelationKind.HOLDING,
        subject=0,
        object=1,
        negated=negated,
        phrase="without a cup" if negated else "holding a cup",
        evaluation=evaluation,  # type: ignore[arg-type]
    )
    return interp(detector_target("person", "person"), detector_target("cup", "cup"), conditions=[condition])


def test_the_detector_is_asked_for_the_classes_the_judge_reads() -> None:
    assert detector_labels(interp(detector_target("cat", "cat"))) == {"cat"}
    # Both sides of a relation are targets; a classifier label on crops needs its parent's boxes.
    assert detector_labels(person_holding_cup()) == {"person", "cup"}
    assert detector_labels(interp(classifier_target("espresso", "espresso", "cup"))) == {"cup"}
    # Whole frames and zones need no detection at all.
    assert detector_labels(interp(classifier_target("a beach", "seashore", None))) == frozenset()
    zone = Target(
        phrase="door", noun="door", labels=(LabelMatch(label="door", model=ModelKind.ZONE, score=1.0),)
    )
    assert detector_labels(interp(zone)) == frozenset()
    # An open query reads every COCO class.
    open_query = Interpretation(query="", decision=Decision.ACCEPTED, open_query=True)
    assert detector_labels(open_query) == set(COCO_CLASS_NAMES) and len(COCO_CLASS_NAMES) == 80


def test_a_subject_is_satisfied_only_where_its_condition_holds() -> None:
    holder, other = (0.1, 0.1, 0.4, 0.9), (0.6, 0.1, 0.9, 0.9)
    cup = (0.35, 0.4, 0.45, 0.5)
    hits = judge(
        person_holding_cup(), [Det("person", 0.9, other), Det("person", 0.8, holder), Det("cup", 0.7, cup)]
    )
    # The holder, not the more confident person beside it; as sure as the cup.
    assert (
        hits[0].box == holder
        and hits[0].confidence == 0.7
        and "holding a cup (by box geometry)" in hits[0].detail
    )
    assert judge(person_holding_cup(), [Det("person", 0.9, other), Det("cup", 0.7, cup)]).get(0) is None
    assert judge(person_holding_cup(), [Det("person", 0.9, holder), Det("cup", 0.4, cup)]).get(0) is None


def test_a_negated_condition_keeps_subjects_related_to_no_object() -> None:
    holder, other = (0.1, 0.1, 0.4, 0.9), (0.6, 0.1, 0.9, 0.9)
    cup = (0.35, 0.4, 0.45, 0.5)
    hits = judge(
        person_holding_cup(negated=True),
        [Det("person", 0.8, holder), Det("person", 0.6, other), Det("cup", 0.7, cup)],
    )
    assert hits[0].box == other and hits[0].confidence == 0.6


def test_frame_evaluation_is_both_in_the_frame() -> None:
    far_apart = [Det("person", 0.8, (0.0, 0.0, 0.1, 0.2)), Det("cup", 0.7, (0.9, 0.9, 1.0, 1.0))]
    assert 0 in judge(person_holding_cup(evaluation="frame"), far_apart)
    assert 0 not in judge(person_holding_cup(evaluation="frame"), far_apart[:1])


# --------------------------------------------------------------------------- the classifier


class FakeClassifier:
    """Bright crops are golden retrievers, dark ones Chihuahuas; whole frames (wide) are forklifts."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int]]] = []

    def classify(self, images: Sequence[np.ndarray], top_k: int = 5) -> list[list[tuple[str, float]]]:
        self.calls.append([image.shape[:2] for image in images])
        results = []
        for image in images:
            if image.shape[1] >= 300:
                results.append([("forklift", 0.6), ("golf cart, golfcart", 0.1)])
            elif image.mean() > 128:
                results.append([("golden retriever", 0.5), ("Labrador retriever", 0.3)])
            else:
                results.append([("Chihuahua", 0.9), ("golden retriever", 0.05)])
        return results


def dogs_frame() -> tuple[np.ndarray, list[Det]]:
    bright, dark = (0.1, 0.2, 0.4, 0.8), (0.6, 0.2, 0.9, 0.8)
    image = painted([(bright, (220, 200, 160)), (dark, (40, 30, 20))])
    return image, [Det("dog", 0.9, bright), Det("dog", 0.8, dark), Det("dog", 0.3, (0.0, 0.0, 0.1, 0.1))]


def test_classifier_labels_run_on_the_parents_crops_in_one_batch() -> None:
    image, detections = dogs_frame()
    retriever = interp(classifier_target("golden retriever", "golden retriever", "dog"))
    assert needs_classifier(retriever) and needs_crops(retriever) and needs_pixels(retriever)
    fake = FakeClassifier()
    frames = [FrameInput(t, detections, image) for t in (0.0, 0.5, 1.0)]
    judged = judge_chunk(retriever, frames, fake, Thresholds())
    # One call for the whole chunk: the two confident dog boxes of each of the three frames.
    assert len(fake.calls) == 1 and len(fake.calls[0]) == 6
    for frame in judged:
        hit = frame.hits[0]
        assert hit.box == detections[0].box and hit.confidence == pytest.approx(0.5 * 0.9, abs=1e-4)
        assert "golden retriever on a dog box" in hit.detail


def test_classifier_probability_below_the_threshold_or_outside_the_top_k_is_refused() -> None:
    image, detections = dogs_frame()
    retriever = interp(classifier_target("golden retriever", "golden retriever", "dog"))
    frame = FrameInput(0.0, detections, image)
    strict = Thresholds(classifier_probability=0.6)
    assert judge_chunk(retriever, [frame], FakeClassifier(), strict)[0].hits == {}
    # The dark crop's 0.05 for golden retriever does not make it one.
    chihuahua = interp(classifier_target("chihuahua", "Chihuahua", "dog"))
    [hit] = judge_chunk(chihuahua, [frame], FakeClassifier(), Thresholds())[0].hits.values()
    assert hit.box == detections[1].box


def test_whole_frame_classifier_targets_have_no_box() -> None:
    image, detections = dogs_frame()
    forklift = interp(classifier_target("forklift", "forklift", None))
    assert needs_classifier(forklift) and not needs_crops(forklift)
    fake = FakeClassifier()
    [frame] = judge_chunk(forklift, [FrameInput(0.0, detections, image)], fake, Thresholds())
    assert fake.calls == [[(200, 300)]]
    assert (frame.hits[0].box, frame.hits[0].confidence) == (None, 0.6)
    assert "forklift on the whole frame" in frame.hits[0].detail


def test_a_chunk_without_classifier_targets_never_calls_it() -> None:
    image, detections = dogs_frame()
    judged = judge_chunk(
        interp(detector_target("dog", "dog")), [FrameInput(0.0, detections, image)], None, Thresholds()
    )
    assert judged[0].hits[0].confidence == 0.9


def test_crops_keep_a_margin_inside_the_frame() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    assert crop(image, (0.25, 0.25, 0.75, 0.75)).shape == (60, 120, 3)
    assert crop(image, (0.0, 0.0, 0.5, 1.0)).shape == (100, 110, 3)


# --------------------------------------------------------------------------- labels and events


def test_labels_are_the_phrases_with_count_negation_and_relation_words() -> None:
    people = detector_target("people", "person", count=CountCondition(op=CountOp.MORE_THAN, n=3))
    car = detector_target("red car", "car", colour="red")
    near = Condition(relation=RelationKind.NEAR, subject=0, object=1, phrase="near the red car")
    query = interp(people, car, detector_target("cat", "cat", negated=True), conditions=[near])
    assert target_label(query, 0) == "more than 3 people near the red car"
    assert target_label(query, 2) == "no cat"
    # The car is only the object of a relation: not reported alone.
    assert reported_targets(query) == [(0, "more than 3 people near the red car"), (2, "no cat")]
    open_query = Interpretation(query="", decision=Decision.ACCEPTED_WITH_WARNINGS, open_query=True)
    assert [label for _, label in reported_targets(open_query)][:3] == ["person", "bicycle", "car"]


def chunk_record(query: str = "test") -> ChunkRecord:
    return ChunkRecord(
        session_id="s1",
        stream_id="st",
        chunk_id=chunk_id_for("s1", 2),
        chunk_index=2,
        start_time=8.0,
        end_time=10.0,
        hls_cumulative_offset=8.0,
        capture_time=8.0,
        captured_at=datetime(2026, 1, 1, tzinfo=UTC),
        media_sequences=[4],
        rapid_review_query=query,
        frames=[],
    )


def test_events_carry_the_label_what_was_seen_and_the_duration_left_to_the_aggregator() -> None:
    box = (0.2, 0.2, 0.6, 0.8)
    image = painted([(box, (210, 30, 30))])
    red_cars = detector_target(
        "red car", "car", colour="red", duration=DurationCondition(op=CountOp.MORE_THAN, seconds=10)
    )
    query = interp(red_cars, detector_target("dog", "dog", negated=True))
    frames = [
        FrameInput(8.0, [Det("car", 0.7, box)], image),
        FrameInput(8.5, [Det("car", 0.9, box)], image),
        FrameInput(9.0, [Det("dog", 0.8, box)], image),
        FrameInput(9.5, [], image),
    ]
    judged = judge_chunk(query, frames, None, Thresholds())
    reported = [ReportedTarget(i, label, _notes(query.targets[i])) for i, label in reported_targets(query)]
    no_dog, car_event = score_judged(
        chunk_record(), judged, reported, "a1", ScoringPolicy()
    )  # by time, label
    assert (car_event.label, car_event.start_time, car_event.end_time) == ("red car", 8.0, 9.0)
    assert car_event.confidence == 0.9 and car_event.box == box and car_event.thumbnail_time == 8.5
    assert car_event.description.startswith("red car visible from 00:08 to 00:09 (max confidence 0.90)")
    assert "red on" in car_event.description and "must last more than 10 s" in car_event.description
    # No dog in the first two frames and the last (a one-frame gap is bridged): one event.
    assert (no_dog.label, no_dog.start_time, no_dog.end_time, no_dog.box) == ("no dog", 8.0, 10.0, None)
    assert no_dog.confidence == 1.0 and no_dog.thumbnail_time == 8.0


def test_judge_frame_uses_the_frames_pixels_for_geometry() -> None:
    # The same normalised boxes are near on a square frame and far apart on a very wide one.
    near = Condition(relation=RelationKind.NEAR, subject=0, object=1, phrase="near a car")
    query = interp(detector_target("person", "person"), detector_target("car", "car"), conditions=[near])
    detections = [Det("person", 0.9, (0.1, 0.1, 0.3, 0.9)), Det("car", 0.8, (0.45, 0.5, 0.55, 0.6))]
    square = FrameInput(0.0, detections, np.zeros((100, 100, 3), np.uint8))
    wide = FrameInput(0.0, detections, np.zeros((100, 400, 3), np.uint8))
    empty = judge_chunk(query, [], None, Thresholds())
    assert empty == []
    none = Classifications({}, {})
    assert 0 in judge_frame(query, 0, square, none, Thresholds()).hits
    assert 0 not in judge_frame(query, 0, wide, none, Thresholds()).hits
