"""ChunkAnalyzer judging interpretations: with fakes (pure), then with the real models on photos.

The second half is marked ``model``: the SSD detector, EfficientNet-Lite0 and MiniLM built by
``make models``, on skimage's photos. It also prints the analysis cost per frame with and
without the classifier (``pytest -s``), the figures the README quotes.
"""

from __future__ import annotations

import io
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from analyzer.classifier import ImageClassifier
from analyzer.detector import Detection, ObjectDetector, default_intra_op_threads
from analyzer.models import default_model_path
from analyzer.scoring import ScoringPolicy
from analyzer.service import ChunkAnalyzer
from analyzer.understanding.runtime import shared_interpreter
from schemas.interpretation import Decision, Interpretation, LabelMatch, ModelKind, Target
from schemas.records import ChunkRecord, Frame, chunk_id_for


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def chunk(images: Sequence[np.ndarray], query: str | None, index: int = 0) -> ChunkRecord:
    return ChunkRecord(
        session_id="s-int",
        stream_id="cams",
        chunk_id=chunk_id_for("s-int", index),
        chunk_index=index,
        start_time=index * 4.0,
        end_time=index * 4.0 + len(images) * 0.5,
        hls_cumulative_offset=index * 4.0,
        capture_time=index * 4.0,
        captured_at=datetime(2026, 1, 1, tzinfo=UTC),
        media_sequences=[index],
        rapid_review_query=query,
        frames=[
            Frame(stream_time=index * 4.0 + i * 0.5, width=im.shape[1], height=im.shape[0], jpeg=jpeg(im))
            for i, im in enumerate(images)
        ],
    )


# --------------------------------------------------------------------------- with fakes


@dataclass
class FakeDetector:
    detections: list[Detection]
    model_name: str = "fake-ssd"

    def detect(
        self, images: Sequence[np.ndarray], *, labels: Sequence[Collection[str] | None] | None = None
    ) -> list[list[Detection]]:
        # As the real detector: only the wanted classes (ObjectDetector.detect's ``labels``).
        wanted = labels if labels is not None else [None] * len(images)
        return [[d for d in self.detections if names is None or d.label in names] for names in wanted]


def dog_target(phrase: str = "dog") -> Target:
    return Target(
        phrase=phrase, noun="dog", labels=(LabelMatch(label="dog", model=ModelKind.DETECTOR, score=1.0),)
    )


def accepted(*targets: Target, query: str = "a dog") -> Interpretation:
    return Interpretation(query=query, targets=targets, decision=Decision.ACCEPTED)


GRAY = np.full((60, 80, 3), 100, np.uint8)


def test_records_without_an_interpretation_are_interpreted_once_per_query() -> None:
    calls: list[str | None] = []

    def interpret(query: str | None) -> Interpretation:
        calls.append(query)
        return accepted(dog_target("puppy"), query=query or "")

    analyzer = ChunkAnalyzer(
        FakeDetector([Detection("dog", 0.8, (0.1, 0.1, 0.5, 0.5))]),  # type: ignore[arg-type]
        ScoringPolicy(),
        interpret=interpret,
        load_classifier=lambda: pytest.fail("no target needs the classifier"),
    )
    results = [analyzer.analyze(chunk([GRAY, GRAY], "a puppy", index=i)) for i in range(3)]
    assert calls == ["a puppy"]
    assert all(r.status == "ok" and r.targets == ["puppy"] for r in results)
    assert [e.label for r in results for e in r.events] == ["puppy"] * 3


def test_each_frame_asks_the_detector_for_its_querys_classes_only() -> None:
    asked: list[Collection[str] | None] = []

    class RecordingDetector(FakeDetector):
        def detect(
            self, images: Sequence[np.ndarray], *, labels: Sequence[Collection[str] | None] | None = None
        ) -> list[list[Detection]]:
            asked.extend(labels if labels is not None else [None] * len(images))
            return super().detect(images, labels=labels)

    detections = [Detection("dog", 0.8, (0.1, 0.1, 0.5, 0.5)), Detection("cat", 0.9, (0.5, 0.5, 0.9, 0.9))]
    analyzer = ChunkAnalyzer(
        RecordingDetector(detections),  # type: ignore[arg-type]
        ScoringPolicy(),
        interpret=lambda q: pytest.fail("the records carry their interpretations"),
    )
    cat = Target(
        phrase="cat", noun="cat", labels=(LabelMatch(label="cat", model=ModelKind.DETECTOR, score=1.0),)
    )
    dogs = chunk([GRAY, GRAY], "a dog").model_copy(update={"interpretation": accepted(dog_target())})
    cats = chunk([GRAY], "a cat", index=1).model_copy(update={"interpretation": accepted(cat, query="a cat")})
    # Two sessions' chunks in one batch, as the service batches them: one detector call.
    results = analyzer.analyze_many([dogs, cats])
    assert asked == [{"dog"}, {"dog"}, {"cat"}]
    assert [[e.label for e in r.events] for r in results] == [["dog"], ["cat"]]


def test_the_interpretation_a_record_carries_wins_over_its_query() -> None:
    analyzer = ChunkAnalyzer(
        FakeDetector([Detection("dog", 0.8, (0.1, 0.1, 0.5, 0.5))]),  # type: ignore[arg-type]
        ScoringPolicy(),
        interpret=lambda q: pytest.fail("the record carries its interpretation"),
    )
    record = chunk([GRAY], "a hound").model_copy(update={"interpretation": accepted(dog_target("hound"))})
    result = analyzer.analyze(record)
    assert result.targets == ["hound"] and [e.label for e in result.events] == ["hound"]


def test_a_refused_interpretation_fails_the_chunk_with_its_reasons() -> None:
    refused = Interpretation(
        query="detect unicorns",
        decision=Decision.REFUSED,
        warnings=("'unicorns' matches nothing the models can see",),
    )
    analyzer = ChunkAnalyzer(FakeDetector([]), ScoringPolicy(), interpret=lambda q: refused)  # type: ignore[arg-type]
    result = analyzer.analyze(chunk([GRAY], "detect unicorns"))
    assert result.status == "failed" and result.events == []
    assert result.error is not None and "query refused" in result.error and "unicorns" in result.error


def test_the_classifier_is_loaded_on_first_need_only() -> None:
    loads: list[int] = []

    class Fake:
        def classify(self, images: Sequence[np.ndarray], top_k: int = 5) -> list[list[tuple[str, float]]]:
            return [[("forklift", 0.7)] for _ in images]

    def load() -> Fake:
        loads.append(1)
        return Fake()

    forklift = Target(
        phrase="forklift",
        noun="forklift",
        labels=(LabelMatch(label="forklift", model=ModelKind.CLASSIFIER, score=1.0),),
    )
    queries = {"a dog": accepted(dog_target()), "a forklift": accepted(forklift, query="a forklift")}
    analyzer = ChunkAnalyzer(
        FakeDetector([]),  # type: ignore[arg-type]
        ScoringPolicy(),
        interpret=queries.__getitem__,
        load_classifier=load,
    )
    assert analyzer.analyze(chunk([GRAY], "a dog")).events == [] and loads == []
    first = analyzer.analyze(chunk([GRAY, GRAY], "a forklift"))
    analyzer.analyze(chunk([GRAY], "a forklift", index=1))
    assert loads == [1]
    [event] = first.events
    assert (event.label, event.box, event.confidence) == ("forklift", None, 0.7)


def test_an_open_query_reports_every_class_above_the_higher_floor() -> None:
    open_query = Interpretation(query=None, decision=Decision.ACCEPTED_WITH_WARNINGS, open_query=True)
    detections = [Detection("dog", 0.65, (0.1, 0.1, 0.5, 0.5)), Detection("cat", 0.55, (0.5, 0.5, 0.9, 0.9))]
    analyzer = ChunkAnalyzer(FakeDetector(detections), ScoringPolicy(), interpret=lambda q: open_query)  # type: ignore[arg-type]
    result = analyzer.analyze(chunk([GRAY], None))
    assert len(result.targets) == 80 and [e.label for e in result.events] == ["dog"]


# --------------------------------------------------------------------------- real models, real photos


@pytest.fixture(scope="module")
def analyzer() -> ChunkAnalyzer:
    # Threads as ``python -m analyzer`` loads them: the cost figures are the service's.
    classifier = ImageClassifier.load(intra_op_threads=default_intra_op_threads())
    return ChunkAnalyzer(ObjectDetector.load(default_model_path()), ScoringPolicy(), classifier=classifier)


def red_cup() -> np.ndarray:
    """skimage's coffee with the cup (and its saucer's middle) recoloured red, shading kept."""
    image = skdata.coffee().astype(np.float32)
    height, width = image.shape[:2]
    top, bottom, left, right = int(0.02 * height), int(0.63 * height), int(0.28 * width), int(0.70 * width)
    region = image[top:bottom, left:right]
    region[:] = region.mean(axis=2, keepdims=True) * np.array([1.0, 0.15, 0.15], np.float32)
    return image.clip(0, 255).astype(np.uint8)


@pytest.mark.model
def test_a_cat_on_chelsea_is_an_event_labelled_with_the_phrase(analyzer: ChunkAnalyzer) -> None:
    gray = np.full((300, 451, 3), 128, np.uint8)
    cat = skdata.chelsea()
    result = analyzer.analyze(chunk([gray, cat, cat, gray], "is there a cat?"))
    assert result.status == "ok" and result.targets == ["cat"]
    [event] = result.events
    assert (event.label, event.start_time, event.end_time) == ("cat", 0.5, 1.5)
    assert event.confidence > 0.8 and event.box is not None and event.thumbnail_time == 0.5


@pytest.mark.model
def test_a_red_cup_is_judged_on_its_pixels(analyzer: ChunkAnalyzer) -> None:
    red, white = red_cup(), skdata.coffee()
    [event] = analyzer.analyze(chunk([red, red], "a red cup")).events
    assert event.label == "red cup" and event.confidence > 0.8 and "red on" in event.description
    assert analyzer.analyze(chunk([red, red], "a blue cup")).events == []
    assert analyzer.analyze(chunk([white, white], "a red cup")).events == []
    # Absence: no red cup in the original photo.
    [absent] = analyzer.analyze(chunk([white, white], "no red cup")).events
    assert absent.label == "no red cup" and absent.box is None


@pytest.mark.model
def test_an_espresso_by_the_classifier_on_the_cup_crop_and_on_the_whole_frame(
    analyzer: ChunkAnalyzer,
) -> None:
    coffee, cat = skdata.coffee(), skdata.chelsea()
    on_cups = Interpretation(
        query="an espresso",
        targets=(
            Target(
                phrase="espresso",
                noun="espresso",
                labels=(LabelMatch(label="espresso", model=ModelKind.CLASSIFIER, parent="cup", score=1.0),),
            ),
        ),
        decision=Decision.ACCEPTED_WITH_WARNINGS,
    )
    crops = ChunkAnalyzer(
        ObjectDetector.load(default_model_path()),
        ScoringPolicy(),
        classifier=ImageClassifier.load(),
        interpret=lambda q: on_cups,
    )
    [event] = crops.analyze(chunk([coffee, cat], "an espresso")).events
    assert event.label == "espresso" and event.box is not None and event.end_time == 0.5
    assert event.confidence > 0.7 and "espresso on a cup box" in event.description
    # The interpreter itself reads "an espresso" as a whole-frame ImageNet class: no box.
    assert not shared_interpreter().interpret("an espresso").targets[0].located
    [whole] = analyzer.analyze(chunk([coffee, cat], "an espresso")).events
    assert whole.label == "espresso" and whole.box is None and whole.confidence > 0.8


@pytest.mark.model
def test_cost_per_frame_with_and_without_the_classifier(analyzer: ChunkAnalyzer) -> None:
    """Prints the figures for the README (2 CPU cores here); asserts only that it all ran."""
    frames = [skdata.coffee()] * 8
    analyzer.analyze(chunk(frames[:1], "a cup"))  # warm-up
    costs: dict[str, float] = {}
    for what, query in (
        ("detector only", "a cup"),
        ("detector + colour", "a red cup"),
        ("detector + classifier on whole frames", "an espresso"),
        ("detector + classifier on cup crops", "a coffee mug"),
    ):
        record = chunk(frames, query)
        runs: list[float] = []
        for _ in range(3):  # the best of three: the cores are shared, noise only ever adds time
            started = time.perf_counter()
            result = analyzer.analyze(record)
            runs.append((time.perf_counter() - started) * 1000 / len(frames))
            assert result.status == "ok", result.error
        costs[what] = min(runs)
    for what, ms in costs.items():
        print(f"analysis cost per frame ({len(frames)} frames of 600x400 per chunk), {what}: {ms:.1f} ms")
    assert all(ms > 0 for ms in costs.values())
