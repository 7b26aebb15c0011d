"""What the interpreter needs from a sentence-embedding model (``analyzer.embedding.SentenceEmbedder``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors, one row per text, similar meaning -> high dot product."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...
