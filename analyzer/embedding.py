"""Sentence embeddings: all-MiniLM-L6-v2 (ONNX) run by onnxruntime, tokenized by ``tokenizers``.

The model is built by ``make models`` (``analyzer.models.build_text``). It returns one 384-d
vector per token; this wrapper does what sentence-transformers does after the transformer for
this model: mean over the real tokens (the attention mask excludes padding) and L2
normalisation, so the dot product of two rows is their cosine similarity.

``SentenceEmbedder.embed`` is safe to call from several threads at once and CPU-bound: call it
via ``asyncio.to_thread`` from async code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from analyzer.errors import AnalyzerError, ModelBuildError, ModelNotFoundError
from analyzer.models import (
    TEXT_EMBEDDING_DIM,
    TEXT_INPUT_NAMES,
    TEXT_MAX_TOKENS,
    TEXT_OUTPUT_NAME,
    ModelSettings,
)

log = logging.getLogger(__name__)

BUILD_HINT = "build it with `make models` (or `python -m analyzer.models build`)"
# Texts per session.run: padding grows with the longest text of a batch, so moderate batches
# of short phrases (the queries' and labels' typical size) are the efficient case.
DEFAULT_MAX_BATCH = 32


class SentenceEmbedder:
    """A loaded sentence-embedding model. Build with :meth:`load`."""

    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer, max_batch: int) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._max_batch = max(1, max_batch)

    @classmethod
    def load(
        cls,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 1,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> SentenceEmbedder:
        """Open the model and its tokenizer; paths default to the configured cache.

        ``intra_op_threads`` defaults to 1: queries are embedded once per session, and the
        analyzer's cores belong to the detector.
        """
        settings = ModelSettings()
        model = Path(model_path or settings.text_model_path).expanduser()
        tokenizer_file = Path(tokenizer_path or settings.text_tokenizer_path).expanduser()
        for what, path in (("sentence-embedding model", model), ("its tokenizer", tokenizer_file)):
            if not path.is_file():
                raise ModelNotFoundError(f"{what} not found; {BUILD_HINT}", path=str(path))
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # The shipped tokenizer.json pads every text to 128 tokens and truncates there; pad to
        # the batch's longest text instead (mean pooling ignores padding) and truncate where
        # sentence-transformers does for this model.
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        tokenizer.enable_truncation(max_length=TEXT_MAX_TOKENS)
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
        if sorted(inputs) != sorted(TEXT_INPUT_NAMES):
            raise ModelBuildError(f"{model} is not the sentence-embedding model; {BUILD_HINT}", inputs=inputs)
        log.info("loaded sentence embedder %s (%d intra-op threads)", model, options.intra_op_num_threads)
        return cls(session, tokenizer, max_batch)

    @property
    def dimension(self) -> int:
        return TEXT_EMBEDDING_DIM

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text, shape (len(texts), 384)."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        rows: list[np.ndarray] = [np.zeros((0, TEXT_EMBEDDING_DIM), dtype=np.float32)]
        for start in range(0, len(texts), self._max_batch):
            rows.append(self._embed_batch(texts[start : start + self._max_batch]))
        return np.concatenate(rows)

    def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        try:
            (tokens,) = self._session.run([TEXT_OUTPUT_NAME], feeds)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise AnalyzerError(f"embedding failed: {type(exc).__name__}: {exc}", texts=len(texts)) from exc
        mask = feeds["attention_mask"][:, :, None].astype(np.float32)
        summed = (tokens * mask).sum(axis=1)
        # sentence-transformers clamps the token count at 1e-9; a text always has [CLS]/[SEP].
        pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
