"""Per-frame judgements: which of an interpretation's targets each frame satisfies, and by which boxes.

Pure: detections, pixels and the interpretation in, ``JudgedFrame``s out; the image classifier
is passed in (anything with ``classify(images, top_k)``), so tests use a fake one. The service
calls ``judge_chunk`` in its inference thread.

A target's *candidates* in a frame are the boxes (or, for whole-frame classifier labels, the
frame) that match its labels, colour and size:

* **detector label**: a detection of that COCO class; it *satisfies* when its score is at least
  ``Thresholds.detection``; confidence = the score.
* **classifier label with a parent**: a detection of the parent class at or above
  ``Thresholds.detection`` is cropped with ``CROP_MARGIN`` of its size on each side and
  classified (one batch per chunk: every crop of every frame, plus the whole frames below).
  The target's share of the crop = the summed probabilities of its labels that are in the
  crop's top ``Thresholds.classifier_top_k``; it satisfies at ``Thresholds.classifier_probability``
  or more; confidence = that share times the parent's detection score (both must be right).
* **classifier label without a parent** (whole frames): the same share on the whole frame;
  a candidate without a box; confidence = the share.
* **colour** (``analyzer.colour``): the box's named colour must be the target's.
* **size**: the box's share of the frame's area: "small" at most ``SMALL_MAX_AREA``, "large"
  at least ``LARGE_MIN_AREA``.
* **zone** (the session's ``zones``): the zone's box, in every frame, with confidence 1; a zone
  the session does not define has no candidate (its relations never hold).

Conditions (``Condition``; subject and object are target indexes) filter the subject's
satisfying boxes; the objects are judged on their own labels, colour and size (their own
conditions and counts are not followed). Geometry is in pixels of the frame, so aspect ratio
does not bend it:

* **near**: the gap between the two boxes (0 when they overlap, else the shortest distance
  between their edges) is at most ``NEAR_GAP_FRACTION`` of the larger box's size
  (the square root of its area).
* **on**: the subject's bottom edge lies between ``ON_ABOVE_TOLERANCE`` of the object's height
  above the object's top edge and the middle of the object (its top half), and at least
  ``ON_MIN_OVERLAP`` of the subject's width overlaps the object horizontally.
* **holding**: the subject's box is a person's, and at least ``HOLDING_MIN_OVERLAP`` of the
  object's box lies inside the subject's box.
* **inside**: the subject's centre is inside the object's box.
* evaluation **"frame"** (one side has no box), or a side judged on a whole frame: the
  relation holds when both are present in the frame.

A subject box that satisfies a relation takes confidence = min(its own, the best related
object's): the event is only as sure as its weaker half. A negated condition keeps the subject
boxes related to no satisfying object box (frame evaluation: the object is absent).

Then, per target:

* **count** (``CountCondition``): the number of satisfying boxes compared with ``op n``; the
  confidence is the score of the weakest box the count needs (the 4th best for "more than 3"),
  and the best box's when the count needs none ("at most 2").
* **absence** (``negated``): satisfied when the target is *not* present (no satisfying box, or
  its count does not hold); confidence = 1 - the best score of its near misses (candidates
  below the thresholds), 1.0 when there are none; no box.
* a target that is the subject of a condition is satisfied only where the condition holds.

Which targets become events (``reported_targets``): every target except those that are only the
objects of conditions ("a cup" in "a person holding a cup" is what the person holds, not a
query about cups). Their event label is ``target_label``: the target's phrase with its count
and negation words and the phrases of the conditions it is the subject of ("more than 3 people
near the door", "no person", "red car"). Duration conditions are not judged per chunk: they
span chunks, so the aggregator applies them (``duration_note``).

An open query (no targets) is every COCO class as a plain detector target (``open_query_targets``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from analyzer.colour import ColourReading, read_colour
from analyzer.models.coco_labels import COCO_CLASS_NAMES
from schemas.interpretation import (
    Condition,
    CountCondition,
    CountOp,
    Interpretation,
    LabelMatch,
    ModelKind,
    RelationKind,
    Target,
)

Box = tuple[float, float, float, float]

# Crops keep a little context around the box: classifiers were trained on photos, not tight boxes.
CROP_MARGIN = 0.10
SMALL_MAX_AREA = 0.02  # of the frame's area: a cup on a table across the room
LARGE_MIN_AREA = 0.15  # a car filling a sixth of the frame and more
NEAR_GAP_FRACTION = 0.5
ON_ABOVE_TOLERANCE = 0.10  # boxes are loose: a cup on a table may end slightly above its box
ON_MIN_OVERLAP = 0.5
HOLDING_MIN_OVERLAP = 0.2
PERSON = "person"

COUNT_WORDS: dict[CountOp, str] = {
    CountOp.AT_LEAST: "at least",
    CountOp.MORE_THAN: "more than",
    CountOp.EXACTLY: "exactly",
    CountOp.AT_MOST: "at most",
    CountOp.FEWER_THAN: "fewer than",
}


class DetectionLike(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def box(self) -> Box: ...


class ClassifierLike(Protocol):
    def classify(self, images: Sequence[np.ndarray], top_k: int = 5) -> list[list[tuple[str, float]]]: ...


@dataclass(frozen=True)
class Thresholds:
    detection: float = 0.5
    classifier_probability: float = 0.15
    classifier_top_k: int = 5
    # Hysteresis: an object already tracked stays in view down to this share of ``detection``.
    keep_ratio: float = 0.7

    @property
    def keep(self) -> float:
        return self.detection * self.keep_ratio


@dataclass(frozen=True)
class FrameInput:
    """One sampled frame: its detections and (when the interpretation needs them) its pixels."""

    stream_time: float
    detections: Sequence[DetectionLike]
    image: np.ndarray | None = None  # HxWx3 uint8 RGB


@dataclass(frozen=True)
class Instance:
    """One satisfying box of a target in one frame: an object the aggregator tracks."""

    box: Box
    confidence: float
    detail: str
    weak: bool = False  # below the detection threshold, above the keep threshold (``Thresholds.keep``)


@dataclass(frozen=True)
class Hit:
    """A target satisfied in one frame."""

    confidence: float
    box: Box | None  # the best satisfying box; None for absence and whole-frame targets
    count: int  # satisfying boxes (0 for absence)
    detail: str  # what was seen, for the event's description
    # Every satisfying box, best first, for tracked targets (``is_tracked``); empty otherwise.
    instances: tuple[Instance, ...] = ()


@dataclass(frozen=True)
class JudgedFrame:
    stream_time: float
    hits: Mapping[int, Hit] = field(default_factory=dict)  # target index -> hit, satisfied targets only
    # Tracked targets: their weak boxes (below the detection threshold, above the keep threshold,
    # satisfying everything else), which keep an object already tracked in view but start nothing.
    weak: Mapping[int, tuple[Instance, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Candidate:
    box: Box | None
    confidence: float
    satisfies: bool
    what: str  # "cup 0.91", "espresso on a cup box (p=0.89)"
    coco_label: str | None  # the detection's class (holding needs a person)
    colour: ColourReading | None = None
    # A detector box below the detection threshold but at or above the keep threshold: it may
    # keep an object already tracked in view (hysteresis), never start one.
    weak: bool = False


# --------------------------------------------------------------------------- targets and labels


@functools.cache
def open_query_targets() -> tuple[Target, ...]:
    """Every COCO class as a plain detector target: what an empty query reports.

    Built once (frozen models): the judge asks for it per frame and target, and rebuilding 80
    targets each time cost an open query ~40 ms per frame (``bench/bench_query_cost.py``)."""
    return tuple(
        Target(phrase=name, noun=name, labels=(LabelMatch(label=name, model=ModelKind.DETECTOR, score=1.0),))
        for name in COCO_CLASS_NAMES
    )


def targets_of(interpretation: Interpretation) -> tuple[Target, ...]:
    return open_query_targets() if interpretation.open_query else interpretation.targets


def count_words(count: CountCondition) -> str:
    return f"{COUNT_WORDS[count.op]} {count.n}"


def target_label(interpretation: Interpretation, index: int) -> str:
    """The event label of target ``index``: its phrase with count, negation and relation words."""
    target = targets_of(interpretation)[index]
    label = target.phrase
    if target.count is not None:
        label = f"{count_words(target.count)} {label}"
    if target.negated:
        label = f"not {label}" if target.count is not None else f"no {label}"
    for condition in interpretation.conditions:
        if condition.subject == index:
            label = f"{label} {condition.phrase}"
    return label


def reported_targets(interpretation: Interpretation) -> list[tuple[int, str]]:
    """(index, label) of the targets that become events, in query order (see the module docstring)."""
    subjects = {c.subject for c in interpretation.conditions}
    objects_only = {c.object for c in interpretation.conditions} - subjects
    return [
        (index, target_label(interpretation, index))
        for index in range(len(targets_of(interpretation)))
        if index not in objects_only
    ]


def is_tracked(target: Target) -> bool:
    """True when the target is objects, each with a box: its events are tracks of its sightings.

    Not tracked: absence ("no person": nothing to track), counts ("more than 3 people": a state of
    the frame, counted per frame) and targets answered on whole frames (a scene has no box).
    """
    return (
        not target.negated
        and target.count is None
        and bool(target.labels)
        and all(m.model is ModelKind.DETECTOR or m.parent is not None for m in target.labels)
    )


def min_duration_s(target: Target) -> float:
    """How long a tracked object must be seen before it is an event: the query's "for at least N s"."""
    duration = target.duration
    if duration is None or duration.op not in (CountOp.AT_LEAST, CountOp.MORE_THAN):
        return 0.0
    return float(duration.seconds)


def duration_note(target: Target) -> str | None:
    """The duration the aggregator must check on merged events, for the description; None if none."""
    if target.duration is None:
        return None
    return (
        f"must last {COUNT_WORDS[target.duration.op]} {target.duration.seconds:g} s "
        "(judged across chunks, not in this one)"
    )


# --------------------------------------------------------------------------- what the chunk needs


def detector_labels(interpretation: Interpretation) -> frozenset[str]:
    """The COCO classes whose detections the judge reads: the targets' detector labels and the
    parents whose crops the classifier judges. Empty when only whole frames and zones are judged.

    The analyzer asks the detector for these only (``analyzer.detector``, class heads): the judge
    never looks at a detection of another class, so its findings are the same.
    """
    labels: set[str] = set()
    for target in targets_of(interpretation):
        for match in target.labels:
            if match.model is ModelKind.DETECTOR:
                labels.add(match.label)
            elif match.model is ModelKind.CLASSIFIER and match.parent is not None:
                labels.add(match.parent)
    return frozenset(labels)


def needs_pixels(interpretation: Interpretation) -> bool:
    """True when colours or the classifier are judged: the frames' pixels must be kept."""
    return any(t.colour is not None or _classifier_labels(t) for t in targets_of(interpretation))


def needs_crops(interpretation: Interpretation) -> bool:
    """True when a classifier label runs on detection crops (worth decoding frames at full size)."""
    return any(m.parent is not None for t in targets_of(interpretation) for m in _classifier_labels(t))


def needs_classifier(interpretation: Interpretation) -> bool:
    return any(_classifier_labels(t) for t in targets_of(interpretation))


def _classifier_labels(target: Target) -> list[LabelMatch]:
    return [m for m in target.labels if m.model is ModelKind.CLASSIFIER]


def _parents(interpretation: Interpretation) -> set[str]:
    return {
        m.parent for t in targets_of(interpretation) for m in _classifier_labels(t) if m.parent is not None
    }


def _whole_frame_needed(interpretation: Interpretation) -> bool:
    return any(m.parent is None for t in targets_of(interpretation) for m in _classifier_labels(t))


def short_name(imagenet_name: str) -> str:
    """An ImageNet class as the vocabulary names it: its first synonym ("tabby, tabby cat" -> "tabby")."""
    return imagenet_name.split(",")[0].strip()


def crop(image: np.ndarray, box: Box, margin: float = CROP_MARGIN) -> np.ndarray:
    """The pixels of normalised ``box`` with ``margin`` of its size added on each side, inside the image."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    left, right = max(0, round((x0 - mx) * width)), min(width, round((x1 + mx) * width))
    top, bottom = max(0, round((y0 - my) * height)), min(height, round((y1 + my) * height))
    return image[top : max(bottom, top + 1), left : max(right, left + 1)]


@dataclass(frozen=True)
class Classifications:
    """Classifier results of one chunk: short name -> probability, top-k only."""

    crops: Mapping[tuple[int, int], Mapping[str, float]]  # (frame index, detection index)
    frames: Mapping[int, Mapping[str, float]]  # whole frames


def classify_chunk(
    interpretation: Interpretation,
    frames: Sequence[FrameInput],
    classifier: ClassifierLike | None,
    thresholds: Thresholds,
) -> Classifications:
    """Every crop and whole frame the interpretation needs, classified in one ``classify`` call."""
    parents = _parents(interpretation)
    whole = _whole_frame_needed(interpretation)
    images: list[np.ndarray] = []
    keys: list[tuple[int, int] | int] = []
    for f, frame in enumerate(frames):
        if frame.image is None:
            continue
        for d, detection in enumerate(frame.detections):
            # Crops only of parents the detector is sure of: their share is multiplied by that score.
            if detection.label in parents and detection.score >= thresholds.detection:
                images.append(crop(frame.image, detection.box))
                keys.append((f, d))
        if whole:
            images.append(frame.image)
            keys.append(f)
    if not images:
        return Classifications({}, {})
    if classifier is None:
        raise ValueError("the interpretation needs the image classifier, and none is loaded")
    results = classifier.classify(images, top_k=thresholds.classifier_top_k)
    crops: dict[tuple[int, int], dict[str, float]] = {}
    whole_frames: dict[int, dict[str, float]] = {}
    for key, top in zip(keys, results, strict=True):
        probabilities: dict[str, float] = {}
        for name, probability in top:
            short = short_name(name)
            probabilities[short] = probabilities.get(short, 0.0) + float(probability)
        if isinstance(key, tuple):
            crops[key] = probabilities
        else:
            whole_frames[key] = probabilities
    return Classifications(crops, whole_frames)


# --------------------------------------------------------------------------- judging one frame


def _share(labels: Sequence[LabelMatch], probabilities: Mapping[str, float]) -> tuple[float, str]:
    """The summed probability of ``labels`` among ``probabilities`` and the likeliest of them."""
    found = [(probabilities[m.label], m.label) for m in labels if m.label in probabilities]
    if not found:
        return 0.0, labels[0].label if labels else ""
    return sum(p for p, _ in found), max(found)[1]


def _size_ok(target: Target, box: Box) -> bool:
    if target.size is None:
        return True
    area = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
    return area <= SMALL_MAX_AREA if target.size == "small" else area >= LARGE_MIN_AREA


def _candidates(
    target: Target,
    frame_index: int,
    frame: FrameInput,
    classifications: Classifications,
    thresholds: Thresholds,
    zones: Mapping[str, Box],
) -> list[_Candidate]:
    # A zone is where the session said it is, in every frame: one certain box.
    found: list[_Candidate] = [
        _Candidate(zones[m.label], 1.0, True, f"zone '{m.label}'", None)
        for m in target.labels
        if m.model is ModelKind.ZONE and m.label in zones
    ]
    detector = {m.label for m in target.labels if m.model is ModelKind.DETECTOR}
    by_parent: dict[str, list[LabelMatch]] = {}
    whole: list[LabelMatch] = []
    for m in _classifier_labels(target):
        if m.parent is None:
            whole.append(m)
        else:
            by_parent.setdefault(m.parent, []).append(m)
    for d, detection in enumerate(frame.detections):
        x0, y0, x1, y1 = detection.box
        box: Box = (float(x0), float(y0), float(x1), float(y1))
        if detection.label in detector:
            score = float(detection.score)
            candidate = _Candidate(
                box,
                score,
                score >= thresholds.detection,
                f"{detection.label} {detection.score:.2f}",
                detection.label,
                weak=thresholds.keep <= score < thresholds.detection,
            )
        elif detection.label in by_parent and (frame_index, d) in classifications.crops:
            share, best = _share(by_parent[detection.label], classifications.crops[(frame_index, d)])
            if share <= 0.0:
                continue
            candidate = _Candidate(
                box,
                share * float(detection.score),
                share >= thresholds.classifier_probability and detection.score >= thresholds.detection,
                f"{best} on a {detection.label} box (p={share:.2f} x {detection.score:.2f})",
                detection.label,
            )
        else:
            continue
        if not _size_ok(target, box):
            continue
        if target.colour is not None:
            reading = read_colour(frame.image, box) if frame.image is not None else None
            if reading is None or reading.name != target.colour:
                continue
            candidate = dataclasses.replace(
                candidate,
                what=f"{candidate.what}, {reading.name} on {reading.share:.0%} of its central pixels",
                colour=reading,
            )
        found.append(candidate)
    if whole and frame_index in classifications.frames:
        share, best = _share(whole, classifications.frames[frame_index])
        if share > 0.0:
            found.append(
                _Candidate(
                    None,
                    share,
                    share >= thresholds.classifier_probability,
                    f"{best} on the whole frame (p={share:.2f})",
                    None,
                )
            )
    return found


def _gap_and_scale(a: Box, b: Box, width: int, height: int) -> tuple[float, float]:
    ax0, ay0, ax1, ay1 = a[0] * width, a[1] * height, a[2] * width, a[3] * height
    bx0, by0, bx1, by1 = b[0] * width, b[1] * height, b[2] * width, b[3] * height
    dx = max(0.0, bx0 - ax1, ax0 - bx1)
    dy = max(0.0, by0 - ay1, ay0 - by1)
    scale = max(
        math.sqrt(max(0.0, (ax1 - ax0) * (ay1 - ay0))), math.sqrt(max(0.0, (bx1 - bx0) * (by1 - by0)))
    )
    return math.hypot(dx, dy), scale


def relation_holds(
    relation: RelationKind,
    subject: Box,
    obj: Box,
    *,
    subject_label: str | None = None,
    width: int = 1,
    height: int = 1,
) -> bool:
    """The geometric rule of ``relation`` between two normalised boxes (module docstring)."""
    sx0, sy0, sx1, sy1 = subject
    ox0, oy0, ox1, oy1 = obj
    if relation is RelationKind.NEAR:
        gap, scale = _gap_and_scale(subject, obj, width, height)
        return gap <= NEAR_GAP_FRACTION * scale
    if relation is RelationKind.ON:
        object_height = oy1 - oy0
        bottom_ok = oy0 - ON_ABOVE_TOLERANCE * object_height <= sy1 <= oy0 + object_height / 2
        overlap = max(0.0, min(sx1, ox1) - max(sx0, ox0))
        return bottom_ok and sx1 > sx0 and overlap >= ON_MIN_OVERLAP * (sx1 - sx0)
    if relation is RelationKind.HOLDING:
        if subject_label != PERSON:
            return False
        inter = max(0.0, min(sx1, ox1) - max(sx0, ox0)) * max(0.0, min(sy1, oy1) - max(sy0, oy0))
        area = (ox1 - ox0) * (oy1 - oy0)
        return area > 0 and inter >= HOLDING_MIN_OVERLAP * area
    if relation is RelationKind.INSIDE:
        cx, cy = (sx0 + sx1) / 2, (sy0 + sy1) / 2
        return ox0 <= cx <= ox1 and oy0 <= cy <= oy1
    raise ValueError(f"unknown relation {relation}")


def _apply_condition(
    condition: Condition,
    subject: list[_Candidate],
    objects: list[_Candidate],
    width: int,
    height: int,
) -> list[_Candidate]:
    """The subject's satisfying candidates that meet ``condition`` (module docstring)."""
    present = [o for o in objects if o.satisfies]
    by_frame = (
        condition.evaluation == "frame"
        or any(c.box is None for c in subject)
        or any(o.box is None for o in present)
    )
    kept: list[_Candidate] = []
    for candidate in subject:
        if by_frame or candidate.box is None:
            related = present
        else:
            related = [
                o
                for o in present
                if o.box is not None
                and relation_holds(
                    condition.relation,
                    candidate.box,
                    o.box,
                    subject_label=candidate.coco_label,
                    width=width,
                    height=height,
                )
            ]
        if condition.negated:
            if not related:
                kept.append(candidate)
            continue
        if related:
            best = max(o.confidence for o in related)
            how = "in the same frame" if by_frame or candidate.box is None else "by box geometry"
            kept.append(
                dataclasses.replace(
                    candidate,
                    confidence=min(candidate.confidence, best),
                    what=f"{candidate.what}; {condition.phrase} ({how})",
                )
            )
    return kept


def _count_holds(count: CountCondition, n: int) -> bool:
    op, k = count.op, count.n
    return {
        CountOp.AT_LEAST: n >= k,
        CountOp.MORE_THAN: n > k,
        CountOp.EXACTLY: n == k,
        CountOp.AT_MOST: n <= k,
        CountOp.FEWER_THAN: n < k,
    }[op]


def _needed(count: CountCondition | None) -> int:
    """How many boxes the count needs at least (1 without a count)."""
    if count is None:
        return 1
    return {
        CountOp.AT_LEAST: count.n,
        CountOp.MORE_THAN: count.n + 1,
        CountOp.EXACTLY: count.n,
        CountOp.AT_MOST: 0,
        CountOp.FEWER_THAN: 0,
    }[count.op]


def judge_frame(
    interpretation: Interpretation,
    frame_index: int,
    frame: FrameInput,
    classifications: Classifications,
    thresholds: Thresholds,
    zones: Mapping[str, Box] | None = None,
) -> JudgedFrame:
    """The targets ``frame`` satisfies, each with its confidence, best box and what was seen.

    ``zones`` are the session's named regions (``AnalysisOptions.zones``) that zone targets are."""
    targets = targets_of(interpretation)
    height, width = frame.image.shape[:2] if frame.image is not None else (1, 1)
    candidates = [
        _candidates(t, frame_index, frame, classifications, thresholds, zones or {}) for t in targets
    ]
    hits: dict[int, Hit] = {}
    weak: dict[int, tuple[Instance, ...]] = {}
    for index, target in enumerate(targets):
        present = [c for c in candidates[index] if c.satisfies]
        below = [c for c in candidates[index] if c.weak] if is_tracked(target) else []
        for condition in interpretation.conditions:
            if condition.subject == index:
                present = _apply_condition(condition, present, candidates[condition.object], width, height)
                below = _apply_condition(condition, below, candidates[condition.object], width, height)
        if below:
            weak[index] = tuple(
                Instance(c.box, round(float(c.confidence), 4), c.what, weak=True)  # type: ignore[arg-type]
                for c in sorted(below, key=lambda c: -c.confidence)
            )
        present.sort(key=lambda c: -c.confidence)
        boxed = [c for c in present if c.box is not None]
        # Boxes are counted; a whole-frame classifier hit is one sighting (its count is not judged).
        number = len(boxed) if boxed else (1 if present else 0)
        holds = bool(present) if target.count is None else _count_holds(target.count, number)
        if target.negated:
            if holds:
                continue
            misses = [c.confidence for c in candidates[index] if not c.satisfies]
            nearest = max(misses, default=0.0)
            detail = f"none above the thresholds, nearest miss {nearest:.2f}" if misses else "none detected"
            hits[index] = Hit(round(1.0 - nearest, 4), None, 0, detail)
            continue
        if not holds:
            continue
        needed = _needed(target.count)
        if needed >= 1:
            confidence = present[needed - 1].confidence
        elif present:
            confidence = present[0].confidence
        else:
            # "at most 2 people" with nobody there: as sure as an absence.
            misses = [c.confidence for c in candidates[index] if not c.satisfies]
            confidence = 1.0 - max(misses, default=0.0)
        best = present[0] if present else None
        detail = f"{number} in the frame" if target.count is not None else ""
        if best is not None:
            detail = f"{detail}; best: {best.what}" if detail else best.what
        instances = (
            tuple(Instance(c.box, round(float(c.confidence), 4), c.what) for c in boxed)  # type: ignore[arg-type]
            if is_tracked(target)
            else ()
        )
        hits[index] = Hit(
            round(float(confidence), 4), best.box if best else None, number, detail or "none", instances
        )
    return JudgedFrame(frame.stream_time, hits, weak)


def judge_chunk(
    interpretation: Interpretation,
    frames: Sequence[FrameInput],
    classifier: ClassifierLike | None,
    thresholds: Thresholds,
    zones: Mapping[str, Box] | None = None,
) -> list[JudgedFrame]:
    """Judge every frame of a chunk; the classifier runs once, on all crops and frames together."""
    classifications = classify_chunk(interpretation, frames, classifier, thresholds)
    return [
        judge_frame(interpretation, i, frame, classifications, thresholds, zones)
        for i, frame in enumerate(frames)
    ]


__all__ = [
    "Classifications",
    "ClassifierLike",
    "DetectionLike",
    "FrameInput",
    "Hit",
    "Instance",
    "JudgedFrame",
    "Thresholds",
    "classify_chunk",
    "crop",
    "detector_labels",
    "duration_note",
    "is_tracked",
    "judge_chunk",
    "judge_frame",
    "min_duration_s",
    "needs_classifier",
    "needs_crops",
    "needs_pixels",
    "open_query_targets",
    "relation_holds",
    "reported_targets",
    "target_label",
    "targets_of",
]
