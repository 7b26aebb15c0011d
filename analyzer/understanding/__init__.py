"""Understanding a query: free text -> an ``Interpretation`` the analyzer can act on. Pure.

* ``grammar``: a deterministic parser (no language model): noun phrases, colours, sizes,
  counts, durations, relations, negations and actions;
* ``vocabulary``: the labels a phrase can map to (80 COCO classes with glosses, 1000 ImageNet
  classes with their synonyms and COCO parents) and their embeddings;
* ``resolve``: phrase -> labels by cosine similarity, with calibrated ``Thresholds`` and a
  small override table for what the embedding model gets wrong;
* ``interpretation``: the ``Interpretation`` model, the ``Interpreter`` and the documented
  accept / warn / refuse rule;
* ``runtime``: the process-wide interpreter over the built models.

The interpreter needs only an ``Embedder`` (``embed(texts) -> rows``), so all of it is tested
with a fake embedder; the real one is ``analyzer.embedding.SentenceEmbedder``.
"""

from analyzer.understanding.embedder import Embedder
from analyzer.understanding.interpretation import (
    Condition,
    CountCondition,
    Decision,
    DurationCondition,
    Interpretation,
    Interpreter,
    LabelMatch,
    Target,
)
from analyzer.understanding.resolve import Thresholds
from analyzer.understanding.vocabulary import Vocabulary, VocabularyError
from schemas.interpretation import CountOp, ModelKind, RelationKind

__all__ = [
    "Condition",
    "CountCondition",
    "CountOp",
    "Decision",
    "DurationCondition",
    "Embedder",
    "Interpretation",
    "Interpreter",
    "LabelMatch",
    "ModelKind",
    "RelationKind",
    "Target",
    "Thresholds",
    "Vocabulary",
    "VocabularyError",
]
