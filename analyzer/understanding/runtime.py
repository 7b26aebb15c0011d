"""The process-wide interpreter over the models built by ``make models``."""

from __future__ import annotations

import functools

from analyzer.classifier import read_labels
from analyzer.embedding import BUILD_HINT, SentenceEmbedder
from analyzer.errors import ModelNotFoundError
from analyzer.models import ModelSettings
from analyzer.understanding.interpretation import Interpreter
from analyzer.understanding.vocabulary import Vocabulary


@functools.cache
def shared_interpreter() -> Interpreter:
    """MiniLM over COCO + ImageNet-1k, built once per process (embeds ~3,500 label texts, ~5 s).

    Raises ``ModelNotFoundError`` (via the loaders) when the models are not built. CPU-bound:
    call it, and ``interpret``, via ``asyncio.to_thread`` from async code.
    """
    settings = ModelSettings()
    if not settings.classifier_labels_path.is_file():
        raise ModelNotFoundError(
            f"ImageNet class names not found; {BUILD_HINT}", path=str(settings.classifier_labels_path)
        )
    names = read_labels(settings.classifier_labels_path)
    return Interpreter(SentenceEmbedder.load(), Vocabulary.build(names))
