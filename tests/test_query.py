"""Query understanding: natural-language phrasings -> COCO targets (pure, no model)."""

from __future__ import annotations

import pytest

from analyzer.errors import QueryError
from analyzer.models.coco_labels import COCO_CLASS_NAMES
from analyzer.query import OPEN_QUERY_SCORE_FLOOR, parse_query, singular_candidates, tokenize
from livestream.errors import LivestreamError


@pytest.mark.parametrize(
    ("query", "targets"),
    [
        ("detect a person picking up an apple", ("person", "apple")),
        ("any cats or dogs?", ("cat", "dog")),
        ("people crossing", ("person",)),
        ("cars and trucks", ("car", "truck")),
        ("someone drinking from a cup", ("person", "cup")),
        ("Detect a person, a cat or a cup", ("person", "cat", "cup")),
        ("two women and a child", ("person",)),
        ("men, women and children", ("person",)),
        ("a pedestrian near the bus stop", ("person", "bus")),
        ("kittens and puppies", ("cat", "dog")),
        ("a kitty on the sofa", ("cat", "couch")),
        ("mice and keyboards on the desk", ("mouse", "keyboard")),
        ("knives, forks and spoons", ("knife", "fork", "spoon")),
        ("bikes and motorbikes", ("bicycle", "motorcycle")),
        ("a cyclist", ("person", "bicycle")),
        ("somebody on a phone", ("person", "cell phone")),
        ("cellphone or smartphone", ("cell phone",)),
        ("cell-phones", ("cell phone",)),
        ("a coffee mug", ("cup",)),
        ("watching TV", ("tv",)),
        ("a television", ("tv",)),
        ("traffic lights and stop signs", ("traffic light", "stop sign")),
        ("TRAFFIC-LIGHT", ("traffic light",)),
        ("a teddy bear", ("teddy bear",)),
        ("a bear", ("bear",)),
        ("hot dogs and pizzas", ("hot dog", "pizza")),
        ("a dog", ("dog",)),
        ("wine glasses", ("wine glass",)),
        ("a baseball bat and a baseball glove", ("baseball bat", "baseball glove")),
        ("a fire hydrant", ("fire hydrant",)),
        ("sports balls", ("sports ball",)),
        ("a football", ("sports ball",)),
        ("potted plants", ("potted plant",)),
        ("buses", ("bus",)),
        ("sheep and cows", ("sheep", "cow")),
        ("giraffes and zebras", ("giraffe", "zebra")),
        ("toothbrushes", ("toothbrush",)),
        ("a pair of scissors", ("scissors",)),
        ("sandwiches", ("sandwich",)),
        ("hair dryer", ("hair drier",)),
        ("a fridge and a microwave", ("refrigerator", "microwave")),
        ("airplanes or planes", ("airplane",)),
        ("boats and ships", ("boat",)),
        ("laptops", ("laptop",)),
        ("umbrellas", ("umbrella",)),
        ("any pets?", ("cat", "dog")),
        ("an orange car", ("car",)),
        ("oranges and bananas", ("orange", "banana")),
        ("a person and a person again", ("person",)),
    ],
)
def test_targets_in_query_order(query: str, targets: tuple[str, ...]) -> None:
    parsed = parse_query(query)
    assert parsed.targets == targets
    assert not parsed.open_query
    assert parsed.score_floor is None
    assert parsed.query == query


def test_every_coco_class_is_found_by_its_own_name() -> None:
    for name in COCO_CLASS_NAMES:
        assert parse_query(f"find a {name}").targets == (name,), name


def test_group_words_expand_to_several_classes() -> None:
    animals = parse_query("any animals").targets
    assert {"cat", "dog", "bird", "horse", "giraffe"} <= set(animals)
    assert "person" not in animals
    vehicles = parse_query("vehicles").targets
    assert {"car", "truck", "bus", "motorcycle", "bicycle"} <= set(vehicles)


def test_unmatched_content_words_are_reported_without_filler() -> None:
    assert parse_query("detect a person picking up an apple").unmatched == ("picking",)
    assert parse_query("people crossing the street").unmatched == ("crossing", "street")
    assert parse_query("someone drinking from a cup").unmatched == ("drinking",)
    assert parse_query("an orange car").unmatched == ("orange",)
    assert parse_query("any cats or dogs?").unmatched == ()


def test_matches_keep_the_words_as_written() -> None:
    matches = parse_query("kittens near wine glasses").matches
    assert [(m.phrase, m.classes) for m in matches] == [
        ("kittens", ("cat",)),
        ("wine glasses", ("wine glass",)),
    ]


def test_eyeglasses_are_not_wine_glasses() -> None:
    parsed = parse_query("a man wearing glasses")
    assert parsed.targets == ("person",)
    assert "glasses" in parsed.unmatched


@pytest.mark.parametrize("query", [None, "", "   ", "?!", "123"])
def test_empty_query_is_open_with_a_higher_score_floor(query: str | None) -> None:
    parsed = parse_query(query)
    assert parsed.open_query
    assert parsed.targets == COCO_CLASS_NAMES
    assert parsed.score_floor == OPEN_QUERY_SCORE_FLOOR


@pytest.mark.parametrize("query", ["weather forecast", "is it raining", "explosions and fire", "anything?"])
def test_query_naming_nothing_detectable_raises_readable_error(query: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query(query)
    error = caught.value
    assert isinstance(error, LivestreamError)
    assert error.context["query"] == query
    message = str(error)
    assert "names nothing the detector can find" in message
    for name in ("person", "traffic light", "cell phone", "toothbrush"):
        assert name in message


def test_tokenize_and_singulars() -> None:
    assert tokenize("Cell-Phones, TVs & wine-glasses!") == ["cell", "phones", "tvs", "wine", "glasses"]
    assert "puppy" in singular_candidates("puppies")
    assert "knife" in singular_candidates("knives")
    assert "mouse" in singular_candidates("mice")
    assert singular_candidates("glass") == ["glass"]
