"""Understanding a query: free text -> an ``Interpretation`` the analyzer can act on. Pure.

See ``interpretation`` for the decision rule.
"""

from analyzer.understanding.embedder import Embedder
from analyzer.understanding.grammar import CountOp, RelationKind
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
from analyzer.understanding.vocabulary import ModelKind, Vocabulary, VocabularyError

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
