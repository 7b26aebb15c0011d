"""ImageNet-1k classes: EfficientNet-Lite0 (ONNX) run by onnxruntime, on frames or detection crops.

The model is built by ``make models`` (``analyzer.models.build_classifier``) from the PyTorch
port of Google's EfficientNet-Lite0 checkpoint. Its preprocessing is the one the checkpoint was
trained and evaluated with (TensorFlow ``models/official/efficientnet``, the ``lite`` builder):

* centre crop: the central square of side ``224 / (224 + 32) * min(height, width)`` (the eval
  "crop padding" of 32 pixels at 224, i.e. 87.5% of the shorter side);
* bicubic resize of that square to 224x224;
* normalisation ``(pixel - 127) / 128`` per RGB channel (EfficientNet-Lite's constants, not the
  ImageNet mean/std of the other EfficientNets), then NCHW float32.

``ImageClassifier.classify`` is safe to call from several threads at once and CPU-bound: call it
via ``asyncio.to_thread`` from async code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from analyzer.errors import AnalyzerError, ModelBuildError, ModelNotFoundError
from analyzer.models import (
    CLASSIFIER_INPUT_NAME,
    CLASSIFIER_INPUT_SIZE,
    CLASSIFIER_NUM_CLASSES,
    CLASSIFIER_OUTPUT_NAME,
    ModelSettings,
)

log = logging.getLogger(__name__)

BUILD_HINT = "build it with `make models` (or `python -m analyzer.models build`)"
# EfficientNet-Lite's training/eval constants (see the module docstring).
CROP_PADDING = 32
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
# Images per session.run: 8-16 crops of 224x224 keep the CPU busy without large buffers.
DEFAULT_MAX_BATCH = 16


def preprocess(image: np.ndarray, size: int = CLASSIFIER_INPUT_SIZE) -> np.ndarray:
    """One HxWx3 uint8 RGB image -> 3xSxS float32, exactly as EfficientNet-Lite0 was evaluated."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise AnalyzerError(
            "images must be HxWx3 uint8 RGB arrays",
            shape=getattr(image, "shape", None),
            dtype=str(getattr(image, "dtype", None)),
        )
    height, width = image.shape[:2]
    if min(height, width) < 1:
        raise AnalyzerError("cannot classify an empty image", shape=image.shape)
    crop = max(1, int(size / (size + CROP_PADDING) * min(height, width)))
    top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
    square = Image.fromarray(image[top : top + crop, left : left + crop])
    resized = np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.float32)
    return ((resized - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)


class ImageClassifier:
    """A loaded ImageNet-1k classifier. Build with :meth:`load`."""

    def __init__(self, session: ort.InferenceSession, labels: list[str], max_batch: int) -> None:
        self._session = session
        self._labels = labels
        self._max_batch = max(1, max_batch)

    @classmethod
    def load(
        cls,
        model_path: str | Path | None = None,
        labels_path: str | Path | None = None,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 1,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> ImageClassifier:
        """Open the model and its class names; paths default to the configured cache."""
        settings = ModelSettings()
        model = Path(model_path or settings.classifier_model_path).expanduser()
        labels_file = Path(labels_path or settings.classifier_labels_path).expanduser()
        for what, path in (("ImageNet classifier", model), ("its class names", labels_file)):
            if not path.is_file():
                raise ModelNotFoundError(f"{what} not found; {BUILD_HINT}", path=str(path))
        labels = read_labels(labels_file)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, intra_op_threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(model), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelBuildError(f"onnxruntime cannot load {model}: {exc}; {BUILD_HINT}") from exc
        inputs = [i.name for i in session.get_inputs()]
        if inputs != [CLASSIFIER_INPUT_NAME]:
            raise ModelBuildError(f"{model} is not the ImageNet classifier; {BUILD_HINT}", inputs=inputs)
        log.info("loaded classifier %s (%d intra-op threads)", model, options.intra_op_num_threads)
        return cls(session, labels, max_batch)

    @property
    def labels(self) -> list[str]:
        """The 1000 ImageNet class names, in the model's output order."""
        return list(self._labels)

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Softmax over the 1000 classes, one float32 row per image."""
        if len(images) == 0:
            return np.zeros((0, CLASSIFIER_NUM_CLASSES), dtype=np.float32)
        batch = np.stack([preprocess(image) for image in images])
        rows: list[np.ndarray] = []
        for start in range(0, len(batch), self._max_batch):
            part = batch[start : start + self._max_batch]
            try:
                (logits,) = self._session.run([CLASSIFIER_OUTPUT_NAME], {CLASSIFIER_INPUT_NAME: part})
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise AnalyzerError(
                    f"classification failed: {type(exc).__name__}: {exc}", batch_size=len(part)
                ) from exc
            rows.append(softmax(logits))
        return np.concatenate(rows)

    def classify(self, images: Sequence[np.ndarray], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``top_k`` (label, probability) pairs of each HxWx3 uint8 RGB image, most likely first."""
        probabilities = self.probabilities(images)
        k = max(1, min(top_k, CLASSIFIER_NUM_CLASSES))
        results: list[list[tuple[str, float]]] = []
        for row in probabilities:
            best = np.argpartition(-row, k - 1)[:k]
            best = best[np.argsort(-row[best], kind="stable")]
            results.append([(self._labels[i], float(row[i])) for i in best])
        return results


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def read_labels(path: Path) -> list[str]:
    """The class names, one line per class in output order (WordNet synonyms, comma-separated)."""
    labels = path.read_text().splitlines()
    if len(labels) != CLASSIFIER_NUM_CLASSES:
        raise ModelBuildError(
            f"{path} has {len(labels)} class names, expected {CLASSIFIER_NUM_CLASSES}; {BUILD_HINT}"
        )
    return labels
