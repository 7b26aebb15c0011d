"""Noun phrase -> vocabulary labels, by embedding similarity, with a small curated override table.

For each noun phrase the interpreter embeds a few *variants* (``variants_of``): the phrase
without attributes ("fire engine"), its head noun alone when it has modifiers ("engine"), and
the phrase with its colour ("red fox"). Each variant is scored against every label (the best
cosine over the label's texts) and resolved by ``Thresholds``:

1. detector labels: COCO classes scoring >= ``detector``;
2. classifier labels: ImageNet classes scoring >= ``classifier``;
3. the classifier wins only when its best label beats the best COCO label by
   ``prefer_classifier`` ("golden retriever": golden retriever >> dog); otherwise COCO is
   preferred ("an umbrella" is the COCO umbrella, not the ImageNet one);
4. every label of the winning model within ``group`` of its best is kept (at most
   ``max_labels``): near-ties are real ambiguity ("a retriever" -> the four retrievers).

Modifiers that do not change the labels ("a parked car" -> car, same as "car") are reported
as not judged; a colour that makes a better name ("red fox", "black swan": ImageNet classes)
is part of the name, not a colour condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analyzer.understanding.grammar import NounPhrase
from analyzer.understanding.vocabulary import ModelKind, Vocabulary, VocabularyEntry


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Similarity thresholds, calibrated on the labelled pairs of tests/test_interpretation_models.py.

    Calibration (all-MiniLM-L6-v2, ONNX): a grid search over detector x classifier x
    prefer_classifier on 99 phrase -> label pairs (synonyms, paraphrases, plurals, fine-grained
    names) and 34 phrases that must match nothing ("gate", "weather", "window", "fire"); the
    phrases of the override table are left out, since they are not the embeddings' answers.
    The best grid point, kept here, resolves 123/133 (92.5 %): 90/99 pairs to the expected
    label, 33/34 non-matching phrases to nothing (the misses are printed by the test). Below
    0.775 a classifier label lets in near-misses ("window" -> window screen 0.77, "wall" ->
    stone wall 0.75); above it, paraphrases of ImageNet names drop out ("fork lift truck" ->
    forklift 0.80).
    """

    detector: float = 0.6
    classifier: float = 0.775
    prefer_classifier: float = 0.1
    group: float = 0.04
    max_labels: int = 5
    # A colour joins the name only for a strong match that the colourless phrase does not reach.
    colour_name: float = 0.8
    colour_name_margin: float = 0.1
    # Modifiers are "used" when the full phrase matches its labels better than the head alone
    # ("fire engine" 1.0 vs "engine"); else they are reported as not judged ("parked car").
    modifier_margin: float = 0.05


# Curated overrides, only where embeddings get it wrong. Key: the phrase's words, lower-cased.
# Value: COCO classes, or None for "deliberately unresolved" with the reason shown to the user.
PERSON = ("person",)
OVERRIDES: dict[str, tuple[tuple[str, ...] | None, str]] = {
    # Indefinite pronouns embed close to nothing in particular (they are not object words),
    # yet they always mean a person in a monitoring query.
    "someone": (PERSON, ""),
    "somebody": (PERSON, ""),
    "anyone": (PERSON, ""),
    "anybody": (PERSON, ""),
    "everyone": (PERSON, ""),
    "everybody": (PERSON, ""),
    "nobody": (PERSON, ""),
    "no one": (PERSON, ""),
    # Plural of person: MiniLM puts "people" nearer crowds and groups than the COCO class name.
    "people": (PERSON, ""),
    "persons": (PERSON, ""),
    # Short person nouns: MiniLM scores them below the detector threshold against "person"
    # (man 0.41, kid 0.42, child 0.50, guy 0.49, worker 0.58; man's best is "mantis"): COCO's
    # category name is rare in text.
    **{
        word: (PERSON, "")
        for word in "man men woman women child children kid kids guy guys boy boys girl girls lady ladies "
        "gentleman gentlemen adult adults baby babies toddler toddlers teenager teenagers "
        "worker workers".split()
    },
    # Places, which no model here sees, that embed close to an object label above threshold:
    # "parking lot" -> parking meter (0.64), "house" -> cinema (0.81, its synonym "movie house").
    "parking lot": (None, ": a place, not an object the models can see"),
    "house": (None, ": a building, not an object the models can see"),
    # "bat" embeds next to the COCO "baseball bat", but alone it is as likely the animal
    # ("a bat flying"), which neither model knows: ask the user to say which.
    "bat": (None, ": a bat (the animal) is in neither vocabulary; write 'baseball bat' for the sports bat"),
    "bats": (None, ": a bat (the animal) is in neither vocabulary; write 'baseball bat' for the sports bat"),
}


@dataclass(frozen=True, slots=True)
class Resolution:
    """The labels a noun phrase stands for (empty: unresolved), best first, with their scores."""

    labels: tuple[tuple[VocabularyEntry, float], ...]
    name_words: tuple[str, ...] = ()  # the words the labels were matched on
    unused_modifiers: tuple[str, ...] = ()  # modifiers the match did not use ("parked")
    colour_in_name: bool = False  # "red fox": the colour is part of the name
    note: str | None = None
    why: str = ""  # for an unresolved phrase: a reason to append to the warning


def variants_of(phrase: NounPhrase) -> list[str]:
    """The texts embedded for a phrase: [core, head (if modifiers), colour + core (if colour)]."""
    if phrase.fixed_noun is not None:
        return [phrase.fixed_noun]
    core = " ".join(phrase.words)
    variants = [core]
    if len(phrase.words) > 1:
        variants.append(phrase.words[-1])
    if phrase.colour_word:
        variants.append(f"{phrase.colour_word} {core}")
    return variants


def _pick(
    row: np.ndarray, vocabulary: Vocabulary, t: Thresholds
) -> tuple[tuple[VocabularyEntry, float], ...]:
    """Labels for one variant's scores (one per entry), by the rules of the module docstring."""
    entries = vocabulary.entries
    is_detector = np.array([e.model is ModelKind.DETECTOR for e in entries])
    coco = np.where(is_detector, row, -1.0)
    inet = np.where(~is_detector, row, -1.0)
    coco_best, inet_best = float(coco.max()), float(inet.max()) if (~is_detector).any() else -1.0
    if inet_best >= t.classifier and (coco_best < t.detector or inet_best >= coco_best + t.prefer_classifier):
        chosen, best, floor = inet, inet_best, t.classifier
    elif coco_best >= t.detector:
        chosen, best, floor = coco, coco_best, t.detector
    else:
        return ()
    order = np.argsort(-chosen, kind="stable")[: t.max_labels]
    picked: dict[int, float] = {}
    for i in order:
        if chosen[i] < max(floor, best - t.group):
            break
        # An ImageNet class that *is* its COCO parent ("teddy, teddy bear", "umbrella") is the
        # detector's job: running the classifier on crops would only lose recall.
        target = vocabulary.equivalent_parent.get(int(i), int(i))
        picked.setdefault(target, float(chosen[i]))
    return tuple((entries[i], score) for i, score in picked.items())


def _override(words: str, vocabulary: Vocabulary) -> Resolution | None:
    if words not in OVERRIDES:
        return None
    labels, why = OVERRIDES[words]
    if labels is None:
        return Resolution(labels=(), why=why)
    by_label = {e.label: e for e in vocabulary.entries if e.model is ModelKind.DETECTOR}
    return Resolution(labels=tuple((by_label[label], 1.0) for label in labels), name_words=(words,))


def resolve_phrase(
    phrase: NounPhrase,
    variants: list[str],
    scores: np.ndarray,
    vocabulary: Vocabulary,
    thresholds: Thresholds,
) -> Resolution:
    """Resolve one noun phrase from its variants' scores (rows in ``variants`` order)."""
    core = variants[0]
    override = _override(core, vocabulary)
    if override is not None:
        return override
    core_labels = _pick(scores[0], vocabulary, thresholds)
    has_head = phrase.fixed_noun is None and len(phrase.words) > 1
    head_labels = _pick(scores[1], vocabulary, thresholds) if has_head else ()
    if has_head and not head_labels:
        head_override = _override(phrase.words[-1], vocabulary)
        head_labels = head_override.labels if head_override else ()
    modifiers = " ".join(phrase.words[:-1])

    resolution: Resolution
    if (
        core_labels
        and has_head
        and _labels(core_labels) == _labels(head_labels)
        and float(scores[0].max()) <= float(scores[1].max()) + thresholds.modifier_margin
    ):
        # The modifiers did not change the match: they are words the models do not judge.
        resolution = Resolution(
            labels=core_labels, name_words=(phrase.words[-1],), unused_modifiers=(modifiers,)
        )
    elif core_labels:
        resolution = Resolution(labels=core_labels, name_words=tuple(phrase.words))
    elif head_labels:
        resolution = Resolution(
            labels=head_labels, name_words=(phrase.words[-1],), unused_modifiers=(modifiers,)
        )
    else:
        resolution = Resolution(labels=())

    if phrase.colour_word and phrase.fixed_noun is None:
        coloured = _pick(scores[-1], vocabulary, thresholds)
        best_plain = float(scores[0].max())
        if (
            coloured
            and coloured[0][1] >= thresholds.colour_name
            and coloured[0][1] >= best_plain + thresholds.colour_name_margin
            and _labels(coloured) != _labels(resolution.labels)
        ):
            return Resolution(
                labels=coloured,
                name_words=(phrase.colour_word, *phrase.words),
                colour_in_name=True,
            )
    return resolution


def _labels(labels: tuple[tuple[VocabularyEntry, float], ...]) -> set[tuple[str, str]]:
    return {(e.model.value, e.label) for e, _ in labels}
