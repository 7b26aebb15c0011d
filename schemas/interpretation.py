"""The interpretation of a query (``rapid_review_query``): the record every service agrees on.

Computed once, by the API at start-session (``analyzer.understanding``: a grammar for the query's
structure, sentence embeddings to map its noun phrases onto the models' vocabularies); carried by
``StartSession`` and every ``ChunkRecord`` of the session; shown on the session (``SessionHeader``)
and returned by start-session. What each field means, and the rule behind ``decision``, is in
``analyzer/understanding/interpretation.py``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CountOp(StrEnum):
    AT_LEAST = ">="
    MORE_THAN = ">"
    EXACTLY = "=="
    AT_MOST = "<="
    FEWER_THAN = "<"


class RelationKind(StrEnum):
    NEAR = "near"
    HOLDING = "holding"
    ON = "on"
    INSIDE = "inside"


class ModelKind(StrEnum):
    """Which model answers a label."""

    DETECTOR = "detector"  # COCO classes of the SSD detector: boxes
    CLASSIFIER = "classifier"  # ImageNet-1k classes: on detection crops of a parent, or on whole frames
    ZONE = "zone"  # a region of the frame the session named (start option ``zones``): a fixed box


Size = Literal["small", "large"]


class Decision(StrEnum):
    ACCEPTED = "accepted"
    ACCEPTED_WITH_WARNINGS = "accepted_with_warnings"
    REFUSED = "refused"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LabelMatch(_Frozen):
    """One vocabulary label a target stands for, the model that answers it, and how well it matched."""

    label: str
    model: ModelKind
    # Classifier labels: the COCO class whose detection crops the classifier runs on; None = whole frames.
    parent: str | None = None
    score: float = Field(ge=-1.0, le=1.0, description="cosine similarity of the phrase and the label")


class CountCondition(_Frozen):
    op: CountOp
    n: int = Field(ge=0)


class DurationCondition(_Frozen):
    op: CountOp
    seconds: float = Field(gt=0)


class Target(_Frozen):
    """One object the query asks about."""

    phrase: str  # as written, with its attributes: "red car"
    noun: str  # the head noun: "car"
    labels: tuple[LabelMatch, ...]
    colour: str | None = None  # a named colour of grammar.COLOURS, judged on the object's pixels
    size: Size | None = None
    count: CountCondition | None = None
    duration: DurationCondition | None = None
    negated: bool = False  # absence: events are the periods when no such object is visible

    @property
    def model(self) -> ModelKind:
        """The model of the best label."""
        return self.labels[0].model

    @property
    def located(self) -> bool:
        """True when the target has boxes: detector labels, classifier labels on a parent's crops, zones."""
        return all(
            m.model in (ModelKind.DETECTOR, ModelKind.ZONE) or m.parent is not None for m in self.labels
        )


class Condition(_Frozen):
    """A relation between two targets (indexes into ``Interpretation.targets``)."""

    relation: RelationKind
    subject: int = Field(ge=0)
    object: int = Field(ge=0)
    negated: bool = False
    phrase: str  # "near the door"
    # boxes: judged on the two objects' boxes; frame: one side has no box (a whole-frame class),
    # so the relation is read as "in the same frame".
    evaluation: Literal["boxes", "frame"] = "boxes"


class Interpretation(_Frozen):
    """What a query asks for, in terms the models can answer, and what they cannot."""

    query: str | None
    targets: tuple[Target, ...] = ()
    conditions: tuple[Condition, ...] = ()
    ignored: tuple[str, ...] = ()  # words or phrases that are not judged, as written
    warnings: tuple[str, ...] = ()
    decision: Decision
    open_query: bool = False  # empty query: every detector class, nothing was asked

    @property
    def accepted(self) -> bool:
        return self.decision is not Decision.REFUSED
