"""The real ImageNet classifier (EfficientNet-Lite0, ONNX) through ``ImageClassifier``, on real photos.

Marked ``model``: needs the model built by ``make models`` (``make test`` builds it first). A
missing model fails loudly (the loader says to run ``make models``) rather than skipping.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from analyzer.classifier import ImageClassifier, preprocess
from analyzer.errors import AnalyzerError, ModelNotFoundError
from analyzer.models import CLASSIFIER_NUM_CLASSES, ModelSettings
from analyzer.models.build_classifier import RECIPE_VERSION, cached_sidecar

SETTINGS = ModelSettings()
CAT_LABELS = {"tabby, tabby cat", "tiger cat", "Persian cat", "Siamese cat, Siamese", "Egyptian cat"}
COFFEE_LABELS = {"cup", "espresso"}


@pytest.fixture(scope="module")
def classifier() -> ImageClassifier:
    return ImageClassifier.load(intra_op_threads=2)


def labels(result: list[tuple[str, float]]) -> set[str]:
    return {label for label, _ in result}


@pytest.mark.model
def test_top5_of_real_photos_and_a_crop(classifier: ImageClassifier) -> None:
    chelsea = data.chelsea()
    cat_head = chelsea[20:250, 100:330]  # a detection-sized crop, off-centre in the photo
    cat, coffee, crop = classifier.classify([chelsea, data.coffee(), cat_head], top_k=5)
    assert labels(cat) & CAT_LABELS, cat
    assert labels(coffee) & COFFEE_LABELS, coffee
    assert labels(crop) & CAT_LABELS, crop
    for result in (cat, coffee, crop):
        probabilities = [p for _, p in result]
        assert len(result) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert 0.0 < sum(probabilities) <= 1.0 + 1e-5


@pytest.mark.model
def test_probabilities_sum_to_one_and_batching_changes_nothing(classifier: ImageClassifier) -> None:
    images = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    batched = classifier.probabilities(images)
    assert batched.shape == (4, CLASSIFIER_NUM_CLASSES) and batched.dtype == np.float32
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-4)
    alone = np.concatenate([classifier.probabilities([image]) for image in images])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert classifier.classify([]) == []


def test_preprocessing_is_efficientnet_lite_eval() -> None:
    # A 256x512 image: the central 224x224 of its 256x256 centre square, normalised (x - 127) / 128.
    image = np.zeros((256, 512, 3), dtype=np.uint8)
    image[:, 128:384] = 255  # the centre square is white, the sides black
    tensor = preprocess(image)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, (255 - 127) / 128, atol=1e-6)
    np.testing.assert_allclose(preprocess(np.full((10, 10, 3), 127, np.uint8)), 0.0, atol=1e-6)


def test_rejects_images_that_are_not_rgb_uint8() -> None:
    with pytest.raises(AnalyzerError, match="uint8 RGB"):
        preprocess(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(AnalyzerError, match="uint8 RGB"):
        preprocess(np.zeros((32, 32, 3), dtype=np.float32))


@pytest.mark.model
def test_cost_per_crop(classifier: ImageClassifier, capsys: pytest.CaptureFixture[str]) -> None:
    crop = data.chelsea()[20:250, 100:330]
    lines = []
    for batch_size in (1, 8):
        classifier.classify([crop] * batch_size)  # warm-up
        started = time.perf_counter()
        classifier.classify([crop] * batch_size)
        lines.append(f"batch {batch_size}: {(time.perf_counter() - started) * 1000 / batch_size:.1f} ms/crop")
    with capsys.disabled():
        print(f"\nImageNet classifier (2 threads): {', '.join(lines)}")


@pytest.mark.model
def test_cached_build_of_this_recipe() -> None:
    sidecar = cached_sidecar(SETTINGS.classifier_model_path)
    assert sidecar is not None and sidecar["recipe_version"] == RECIPE_VERSION
    assert SETTINGS.classifier_labels_path.name in sidecar["files"]
    assert sidecar["verification"]["max_prob_diff"] < 1e-3


def test_missing_model_tells_to_run_make_models(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="make models"):
        ImageClassifier.load(tmp_path / "absent.onnx", tmp_path / "absent.labels.txt")


@pytest.mark.model
def test_make_models_is_a_cache_hit_in_well_under_a_second() -> None:
    from analyzer.models.build import build_all

    started = time.perf_counter()
    results = build_all(SETTINGS)
    assert [r.built for r in results] == [False, False, False]
    assert time.perf_counter() - started < 1.0
