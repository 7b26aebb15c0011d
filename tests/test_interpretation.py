"""Query understanding without a model: the grammar, the label choice and the decision rule.

A fake embedder stands in for MiniLM: a text's vector is its bag of *concepts* (a word, or the
concept a synonym table below maps it to), so similarities are exact and readable. The real
model's mapping is tested in test_interpretation_models.py.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.understanding import (
    CountOp,
    Decision,
    Interpretation,
    Interpreter,
    ModelKind,
    RelationKind,
    Thresholds,
    Vocabulary,
    VocabularyError,
)
from analyzer.understanding.grammar import parse, tokenize
from analyzer.understanding.vocabulary import (
    IMAGENET_PARENT_CHECKS,
    VectorCache,
    check_imagenet_names,
    imagenet_parent,
    imagenet_synonyms,
)

DIM = 4096
_FILLER = {"a", "an", "the", "of", "or", "and", "on", "in", "for", "used"}
# Synonyms the fake model "knows": word -> concept.
_CONCEPTS = {
    "automobile": "car",
    "kitty": "cat",
    "kitten": "cat",
    "pooch": "dog",
    "puppy": "dog",
    "sofa": "couch",
    "mug": "cup",
    "human": "person",
    "lorry": "truck",
}

# A stand-in ImageNet list: the real names at the indices the parent table checks and at the
# classes these tests use; "class N" elsewhere.
FAKE_IMAGENET = [f"class{i}" for i in range(1000)]
for _index, _name in {
    7: "cock",
    24: "great grey owl, great gray owl, Strix nebulosa",
    80: "black grouse",
    100: "black swan, Cygnus atratus",
    127: "white stork, Ciconia ciconia",
    146: "albatross, mollymawk",
    151: "Chihuahua",
    207: "golden retriever",
    208: "Labrador retriever",
    268: "Mexican hairless",
    277: "red fox, Vulpes vulpes",
    281: "tabby, tabby cat",
    285: "Egyptian cat",
    294: "brown bear, bruin, Ursus arctos",
    297: "sloth bear, Melursus ursinus, Ursus ursinus",
    345: "ox",
    349: "bighorn, bighorn sheep, Ovis canadensis",
    385: "Indian elephant, Elephas maximus",
    386: "African elephant, Loxodonta africana",
    555: "fire engine, fire truck",
    561: "forklift",
    589: "hand blower, blow dryer, blow drier, hair dryer, hair drier",
    799: "sliding door",
    817: "sports car, sport car",
    850: "teddy, teddy bear",
    879: "umbrella",
    968: "cup",
}.items():
    FAKE_IMAGENET[_index] = _name


class FakeEmbedder:
    """Bag of concepts, hashed into DIM dimensions, L2-normalised. Counts its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                if word not in _FILLER:
                    word = word[:-1] if len(word) > 3 and word.endswith("s") else word  # MiniLM knows plurals
                    concept = _CONCEPTS.get(word, word)
                    out[row, zlib.crc32(concept.encode()) % DIM] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        return out


@pytest.fixture(scope="module")
def interpreter() -> Interpreter:
    return Interpreter(FakeEmbedder(), Vocabulary.build(FAKE_IMAGENET))


def labels(interpretation: Interpretation, target: int = 0) -> list[tuple[str, str, str | None]]:
    return [(m.label, m.model.value, m.parent) for m in interpretation.targets[target].labels]


# --- grammar ------------------------------------------------------------------------------


def test_tokenize_lowercases_and_splits_numbers_from_units() -> None:
    assert tokenize("Detect 3 Cars for 10s, please") == [
        "detect",
        "3",
        "cars",
        "for",
        "10",
        "s",
        ",",
        "please",
    ]


@pytest.mark.parametrize(
    ("query", "op", "n"),
    [
        ("at least 3 people", CountOp.AT_LEAST, 3),
        ("more than three people", CountOp.MORE_THAN, 3),
        ("over 4 cars", CountOp.MORE_THAN, 4),
        ("two dogs", CountOp.AT_LEAST, 2),
        ("exactly two dogs", CountOp.EXACTLY, 2),
        ("fewer than 5 cars", CountOp.FEWER_THAN, 5),
        ("no more than 2 cats", CountOp.AT_MOST, 2),
        ("at most 2 cats", CountOp.AT_MOST, 2),
        ("3 or more people", CountOp.AT_LEAST, 3),
        ("several people", CountOp.AT_LEAST, 3),
        ("a few cars", CountOp.AT_LEAST, 2),
        ("a couple of dogs", CountOp.AT_LEAST, 2),
        ("many birds", CountOp.AT_LEAST, 5),
    ],
)
def test_counts(query: str, op: CountOp, n: int) -> None:
    (phrase,) = parse(query).phrases
    assert phrase.count is not None and (phrase.count.op, phrase.count.n) == (op, n)
    assert not phrase.negated


@pytest.mark.parametrize(
    ("query", "op", "seconds"),
    [
        ("a dog for more than 10 seconds", CountOp.MORE_THAN, 10),
        ("a dog for 10 s", CountOp.AT_LEAST, 10),
        ("a dog for a minute", CountOp.AT_LEAST, 60),
        ("a car for over 2 minutes", CountOp.MORE_THAN, 120),
        ("a car longer than 30 sec", CountOp.MORE_THAN, 30),
        ("for at least 1 hour a truck", CountOp.AT_LEAST, 3600),
        ("a cat 10 seconds", CountOp.AT_LEAST, 10),
        ("a person for half a minute", CountOp.AT_LEAST, 30),
    ],
)
def test_durations_attach_to_the_subject(query: str, op: CountOp, seconds: float) -> None:
    phrase = parse(query).phrases[0]
    assert phrase.duration is not None and (phrase.duration.op, phrase.duration.seconds) == (op, seconds)
    assert phrase.count is None


def test_vague_durations_and_dangling_counts_are_reported() -> None:
    parsed = parse("a dog for a while")
    assert parsed.phrases[0].duration is None and parsed.vague == ["for a while"]
    assert parse("cars, at least 3").vague == ["at least 3"]


def test_noun_phrases_split_at_conjunctions_and_commas() -> None:
    parsed = parse("detect a person, a cat or a cup and two dogs")
    assert [p.text for p in parsed.phrases] == ["person", "cat", "cup", "dogs"]
    assert [p.role for p in parsed.phrases] == ["subject"] * 4
    assert len({p.clause for p in parsed.phrases}) == 4


def test_relation_objects_and_action_objects() -> None:
    parsed = parse("a red car stopping at the gate")
    assert [(p.text, p.role, p.colour) for p in parsed.phrases] == [
        ("red car", "subject", "red"),
        ("gate", "object", None),
    ]
    assert [(r.kind, r.words, r.subject, r.object) for r in parsed.relations] == [
        (RelationKind.NEAR, "at", 0, 1)
    ]
    assert [a.words for a in parsed.actions] == ["stopping"]

    parsed = parse("detect a person picking up an apple")
    assert [(p.text, p.role) for p in parsed.phrases] == [("person", "subject"), ("apple", "action_object")]
    assert [(a.words, a.subject) for a in parsed.actions] == [("picking up", 0)]


@pytest.mark.parametrize(
    ("query", "kind", "negated"),
    [
        ("a cat next to a dog", RelationKind.NEAR, False),
        ("a cat beside a dog", RelationKind.NEAR, False),
        ("a person holding an umbrella", RelationKind.HOLDING, False),
        ("a person carrying a suitcase", RelationKind.HOLDING, False),
        ("a cat on top of a car", RelationKind.ON, False),
        ("a person riding a horse", RelationKind.ON, False),
        ("a dog inside a car", RelationKind.INSIDE, False),
        ("a person without an umbrella", RelationKind.NEAR, True),
        ("a cat not near a dog", RelationKind.NEAR, True),
        ("a person far from the car", RelationKind.NEAR, True),
        ("a cat behind a car", None, False),
    ],
)
def test_relations(query: str, kind: RelationKind | None, negated: bool) -> None:
    (relation,) = parse(query).relations
    assert (relation.kind, relation.negated, relation.subject, relation.object) == (kind, negated, 0, 1)


def test_negation_applies_to_what_follows() -> None:
    assert [(p.text, p.negated) for p in parse("not a cat").phrases] == [("cat", True)]
    assert [(p.text, p.negated) for p in parse("no people").phrases] == [("people", True)]
    assert [(p.text, p.negated) for p in parse("a person but no dog").phrases] == [
        ("person", False),
        ("dog", True),
    ]
    (nobody, car) = parse("nobody near the car").phrases
    assert (nobody.fixed_noun, nobody.negated, car.negated) == ("person", True, False)
    parsed = parse("a person not falling")
    assert [(a.words, a.negated) for a in parsed.actions] == [("falling", True)]
    assert parse("zero cars").phrases[0].negated


def test_colour_words_are_attributes_before_a_noun_and_nouns_alone() -> None:
    assert [(p.words, p.colour) for p in parse("an orange car").phrases] == [(["car"], "orange")]
    assert [(p.words, p.colour) for p in parse("an orange").phrases] == [(["orange"], None)]
    assert [(p.words, p.colour, p.size) for p in parse("a big grey dog").phrases] == [
        (["dog"], "gray", "large")
    ]


def test_ing_words_before_the_noun_are_modifiers_after_it_actions() -> None:
    assert [p.words for p in parse("a sleeping bag").phrases] == [["sleeping", "bag"]]
    parsed = parse("someone falling down")
    assert [p.words for p in parsed.phrases] == [["someone"]]
    assert [a.words for a in parsed.actions] == ["falling down"]
    assert [a.words for a in parse("a bag left unattended").actions] == ["left unattended"]


# --- label choice (fake similarities) -------------------------------------------------------


def test_coco_is_preferred_when_the_phrase_names_a_coco_class(interpreter: Interpreter) -> None:
    assert labels(interpreter.interpret("an umbrella")) == [("umbrella", "detector", None)]
    # "teddy, teddy bear" is the COCO teddy bear: no classifier for the same thing.
    assert labels(interpreter.interpret("a teddy bear")) == [("teddy bear", "detector", None)]


def test_fine_grained_classes_run_on_their_coco_parent(interpreter: Interpreter) -> None:
    assert labels(interpreter.interpret("a golden retriever")) == [("golden retriever", "classifier", "dog")]
    assert labels(interpreter.interpret("a fire engine")) == [("fire engine", "classifier", "truck")]
    assert labels(interpreter.interpret("a forklift")) == [("forklift", "classifier", None)]


def test_synonyms_resolve_by_meaning(interpreter: Interpreter) -> None:
    for query, label in [
        ("an automobile", "car"),
        ("a kitty", "cat"),
        ("a pooch", "dog"),
        ("a sofa", "couch"),
    ]:
        interpretation = interpreter.interpret(query)
        assert labels(interpretation) == [(label, "detector", None)], query
        assert interpretation.decision is Decision.ACCEPTED


def test_curated_overrides(interpreter: Interpreter) -> None:
    assert labels(interpreter.interpret("someone")) == [("person", "detector", None)]
    assert labels(interpreter.interpret("people")) == [("person", "detector", None)]
    bat = interpreter.interpret("a bat flying")
    assert bat.decision is Decision.REFUSED
    assert "bat" in bat.ignored and any("baseball bat" in w for w in bat.warnings)
    assert labels(interpreter.interpret("a baseball bat")) == [("baseball bat", "detector", None)]


def test_a_colour_that_names_a_class_is_part_of_the_name(interpreter: Interpreter) -> None:
    fox = interpreter.interpret("a red fox")
    assert labels(fox) == [("red fox", "classifier", None)] and fox.targets[0].colour is None
    car = interpreter.interpret("a red car")
    assert labels(car) == [("car", "detector", None)] and car.targets[0].colour == "red"
    assert car.decision is Decision.ACCEPTED


def test_modifiers_that_change_nothing_are_reported(interpreter: Interpreter) -> None:
    parked = interpreter.interpret("a parked car")
    assert labels(parked) == [("car", "detector", None)]
    assert parked.ignored == ("parked",)
    assert parked.decision is Decision.ACCEPTED_WITH_WARNINGS


def test_query_phrases_are_embedded_in_one_call() -> None:
    embedder = FakeEmbedder()
    interpreter = Interpreter(embedder, Vocabulary.build(FAKE_IMAGENET))
    embedder.calls.clear()
    interpreter.interpret("more than three red cars near a big dog, a kitty or a fire engine")
    assert len(embedder.calls) == 1


def test_without_imagenet_names_only_the_detector_answers() -> None:
    interpreter = Interpreter(FakeEmbedder(), Vocabulary.build())
    assert labels(interpreter.interpret("a kitty")) == [("cat", "detector", None)]
    assert interpreter.interpret("a forklift").decision is Decision.REFUSED


# --- the decision rule -------------------------------------------------------------------------


def test_an_action_is_accepted_with_a_warning_naming_it(interpreter: Interpreter) -> None:
    i = interpreter.interpret("detect a person picking up an apple")
    assert [t.phrase for t in i.targets] == ["person", "apple"]
    assert i.ignored == ("picking up",)
    assert i.decision is Decision.ACCEPTED_WITH_WARNINGS
    assert any("'picking up'" in w and "events report" in w for w in i.warnings)

    i = interpreter.interpret("someone falling")
    assert labels(i) == [("person", "detector", None)] and i.ignored == ("falling",)
    assert i.decision is Decision.ACCEPTED_WITH_WARNINGS


def test_negation_of_a_target_is_absence(interpreter: Interpreter) -> None:
    i = interpreter.interpret("not a cat")
    assert labels(i) == [("cat", "detector", None)] and i.targets[0].negated
    assert i.decision is Decision.ACCEPTED_WITH_WARNINGS
    assert any("absence" in w for w in i.warnings)
    assert interpreter.interpret("no people").targets[0].negated


def test_a_negation_that_cannot_be_honoured_is_refused(interpreter: Interpreter) -> None:
    # Ignoring these would report exactly what the query excludes.
    for query in ("a person not falling", "a person without a unicorn", "a cat not behind a car"):
        assert interpreter.interpret(query).decision is Decision.REFUSED, query


def test_unknown_parts_widen_with_warnings(interpreter: Interpreter) -> None:
    i = interpreter.interpret("a red car stopping at the gate")
    assert labels(i) == [("car", "detector", None)] and i.targets[0].colour == "red"
    assert i.conditions == ()
    assert set(i.ignored) == {"stopping", "at the gate"}
    assert i.decision is Decision.ACCEPTED_WITH_WARNINGS


def test_vague_words_are_ignored_with_a_warning(interpreter: Interpreter) -> None:
    i = interpreter.interpret("a dog on a sofa for a while")
    assert i.ignored == ("for a while",)
    assert i.decision is Decision.ACCEPTED_WITH_WARNINGS


def test_nothing_detectable_is_refused(interpreter: Interpreter) -> None:
    for query in ("happiness", "the weather", "a unicorn"):
        i = interpreter.interpret(query)
        assert i.decision is Decision.REFUSED and not i.targets
        assert i.warnings[0].startswith("nothing in the query")


def test_objects_of_an_unknown_subject_are_not_reported(interpreter: Interpreter) -> None:
    # "a ghost holding a cup" is not a query about cups.
    i = interpreter.interpret("a ghost holding a cup")
    assert i.decision is Decision.REFUSED and not i.targets
    assert "ghost" in i.ignored and "cup" in i.ignored
    # Another clause keeps its own targets.
    i = interpreter.interpret("a dog, or a ghost holding a cup")
    assert [t.phrase for t in i.targets] == ["dog"] and i.decision is Decision.ACCEPTED_WITH_WARNINGS


def test_counts_relations_and_durations_become_conditions(interpreter: Interpreter) -> None:
    i = interpreter.interpret("more than three people near the car")
    people, car = i.targets
    assert people.count is not None and (people.count.op, people.count.n) == (CountOp.MORE_THAN, 3)
    assert [(c.relation, c.subject, c.object, c.evaluation) for c in i.conditions] == [
        (RelationKind.NEAR, 0, 1, "boxes")
    ]
    assert car.labels[0].label == "car"
    assert i.decision is Decision.ACCEPTED

    i = interpreter.interpret("a dog on a sofa for more than 10 seconds")
    dog, sofa = i.targets
    assert dog.duration is not None and (dog.duration.op, dog.duration.seconds) == (CountOp.MORE_THAN, 10)
    assert sofa.labels[0].label == "couch"
    assert [(c.relation, c.phrase) for c in i.conditions] == [(RelationKind.ON, "on a sofa")]
    assert i.decision is Decision.ACCEPTED


def test_whole_frame_targets_drop_count_and_colour_and_relate_by_frame(interpreter: Interpreter) -> None:
    i = interpreter.interpret("two red forklifts near a person")
    forklift = i.targets[0]
    assert forklift.count is None and forklift.colour is None
    assert i.conditions[0].evaluation == "frame"
    assert i.decision is Decision.ACCEPTED_WITH_WARNINGS


def test_empty_query_is_open(interpreter: Interpreter) -> None:
    i = interpreter.interpret("  ")
    assert i.open_query and i.decision is Decision.ACCEPTED_WITH_WARNINGS and not i.targets


def test_interpretation_is_frozen_json(interpreter: Interpreter) -> None:
    i = interpreter.interpret("more than three people near the car for 10 s, but no dog")
    data = json.loads(i.model_dump_json())
    assert set(data) == {"query", "targets", "conditions", "ignored", "warnings", "decision", "open_query"}
    assert data["targets"][0]["count"] == {"op": ">", "n": 3}
    assert data["targets"][0]["labels"][0]["model"] == "detector"
    assert Interpretation.model_validate_json(i.model_dump_json()) == i
    with pytest.raises(ValueError):
        i.decision = Decision.REFUSED  # type: ignore[misc]


# --- vocabulary ----------------------------------------------------------------------------------


def test_imagenet_parents_by_index_range() -> None:
    assert imagenet_parent(207) == "dog"  # golden retriever
    assert imagenet_parent(281) == "cat"  # tabby
    assert imagenet_parent(286) is None  # cougar: not a COCO cat
    assert imagenet_parent(21) == "bird"  # kite, the bird of prey
    assert imagenet_parent(555) == "truck"  # fire engine
    assert imagenet_parent(561) is None  # forklift
    assert imagenet_synonyms("tabby, tabby cat") == ("tabby", "tabby cat")
    assert imagenet_synonyms("maillot_2, tank suit") == ("maillot", "tank suit")


def test_a_wrong_imagenet_list_is_refused() -> None:
    with pytest.raises(VocabularyError):
        check_imagenet_names(FAKE_IMAGENET[:999])
    shuffled = list(reversed(FAKE_IMAGENET))
    with pytest.raises(VocabularyError) as caught:
        check_imagenet_names(shuffled)
    assert caught.value.context["index"] in IMAGENET_PARENT_CHECKS


def test_embedder_output_is_checked() -> None:
    class Broken:
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            return np.zeros((len(texts) + 1, 8), dtype=np.float32)

    with pytest.raises(VocabularyError):
        Interpreter(Broken(), Vocabulary.build())


def test_thresholds_are_configurable(interpreter: Interpreter) -> None:
    strict = Interpreter(
        FakeEmbedder(), Vocabulary.build(FAKE_IMAGENET), Thresholds(detector=0.99, classifier=0.99)
    )
    assert strict.interpret("a kitty").decision is Decision.ACCEPTED  # exact concept: 1.0
    assert strict.interpret("a parked car").targets[0].labels[0].label == "car"  # via the head noun
    assert ModelKind.DETECTOR.value == "detector"


# --- robustness ------------------------------------------------------------------------------------

_WORDS = (
    "a the no not two 3 more than at least for seconds minute near next to on top of in holding "
    "without behind and or , red big person people cat dogs car fire engine golden retriever "
    "falling picking up someone nobody zero several exactly ghost gate sleeping bag parked over"
).split()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=12))
def test_any_word_sequence_parses_and_loses_no_content_word(words: list[str]) -> None:
    parsed = parse(" ".join(words))
    placed = " ".join(
        [w for p in parsed.phrases for w in p.words]
        + [w for p in parsed.phrases for w in (p.colour_word, p.size_word) if w]
        + [a.words for a in parsed.actions]
        + parsed.vague
    ).split()
    for word in ("person", "cat", "dogs", "car", "ghost", "gate", "falling", "golden", "retriever"):
        if word in words:
            assert word in placed, (words, parsed)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=12))
def test_any_word_sequence_gets_a_consistent_interpretation(
    interpreter: Interpreter, words: list[str]
) -> None:
    i = interpreter.interpret(" ".join(words))
    if i.open_query:
        assert not words and i.decision is Decision.ACCEPTED_WITH_WARNINGS
        return
    if not i.targets:
        assert i.decision is Decision.REFUSED
    assert (i.decision is Decision.ACCEPTED) == (bool(i.targets) and not i.warnings)
    assert i.decision is Decision.ACCEPTED or i.warnings  # a refusal or a warning always says why
    for condition in i.conditions:
        assert condition.subject < len(i.targets) and condition.object < len(i.targets)
    Interpretation.model_validate_json(i.model_dump_json())


def test_vector_cache_is_keyed_by_model_and_texts_and_survives_a_bad_file(tmp_path: Path) -> None:
    cache = VectorCache(tmp_path, "model-a")
    texts = ["a cat", "a dog"]
    vectors = np.eye(2, 4, dtype=np.float32)
    assert cache.load(texts) is None
    cache.save(texts, vectors)
    assert np.array_equal(cache.load(texts), vectors)
    # Another model, or other texts, never read these vectors.
    assert VectorCache(tmp_path, "model-b").load(texts) is None
    assert cache.load(["a cat", "a bird"]) is None
    # A damaged file is recomputed, not trusted.
    cache.path(texts).write_bytes(b"not numpy")
    assert cache.load(texts) is None
