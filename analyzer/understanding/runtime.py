"""The process-wide interpreter over the models built by ``make models``."""

from __future__ import annotations

import functools
from pathlib import Path

from analyzer.classifier import read_labels
from analyzer.embedding import BUILD_HINT, SentenceEmbedder
from analyzer.errors import ModelNotFoundError
from analyzer.models import ModelSettings, read_sidecar
from analyzer.understanding.interpretation import Interpreter
from analyzer.understanding.vocabulary import VectorCache, Vocabulary


@functools.cache
def shared_interpreter() -> Interpreter:
    """MiniLM over COCO + ImageNet-1k, built once per process.

    The ~3,500 label texts are embedded once (~5 s here) and then read from a ``VectorCache``
    beside the model (under a second).

    Raises ``ModelNotFoundError`` (via the loaders) when the models are not built. CPU-bound:
    call it, and ``interpret``, via ``asyncio.to_thread`` from async code.
    """
    settings = ModelSettings()
    if not settings.classifier_labels_path.is_file():
        raise ModelNotFoundError(
            f"ImageNet class names not found; {BUILD_HINT}", path=str(settings.classifier_labels_path)
        )
    names = read_labels(settings.classifier_labels_path)
    embedder = SentenceEmbedder.load()
    sidecar = read_sidecar(settings.text_model_path) or {}
    # The build's sha256 names the model; without a sidecar, its size and mtime do.
    identity = str(sidecar.get("sha256") or _file_identity(settings.text_model_path))
    cache = VectorCache(settings.text_model_path.parent, identity)
    return Interpreter(embedder, Vocabulary.build(names), cache=cache)


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"
