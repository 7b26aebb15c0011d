"""The interpretation of a query: what will be detected, by which model, and what will not.

``Interpreter(embedder, vocabulary).interpret(query)`` parses the query (``grammar``), maps each
noun phrase onto the models' labels by meaning (``vocabulary``, ``resolve``) and returns an
``Interpretation``: targets (phrase, head noun, labels with the model answering each, colour,
size, count, duration, negation), conditions (relations between targets), the words that are
not judged (``ignored``), human-readable ``warnings`` and a ``decision``.

Which model answers a target:

* ``detector``: a COCO class of the SSD detector (boxes, so counts, colours and relations);
* ``classifier`` with a ``parent``: an ImageNet class judged on the detector's crops of its COCO
  parent ("golden retriever" on "dog" boxes), so it has boxes too;
* ``classifier`` without a parent: an ImageNet class judged on whole frames ("forklift",
  "sliding door"). It has no box: its count and colour are dropped (with a warning), and a
  relation involving it is read as "in the same frame" (``Condition.evaluation == "frame"``);
* ``zone``: a region of the frame the session named (start option ``zones``). The object of a
  relation whose words (or head noun) are a zone's name is that zone ("near the door" with a
  zone "door"; "at the front gate" with a zone "gate"), ahead of any label: the user's own
  names come first. A zone is judged on its fixed box; it is never a target of its own.

The decision rule. The principle: an answer may be *wider* than the query, with a warning
that says so; it may never *contradict* it or answer a *different* question.

1. **Refused** when nothing in the query resolves to a label ("happiness", "a bat flying":
   the animal is in neither vocabulary), or when every clause's subject is unknown: the
   objects of an unknown subject are not reported on their own ("a ghost holding a cup" is
   not a query about cups: reporting cups would answer a different question).
2. **Refused** when a negation cannot be honoured: a negated action ("a person not falling",
   "a person not wearing a helmet"), a negated relation that is not judged ("a cat not
   behind a car", "a person without a unicorn"), a negation of an unknown noun, or a
   negation applying to nothing. Ignoring the negated part would report exactly the objects
   the user excluded.
3. **Accepted with warnings** when the answer is honest but wider or different in form than
   the words: an action is ignored ("someone falling" reports every person, and the warning
   names the action and says that events report the objects only), an unknown relation
   object or an unsupported relation is dropped ("at the gate", "in front of the house"), a
   modifier does not change the labels ("parked car"), a target is judged on whole frames,
   or a target is negated.
4. **Accepted** when every word is judged.

Negation of a target is *absence*, not a refusal: "not a cat" / "no people" is a target with
``negated=True`` whose events are the periods when no such object is visible. The detector
judges absence as well as presence (no box above threshold), and "no people in the shop" is
a real monitoring query; it carries a warning because "not a cat" could also be read as
"anything but a cat".

An empty query is an *open* query: no targets, ``open_query=True`` (every detector class).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

import numpy as np

from analyzer.understanding.embedder import Embedder
from analyzer.understanding.grammar import NounPhrase, ParsedQuery, parse
from analyzer.understanding.resolve import Resolution, Thresholds, resolve_phrase, variants_of
from analyzer.understanding.vocabulary import (
    LabelIndex,
    VectorCache,
    Vocabulary,
    VocabularyEntry,
    embed_checked,
)
from schemas.interpretation import (
    Condition,
    CountCondition,
    Decision,
    DurationCondition,
    Interpretation,
    LabelMatch,
    ModelKind,
    Target,
)

# The data model is the records' contract (``schemas.interpretation``); re-exported here.
__all__ = [
    "Condition",
    "CountCondition",
    "Decision",
    "DurationCondition",
    "Interpretation",
    "Interpreter",
    "LabelMatch",
    "Target",
]


class Interpreter:
    """Maps queries onto the models' vocabularies. Build one per process: it embeds the vocabulary.

    ``interpret`` is then a pure function of the query, with one ``embed`` call per query.
    """

    def __init__(
        self,
        embedder: Embedder,
        vocabulary: Vocabulary,
        thresholds: Thresholds | None = None,
        *,
        cache: VectorCache | None = None,
    ) -> None:
        self._embedder = embedder
        self._index = LabelIndex.build(vocabulary, embedder, cache=cache)
        self.thresholds = thresholds or Thresholds()

    @property
    def vocabulary(self) -> Vocabulary:
        return self._index.vocabulary

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """(texts, entries) similarity of free texts to every label: for calibration and tests."""
        return self._index.scores(embed_checked(self._embedder, texts))

    def interpret(self, query: str | None, zones: Collection[str] = ()) -> Interpretation:
        """The query's interpretation; ``zones`` are the names of the session's zones, if any."""
        parsed = parse(query or "")
        if not parsed.tokens:
            return Interpretation(
                query=query,
                decision=Decision.ACCEPTED_WITH_WARNINGS,
                open_query=True,
                warnings=("an empty query reports every object the detector knows",),
            )
        texts: list[str] = []
        spans: list[tuple[int, int]] = []
        for phrase in parsed.phrases:
            variants = variants_of(phrase)
            spans.append((len(texts), len(texts) + len(variants)))
            texts.extend(variants)
        scores = self.scores(texts) if texts else np.zeros((0, len(self.vocabulary.entries)), np.float32)
        resolutions = [
            _zone_resolution(phrase, zones)
            or resolve_phrase(phrase, variants_of(phrase), scores[a:b], self.vocabulary, self.thresholds)
            for phrase, (a, b) in zip(parsed.phrases, spans, strict=True)
        ]
        return _Builder(query, parsed, resolutions).build()


def _zone_resolution(phrase: NounPhrase, zones: Collection[str]) -> Resolution | None:
    """The zone a relation's object names (its words, else its head noun, singular or plural), or None."""
    if phrase.role != "object" or not zones:
        return None
    names = {" ".join(zone.lower().replace("-", " ").split()) for zone in zones}
    text = " ".join(phrase.words)
    head = phrase.head
    candidates = [text, head, head[:-1] if head.endswith("s") else None]
    name = next((c for c in candidates if c and c in names), None)
    if name is None:
        return None
    entry = VocabularyEntry(label=name, model=ModelKind.ZONE, parent=None, texts=(name,), index=-1)
    unused = () if name == text else tuple(phrase.words[:-1])  # "front" of "front gate"
    return Resolution(labels=((entry, 1.0),), name_words=tuple(name.split()), unused_modifiers=unused)


class _Builder:
    """Assembles targets, conditions, ignored words, warnings and the decision from the resolutions."""

    def __init__(self, query: str | None, parsed: ParsedQuery, resolutions: list[Resolution]) -> None:
        self.query = query
        self.parsed = parsed
        self.resolutions = resolutions
        self.targets: list[Target] = []
        self.target_of: dict[int, int] = {}  # phrase index -> target index
        self.ignored: list[str] = []
        self.warnings: list[str] = []
        self.refusals: list[str] = []
        # Clauses whose subject is unknown: their other phrases would answer a different question.
        self.dropped = {
            p.clause
            for p, r in zip(parsed.phrases, resolutions, strict=True)
            if p.role == "subject" and not r.labels
        }

    def _ignore(self, words: str, warning: str) -> None:
        if words and words not in self.ignored:
            self.ignored.append(words)
        if warning not in self.warnings:
            self.warnings.append(warning)

    def build(self) -> Interpretation:
        phrases = self.parsed.phrases
        self._report_objects_of_unknown_subjects()
        unjudged_objects = self._objects_of_unjudged_relations()
        for index, (phrase, resolution) in enumerate(zip(phrases, self.resolutions, strict=True)):
            if resolution.labels and phrase.clause in self.dropped:
                continue  # reported by _report_objects_of_unknown_subjects
            if index in unjudged_objects:
                continue  # "the house" of "in front of the house": reported with its relation
            if resolution.labels:
                self.target_of[index] = len(self.targets)
                self.targets.append(self._target(phrase, resolution))
            elif phrase.role != "object":  # relation objects are reported with their relation
                self._ignore(
                    phrase.text, f"'{phrase.text}' matches nothing the models can see{resolution.why}"
                )
                if phrase.negated:
                    self.refusals.append(f"'no {phrase.text}' cannot be judged: '{phrase.text}' is unknown")
        conditions = self._conditions()
        self._actions()
        for words in self.parsed.vague:
            self._ignore(words, f"'{words}' is not judged")
        if self.parsed.dangling_negation:
            self.refusals.append("a negation applies to nothing that can be judged")
        decision = self._decide()
        return Interpretation(
            query=self.query,
            targets=tuple(self.targets),
            conditions=tuple(conditions),
            ignored=tuple(self.ignored),
            warnings=tuple(self.refusals + self.warnings),
            decision=decision,
        )

    def _decide(self) -> Decision:
        if not self.targets:
            self.refusals.insert(0, "nothing in the query is something the models can detect")
            return Decision.REFUSED
        if self.refusals:
            return Decision.REFUSED
        return Decision.ACCEPTED_WITH_WARNINGS if self.warnings else Decision.ACCEPTED

    def _objects_of_unjudged_relations(self) -> set[int]:
        """Phrases that are only the object of a relation that is not judged: not targets of their own."""
        objects: set[int] = set()
        for relation in self.parsed.relations:
            if relation.object is None:
                continue
            subject_known = relation.subject is not None and bool(self.resolutions[relation.subject].labels)
            if relation.kind is None or not subject_known:
                objects.add(relation.object)
        return objects

    def _report_objects_of_unknown_subjects(self) -> None:
        for phrase, resolution in zip(self.parsed.phrases, self.resolutions, strict=True):
            if phrase.clause in self.dropped and phrase.role != "subject" and resolution.labels:
                subject = next(
                    p for p in self.parsed.phrases if p.clause == phrase.clause and p.role == "subject"
                )
                self._ignore(
                    phrase.text,
                    f"'{phrase.text}' is not reported on its own: the query asks about '{subject.text}', "
                    "which the models cannot see",
                )

    def _target(self, phrase: NounPhrase, resolution: Resolution) -> Target:
        labels = tuple(
            LabelMatch(label=e.label, model=e.model, parent=e.parent, score=round(float(s), 3))
            for e, s in resolution.labels
        )
        colour = None if resolution.colour_in_name else phrase.colour
        count = CountCondition(op=phrase.count.op, n=phrase.count.n) if phrase.count else None
        duration = (
            DurationCondition(op=phrase.duration.op, seconds=phrase.duration.seconds)
            if phrase.duration
            else None
        )
        name = " ".join(resolution.name_words)  # the words the labels matched on
        unused_modifiers = resolution.unused_modifiers
        if resolution.labels[0][0].model is ModelKind.ZONE:
            # A zone is a fixed box: its colour, size and other words are not looked at.
            for word in (phrase.colour_word, phrase.size_word, *unused_modifiers):
                if word:
                    self._ignore(
                        word, f"'{word}' in '{phrase.text}' is not judged: the zone '{name}' is used"
                    )
            colour, size, unused_modifiers = None, None, ()
        else:
            size = phrase.size
        for words in unused_modifiers:
            self._ignore(words, f"'{words}' in '{phrase.text}' is not judged: any {name} is reported")
        located = all(
            e.model in (ModelKind.DETECTOR, ModelKind.ZONE) or e.parent is not None
            for e, _ in resolution.labels
        )
        if not located:
            self.warnings.append(
                f"'{phrase.text}' is judged by the image classifier on whole frames: no box, so no count, "
                "colour or position"
            )
            if colour is not None:
                self._ignore(phrase.colour_word or colour, f"the colour of '{phrase.text}' is not judged")
                colour = None
            if count is not None:
                shown = (
                    phrase.count.words
                    if phrase.count and phrase.count.words
                    else f"{count.op.value} {count.n}"
                )
                self._ignore(shown, f"the count of '{phrase.text}' is not judged")
                count = None
        elif resolution.labels[0][0].model is ModelKind.CLASSIFIER:
            parents = sorted({e.parent for e, _ in resolution.labels if e.parent})
            self.warnings.append(
                f"'{phrase.text}' is judged by the image classifier on the detector's "
                f"{' / '.join(parents)} boxes"
            )
        if phrase.negated:
            self.warnings.append(
                f"'no {phrase.text}' is read as absence: events are the periods when none is visible"
            )
        if resolution.note:
            self.warnings.append(resolution.note)
        return Target(
            phrase=phrase.text,
            noun=phrase.fixed_noun or phrase.head,
            labels=labels,
            colour=colour,
            size=size,
            count=count,
            duration=duration,
            negated=phrase.negated,
        )

    def _conditions(self) -> list[Condition]:
        conditions: list[Condition] = []
        for relation in self.parsed.relations:
            obj = self.parsed.phrases[relation.object] if relation.object is not None else None
            words = f"{relation.words} {obj.written}" if obj is not None else relation.words
            negation = (
                "not "
                if relation.negated and relation.words not in {"without", "outside", "far from"}
                else ""
            )
            shown = f"{negation}{words}"
            subject = self.target_of.get(relation.subject) if relation.subject is not None else None
            target = self.target_of.get(relation.object) if relation.object is not None else None
            if relation.subject is not None and self.parsed.phrases[relation.subject].clause in self.dropped:
                continue
            if relation.kind is None:
                reason = f"'{shown}' is not judged: only near, holding, on and inside are"
            elif subject is None:
                reason = f"'{shown}' is not judged: it applies to nothing the models can see"
            elif target is None:
                reason = (
                    f"'{shown}' is not judged: '{obj.text if obj else ''}' matches nothing the models can see"
                )
            else:
                located = self.targets[subject].located and self.targets[target].located
                evaluation: Literal["boxes", "frame"] = "boxes" if located else "frame"
                if not located:
                    reading = "not in the same frame" if relation.negated else "in the same frame"
                    self.warnings.append(
                        f"'{shown}' is read as '{reading}': one side is judged on whole frames"
                    )
                conditions.append(
                    Condition(
                        relation=relation.kind,
                        subject=subject,
                        object=target,
                        negated=relation.negated,
                        phrase=shown,
                        evaluation=evaluation,
                    )
                )
                continue
            self._ignore(shown, reason)
            if relation.negated:
                # Widening is fine with a warning; reporting what the user excluded is not.
                self.refusals.append(f"{reason}, and ignoring it would report what the query excludes")
        return conditions

    def _actions(self) -> None:
        for action in self.parsed.actions:
            subject = self.parsed.phrases[action.subject] if action.subject is not None else None
            if subject is not None and subject.clause in self.dropped:
                if action.words not in self.ignored:
                    self.ignored.append(action.words)  # the clause is refused as a whole already
                continue
            who = subject.text if subject is not None else "the objects"
            shown = f"not {action.words}" if action.negated else action.words
            if action.negated:
                if shown not in self.ignored:
                    self.ignored.append(shown)
                self.refusals.append(
                    f"the action '{shown}' cannot be judged, and ignoring it would also report the "
                    f"'{who}' that the query excludes"
                )
                continue
            self._ignore(
                shown,
                f"the action '{shown}' is not judged: events report '{who}' whenever visible, "
                "not only when it happens",
            )
