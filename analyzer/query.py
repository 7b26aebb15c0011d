"""Query understanding: a natural-language query -> the COCO classes it asks about. Pure.

"detect a person picking up an apple" -> targets (person, apple), unmatched (picking,).
Matching is on lower-cased word tokens, longest phrase first (so "teddy bear" wins over
"bear", "hot dog" over "dog"), with plurals ("people", "mice", "knives", "wine glasses"),
synonyms ("kitten" -> cat, "mug" -> cup, "someone" -> person) and group words ("animals",
"vehicles", "pets") that expand to several classes. Targets keep the order of their first
mention. Words that are neither a class nor filler are returned as ``unmatched``: actions
and attributes ("crossing", "red") the detector cannot judge, useful in descriptions.

An empty or missing query is an *open* query: every COCO class is a target, and
``score_floor`` (``OPEN_QUERY_SCORE_FLOOR``) asks the caller for a higher threshold than
usual, since nobody asked for these objects and false positives would be pure noise.
A query that names nothing detectable raises ``QueryError`` listing what can be detected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from analyzer.errors import QueryError
from analyzer.models.coco_labels import COCO_CLASS_NAMES

OPEN_QUERY_SCORE_FLOOR = 0.6
MAX_PHRASE_WORDS = 3

_PERSON = ("person",)
_PERSON_WORDS = """
    people persons human man woman child kid boy girl baby toddler adult teenager pedestrian
    someone somebody anyone anybody guy lady gentleman player worker rider driver walker jogger
    runner crowd individual passerby astronaut student customer
""".split()
_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")
_VEHICLES = ("bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat")

# Phrase (singular, space-separated) -> classes. Every COCO class name maps to itself on top.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    # people
    **dict.fromkeys(_PERSON_WORDS, _PERSON),
    "cyclist": ("person", "bicycle"),
    "biker": ("person", "bicycle"),
    "motorcyclist": ("person", "motorcycle"),
    "skateboarder": ("person", "skateboard"),
    "surfer": ("person", "surfboard"),
    "skier": ("person", "skis"),
    "snowboarder": ("person", "snowboard"),
    # vehicles
    "bike": ("bicycle",),
    "push bike": ("bicycle",),
    "motorbike": ("motorcycle",),
    "motor bike": ("motorcycle",),
    "scooter": ("motorcycle",),
    "moped": ("motorcycle",),
    "automobile": ("car",),
    "taxi": ("car",),
    "cab": ("car",),
    "suv": ("car",),
    "sedan": ("car",),
    "lorry": ("truck",),
    "pickup truck": ("truck",),
    "plane": ("airplane",),
    "aeroplane": ("airplane",),
    "jet": ("airplane",),
    "aircraft": ("airplane",),
    "airliner": ("airplane",),
    "ship": ("boat",),
    "yacht": ("boat",),
    "kayak": ("boat",),
    "canoe": ("boat",),
    "ferry": ("boat",),
    "tram": ("train",),
    "locomotive": ("train",),
    "vehicle": _VEHICLES,
    "traffic": ("car", "truck", "bus", "motorcycle", "bicycle"),
    # street
    "traffic signal": ("traffic light",),
    "stoplight": ("traffic light",),
    "hydrant": ("fire hydrant",),
    # animals
    "animal": _ANIMALS,
    "pet": ("cat", "dog"),
    "kitten": ("cat",),
    "kitty": ("cat",),
    "kittie": ("cat",),
    "puppy": ("dog",),
    "doggy": ("dog",),
    "doggie": ("dog",),
    "pup": ("dog",),
    "hound": ("dog",),
    "pony": ("horse",),
    "lamb": ("sheep",),
    "cattle": ("cow",),
    "bull": ("cow",),
    "calf": ("cow",),
    "pigeon": ("bird",),
    "seagull": ("bird",),
    "gull": ("bird",),
    "duck": ("bird",),
    "goose": ("bird",),
    "crow": ("bird",),
    "parrot": ("bird",),
    "sparrow": ("bird",),
    # accessories and sports
    "rucksack": ("backpack",),
    "bag": ("handbag", "backpack", "suitcase"),
    "purse": ("handbag",),
    "luggage": ("suitcase",),
    "necktie": ("tie",),
    "ski": ("skis",),
    "ball": ("sports ball",),
    "football": ("sports ball",),
    "soccer ball": ("sports ball",),
    "basketball": ("sports ball",),
    "tennis ball": ("sports ball",),
    "racket": ("tennis racket",),
    "racquet": ("tennis racket",),
    "bat": ("baseball bat",),
    "glove": ("baseball glove",),
    "mitt": ("baseball glove",),
    # kitchen and food
    "mug": ("cup",),
    "coffee cup": ("cup",),
    "teacup": ("cup",),
    "glass": ("wine glass",),
    "wineglass": ("wine glass",),
    "wine glasses": ("wine glass",),
    "hotdog": ("hot dog",),
    "doughnut": ("donut",),
    "burger": ("sandwich",),
    "fridge": ("refrigerator",),
    "microwave oven": ("microwave",),
    # furniture and household
    "sofa": ("couch",),
    "settee": ("couch",),
    "table": ("dining table",),
    "plant": ("potted plant",),
    "houseplant": ("potted plant",),
    "pot plant": ("potted plant",),
    "television": ("tv",),
    "tv set": ("tv",),
    "tvmonitor": ("tv",),
    "notebook computer": ("laptop",),
    "computer mouse": ("mouse",),
    "remote control": ("remote",),
    "phone": ("cell phone",),
    "cellphone": ("cell phone",),
    "mobile phone": ("cell phone",),
    "smartphone": ("cell phone",),
    "iphone": ("cell phone",),
    "telephone": ("cell phone",),
    "teddy": ("teddy bear",),
    "hair dryer": ("hair drier",),
    "hairdryer": ("hair drier",),
    "blow dryer": ("hair drier",),
    "tooth brush": ("toothbrush",),
    "flower vase": ("vase",),
}

# Plurals that no suffix rule recovers (rules handle -s, -es, -ies, -ves); listed words skip the rules.
_IRREGULAR_PLURALS: dict[str, str] = {
    "people": "people",  # a synonym of its own, listed so no rule mangles it
    "men": "man",
    "women": "woman",
    "gentlemen": "gentleman",
    "children": "child",
    "kiddies": "kid",
    "mice": "mouse",
    "geese": "goose",
    "oxen": "cow",
    "calves": "calf",
    "knives": "knife",
    "skis": "skis",
    "scissors": "scissors",
    "buses": "bus",
    "busses": "bus",
    "sheep": "sheep",
    "cattle": "cattle",
    "passersby": "passerby",
    "glasses": "glasses",  # eyewear, not wine glasses: no rule may strip it to "glass"
}

# Filler: query verbs, determiners, pronouns, connectives. Never reported as unmatched.
_STOPWORDS = frozenset(
    """
    a an the any some every each all this that these those there here it its them they their
    his her him she he we us our you your my me i one ones of in on at to from by with without
    into onto over under near next behind beside between around across through and or nor but
    not no if when whenever while where who whom which what whether is are was were be been
    being am do does did has have had can could will would should shall may might must
    detect detection detecting find finding spot spotting see seeing look looking watch watching
    show showing tell notify alert flag track tracking identify search monitor monitoring report count
    appear appears appearing visible present presence frame frames video stream footage scene
    image picture camera please any anything something thing things other another kind type
    two three four five six several numerous up down out off about
    s t ll re ve d m just also only either both more less many much few lot lots
    """.split()
) - {"monitor"}

# Class names that are also colour words: before another class ("an orange car") they are
# the colour, an attribute, not a target.
_COLOUR_CLASSES = frozenset({"orange"})

_TOKEN = re.compile(r"[a-z]+")


def _build_vocabulary() -> dict[tuple[str, ...], tuple[str, ...]]:
    vocabulary: dict[tuple[str, ...], tuple[str, ...]] = {}
    for name in COCO_CLASS_NAMES:
        vocabulary[tuple(name.split())] = (name,)
    for phrase, classes in _SYNONYMS.items():
        unknown = set(classes) - set(COCO_CLASS_NAMES)
        assert not unknown, f"synonym {phrase!r} maps to non-COCO classes {unknown}"
        vocabulary[tuple(phrase.split())] = classes
    return vocabulary


_VOCABULARY = _build_vocabulary()


@dataclass(frozen=True, slots=True)
class QueryMatch:
    """One mention in the query: the words as written and the classes they stand for."""

    phrase: str
    classes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueryTargets:
    """What a query asks the detector for.

    ``targets``: COCO class names, in order of first mention, no duplicates.
    ``unmatched``: content words that named no class (actions, attributes), in order.
    ``open_query``: True for an empty query, whose targets are all classes.
    ``score_floor``: a minimum detection score the query asks for on top of the caller's
    threshold (set for open queries), else None.
    """

    query: str | None
    targets: tuple[str, ...]
    matches: tuple[QueryMatch, ...] = ()
    unmatched: tuple[str, ...] = ()
    open_query: bool = False
    score_floor: float | None = None


def tokenize(text: str) -> list[str]:
    """Lower-cased alphabetic words; hyphens and punctuation split ("cell-phone" -> cell, phone)."""
    return _TOKEN.findall(text.lower())


def singular_candidates(word: str) -> list[str]:
    """The word itself, then its plausible singulars, most specific first."""
    if word in _IRREGULAR_PLURALS:
        return [word, _IRREGULAR_PLURALS[word]]
    candidates = [word]
    if len(word) > 3 and word.endswith("ies"):
        candidates.append(word[:-3] + "y")  # puppies, kitties, lorries
    if len(word) > 3 and word.endswith("ves"):
        candidates += [word[:-3] + "f", word[:-3] + "fe"]  # calves, knives
    if len(word) > 3 and word.endswith("es"):
        candidates.append(word[:-2])  # sandwiches, toothbrushes, boxes
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        candidates.append(word[:-1])  # cars, dogs, phones
    return candidates


def _lookup(words: list[str]) -> tuple[str, ...] | None:
    """Classes of a phrase, trying singulars of its last word ("wine glasses" -> wine glass)."""
    *head, last = words
    for candidate in singular_candidates(last):
        classes = _VOCABULARY.get((*head, candidate))
        if classes is not None:
            return classes
    return None


def parse_query(query: str | None) -> QueryTargets:
    """Targets of a natural-language query; see the module docstring. Raises ``QueryError``."""
    if query is None or not tokenize(query):
        return QueryTargets(
            query=query,
            targets=COCO_CLASS_NAMES,
            open_query=True,
            score_floor=OPEN_QUERY_SCORE_FLOOR,
        )
    words = tokenize(query)
    matches: list[QueryMatch] = []
    unmatched: list[str] = []
    position = 0
    while position < len(words):
        for length in range(min(MAX_PHRASE_WORDS, len(words) - position), 0, -1):
            phrase = words[position : position + length]
            classes = _lookup(phrase)
            if classes is not None and length == 1 and phrase[0] in _COLOUR_CLASSES:
                if any(
                    _lookup(words[position + 1 : position + 1 + n])
                    for n in range(1, MAX_PHRASE_WORDS + 1)
                    if position + n < len(words)
                ):
                    classes = None  # a colour: falls through to the unmatched words
            if classes is not None:
                matches.append(QueryMatch(" ".join(phrase), classes))
                position += length
                break
        else:
            word = words[position]
            if word not in _STOPWORDS and len(word) > 1 and word not in unmatched:
                unmatched.append(word)
            position += 1

    targets = tuple(dict.fromkeys(label for match in matches for label in match.classes))
    if not targets:
        raise QueryError(
            "the query names nothing the detector can find; it detects these COCO objects: "
            + ", ".join(COCO_CLASS_NAMES)
            + " (and synonyms such as man, kitten, bike, mug, phone, sofa, or groups: animals, vehicles)",
            query=query,
        )
    return QueryTargets(query=query, targets=targets, matches=tuple(matches), unmatched=tuple(unmatched))
