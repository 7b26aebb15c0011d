"""The two vocabularies a query is mapped onto, and their label embeddings.

* ``detector``: the 80 COCO classes of the SSD detector, each with a short gloss written here
  (what the class means in COCO: "mouse" is a computer mouse, "remote" a TV remote), so that
  a phrase is compared with the meaning and not only with the name.
* ``classifier``: the 1000 ImageNet-1k classes of the image classifier, whose names are
  WordNet synonym lists ("tabby, tabby cat"); each synonym is embedded on its own.

ImageNet classes are grouped under a COCO *parent* where one exists, so the classifier runs
on the detector's crops of that class ("golden retriever" -> crops of "dog"); a class without
a parent ("forklift", "sliding door") is judged on whole frames. The parent table is keyed by
the class *index*: ImageNet-1k orders its classes by WordNet synset id, so each subtree of the
hierarchy is a contiguous range (all 118 dog breeds are 151..268, the domestic cats 281..285),
and the rest are single indices checked by name in the tests (``IMAGENET_PARENT_CHECKS``).
Only classes the SSD detector reliably boxes as their parent are listed: a forklift is not
reliably a COCO "truck", so it stays a whole-frame class.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analyzer.models.coco_labels import COCO_CLASS_NAMES
from analyzer.understanding.embedder import Embedder
from livestream.errors import ConfigurationError
from schemas.interpretation import ModelKind

IMAGENET_CLASS_COUNT = 1000


class VocabularyError(ConfigurationError):
    """A vocabulary (class names) or an embedder output that cannot be used."""


# One gloss per COCO class: what the class covers in COCO. The class name itself is embedded too.
COCO_GLOSSES: dict[str, str] = {
    "person": "a person, a human being, a man, a woman or a child",
    "bicycle": "a bicycle, a bike",
    "car": "a car, an automobile",
    "motorcycle": "a motorcycle, a motorbike",
    "airplane": "an airplane, an aircraft",
    "bus": "a bus, a coach",
    "train": "a train, a railway locomotive or tram",
    "truck": "a truck, a lorry",
    "boat": "a boat, a ship",
    "traffic light": "a traffic light, a traffic signal",
    "fire hydrant": "a fire hydrant on the street",
    "stop sign": "a red stop sign",
    "parking meter": "a parking meter",
    "bench": "a bench, a seat for several people",
    "bird": "a bird",
    "cat": "a cat, a kitten",
    "dog": "a dog, a puppy",
    "horse": "a horse, a pony",
    "sheep": "a sheep, a lamb",
    "cow": "a cow, cattle",
    "elephant": "an elephant",
    "bear": "a bear",
    "zebra": "a zebra",
    "giraffe": "a giraffe",
    "backpack": "a backpack, a rucksack",
    "umbrella": "an umbrella",
    "handbag": "a handbag, a purse",
    "tie": "a necktie",
    "suitcase": "a suitcase, luggage",
    "frisbee": "a frisbee, a flying disc",
    "skis": "skis, a pair of skis",
    "snowboard": "a snowboard",
    "sports ball": "a ball, a football or a tennis ball",
    "kite": "a kite flying on a string",
    "baseball bat": "a baseball bat",
    "baseball glove": "a baseball glove, a mitt",
    "skateboard": "a skateboard",
    "surfboard": "a surfboard",
    "tennis racket": "a tennis racket",
    "bottle": "a bottle",
    "wine glass": "a wine glass",
    "cup": "a cup, a mug",
    "fork": "a fork, cutlery",
    "knife": "a knife",
    "spoon": "a spoon",
    "bowl": "a bowl",
    "banana": "a banana",
    "apple": "an apple, a fruit",
    "sandwich": "a sandwich",
    "orange": "an orange, a citrus fruit",
    "broccoli": "broccoli",
    "carrot": "a carrot",
    "hot dog": "a hot dog sausage in a bun",
    "pizza": "a pizza",
    "donut": "a donut, a doughnut",
    "cake": "a cake",
    "chair": "a chair",
    "couch": "a couch, a sofa",
    "potted plant": "a potted plant, a houseplant",
    "bed": "a bed",
    "dining table": "a table, a dining table",
    "toilet": "a toilet",
    "tv": "a television, a TV screen",
    "laptop": "a laptop computer",
    "mouse": "a computer mouse",
    "remote": "a remote control",
    "keyboard": "a computer keyboard",
    "cell phone": "a mobile phone, a smartphone",
    "microwave": "a microwave oven",
    "oven": "an oven",
    "toaster": "a toaster",
    "sink": "a sink, a washbasin",
    "refrigerator": "a refrigerator, a fridge",
    "book": "a book",
    "clock": "a clock",
    "vase": "a vase",
    "scissors": "scissors",
    "teddy bear": "a teddy bear, a stuffed toy",
    "hair drier": "a hair dryer",
    "toothbrush": "a toothbrush",
}

# ImageNet-1k index ranges (inclusive) whose classes are kinds of one COCO class.
_PARENT_RANGES: tuple[tuple[int, int, str], ...] = (
    (7, 24, "bird"),  # cock .. great grey owl (21 "kite" is the bird of prey)
    (80, 100, "bird"),  # black grouse .. black swan
    (127, 146, "bird"),  # white stork .. albatross
    (151, 268, "dog"),  # Chihuahua .. Mexican hairless: the dog breeds
    (281, 285, "cat"),  # tabby .. Egyptian cat: domestic cats, not the big cats after them
    (294, 297, "bear"),  # brown bear .. sloth bear
    (345, 347, "cow"),  # ox, water buffalo, bison: boxed as COCO cows
    (348, 349, "sheep"),  # ram, bighorn
    (385, 386, "elephant"),  # Indian and African elephant
)

# Single ImageNet-1k indices -> COCO parent; each name is checked in the tests.
_PARENT_SINGLES: dict[int, str] = {
    101: "elephant",  # tusker
    339: "horse",  # sorrel
    340: "zebra",
    403: "boat",  # aircraft carrier
    404: "airplane",  # airliner
    895: "airplane",  # warplane
    407: "truck",  # ambulance: COCO boxes ambulances as trucks
    436: "car",  # beach wagon
    468: "car",  # cab
    511: "car",  # convertible
    609: "car",  # jeep
    627: "car",  # limousine
    656: "car",  # minivan
    661: "car",  # Model T
    751: "car",  # racer
    817: "car",  # sports car
    734: "car",  # police van
    555: "truck",  # fire engine
    569: "truck",  # garbage truck
    675: "truck",  # moving van
    717: "truck",  # pickup
    757: "truck",  # recreational vehicle
    803: "truck",  # snowplow
    864: "truck",  # tow truck
    867: "truck",  # trailer truck
    654: "bus",  # minibus
    779: "bus",  # school bus
    874: "bus",  # trolleybus
    466: "train",  # bullet train
    547: "train",  # electric locomotive
    565: "train",  # freight car
    705: "train",  # passenger car (a railway coach)
    820: "train",  # steam locomotive
    829: "train",  # streetcar
    444: "bicycle",  # bicycle-built-for-two
    671: "bicycle",  # mountain bike
    665: "motorcycle",  # moped
    670: "motorcycle",  # motor scooter
    472: "boat",  # canoe
    484: "boat",  # catamaran
    510: "boat",  # container ship
    554: "boat",  # fireboat
    576: "boat",  # gondola
    625: "boat",  # lifeboat
    628: "boat",  # liner
    724: "boat",  # pirate ship
    780: "boat",  # schooner
    814: "boat",  # speedboat
    871: "boat",  # trimaran
    914: "boat",  # yawl
    423: "chair",  # barber chair
    559: "chair",  # folding chair
    765: "chair",  # rocking chair
    857: "chair",  # throne
    831: "couch",  # studio couch
    532: "dining table",
    851: "tv",  # television
    664: "tv",  # monitor
    620: "laptop",
    681: "laptop",  # notebook computer
    508: "keyboard",  # computer keyboard
    673: "mouse",  # computer mouse
    761: "remote",  # remote control
    487: "cell phone",  # cellular telephone
    504: "cup",  # coffee mug
    968: "cup",
    440: "bottle",  # beer bottle
    720: "bottle",  # pill bottle
    737: "bottle",  # pop bottle
    898: "bottle",  # water bottle
    907: "bottle",  # wine bottle
    572: "wine glass",  # goblet
    659: "bowl",  # mixing bowl
    809: "bowl",  # soup bowl
    879: "umbrella",
    414: "backpack",
    748: "handbag",  # purse
    457: "tie",  # bow tie
    906: "tie",  # Windsor tie
    429: "sports ball",  # baseball
    430: "sports ball",  # basketball
    522: "sports ball",  # croquet ball
    574: "sports ball",  # golf ball
    722: "sports ball",  # ping-pong ball
    768: "sports ball",  # rugby ball
    805: "sports ball",  # soccer ball
    852: "sports ball",  # tennis ball
    890: "sports ball",  # volleyball
    752: "tennis racket",  # racket
    409: "clock",  # analog clock
    530: "clock",  # digital clock
    892: "clock",  # wall clock
    883: "vase",
    859: "toaster",
    651: "microwave",
    760: "refrigerator",
    896: "sink",  # washbasin
    861: "toilet",  # toilet seat
    703: "bench",  # park bench
    704: "parking meter",
    920: "traffic light",
    850: "teddy bear",
    954: "banana",
    948: "apple",  # Granny Smith
    950: "orange",
    937: "broccoli",
    934: "hot dog",
    963: "pizza",
    589: "hair drier",  # hand blower
}

# Index -> a word its ImageNet name must contain: guards the index table against a class list
# in another order (checked by ``check_imagenet_names`` and the model tests).
IMAGENET_PARENT_CHECKS: dict[int, str] = {
    7: "cock",
    24: "owl",
    80: "grouse",
    100: "swan",
    127: "stork",
    146: "albatross",
    151: "chihuahua",
    207: "golden retriever",
    268: "mexican hairless",
    281: "tabby",
    285: "egyptian cat",
    294: "brown bear",
    297: "sloth bear",
    345: "ox",
    349: "bighorn",
    385: "elephant",
    386: "elephant",
    555: "fire engine",
    561: "forklift",
    817: "sports car",
    879: "umbrella",
    968: "cup",
    589: "hair dryer",
}


def imagenet_parent(index: int) -> str | None:
    """The COCO class whose detections contain ImageNet class ``index``, or None (whole frames)."""
    for first, last, parent in _PARENT_RANGES:
        if first <= index <= last:
            return parent
    return _PARENT_SINGLES.get(index)


def imagenet_synonyms(name: str) -> tuple[str, ...]:
    """The synonyms of an ImageNet class name, lower-cased: "tabby, tabby cat" -> (tabby, tabby cat).

    Underscores (``maillot_2``) and digits are noise of the synset list, not words.
    """
    synonyms = []
    for part in name.split(","):
        text = " ".join(part.replace("_", " ").replace("-", " ").split()).lower()
        text = text.rstrip("0123456789 ").strip()
        if text and text not in synonyms:
            synonyms.append(text)
    return tuple(synonyms)


def _squash(text: str) -> str:
    return text.replace(" ", "").replace("drier", "dryer")


def check_imagenet_names(names: Sequence[str]) -> None:
    """Raise ``VocabularyError`` unless ``names`` is the ImageNet-1k class list in index order."""
    if len(names) != IMAGENET_CLASS_COUNT:
        raise VocabularyError("an ImageNet-1k class list has 1000 names", count=len(names))
    for index, word in IMAGENET_PARENT_CHECKS.items():
        if word not in " ".join(imagenet_synonyms(names[index])):
            raise VocabularyError(
                "the ImageNet class list is not in the standard index order",
                index=index,
                expected=word,
                found=names[index],
            )


@dataclass(frozen=True, slots=True)
class VocabularyEntry:
    """One label of one model: its name, the model, its COCO parent and the texts embedded for it."""

    label: str
    model: ModelKind
    parent: str | None  # classifier labels: the COCO class whose crops it runs on; None = whole frames
    texts: tuple[str, ...]
    index: int  # class index in its model's output


@dataclass(frozen=True)
class Vocabulary:
    """Every label a query can be mapped onto: COCO first, then ImageNet (if given)."""

    entries: tuple[VocabularyEntry, ...]
    # Entry position of an ImageNet class that is the same thing as its COCO parent -> the
    # parent's position ("teddy, teddy bear" -> teddy bear, "cellphone" -> cell phone).
    equivalent_parent: dict[int, int] = field(default_factory=dict)

    @classmethod
    def build(cls, imagenet_names: Sequence[str] | None = None) -> Vocabulary:
        """COCO classes with their glosses, plus ImageNet-1k classes when their names are given.

        An ImageNet label is its first synonym ("tabby"), the name a user reads.
        """
        entries = [
            VocabularyEntry(
                label=name,
                model=ModelKind.DETECTOR,
                parent=None,
                texts=(name, COCO_GLOSSES[name]),
                index=index,
            )
            for index, name in enumerate(COCO_CLASS_NAMES)
        ]
        if imagenet_names is not None:
            check_imagenet_names(imagenet_names)
            for index, name in enumerate(imagenet_names):
                synonyms = imagenet_synonyms(name)
                entries.append(
                    VocabularyEntry(
                        label=synonyms[0],
                        model=ModelKind.CLASSIFIER,
                        parent=imagenet_parent(index),
                        texts=synonyms,
                        index=index,
                    )
                )
        position = {(e.model, e.label): i for i, e in enumerate(entries)}
        equivalent = {
            i: position[(ModelKind.DETECTOR, e.parent)]
            for i, e in enumerate(entries)
            if e.parent is not None and _squash(e.parent) in {_squash(text) for text in e.texts}
        }
        return cls(entries=tuple(entries), equivalent_parent=equivalent)

    @property
    def has_classifier(self) -> bool:
        return any(entry.model is ModelKind.CLASSIFIER for entry in self.entries)


@dataclass(frozen=True, slots=True)
class LabelIndex:
    """The embedded vocabulary: one row per embedded text, and which entry each row belongs to.

    Built once per process (``Interpreter``): about 3,500 texts for COCO + ImageNet.
    """

    vocabulary: Vocabulary
    vectors: np.ndarray  # (texts, dim), L2-normalised rows
    owners: np.ndarray  # (texts,) entry index of each row

    @classmethod
    def build(
        cls, vocabulary: Vocabulary, embedder: Embedder, *, cache: VectorCache | None = None
    ) -> LabelIndex:
        texts = [text for entry in vocabulary.entries for text in entry.texts]
        owners = np.array(
            [position for position, entry in enumerate(vocabulary.entries) for _ in entry.texts],
            dtype=np.int64,
        )
        vectors = cache.load(texts) if cache is not None else None
        if vectors is None:
            vectors = embed_checked(embedder, texts)
            if cache is not None:
                cache.save(texts, vectors)
        return cls(vocabulary=vocabulary, vectors=vectors, owners=owners)

    def scores(self, phrase_vectors: np.ndarray) -> np.ndarray:
        """(phrases, entries) cosine similarity: the best of each entry's texts."""
        per_text = phrase_vectors @ self.vectors.T
        result = np.full((phrase_vectors.shape[0], len(self.vocabulary.entries)), -1.0, dtype=np.float32)
        np.maximum.at(result.T, self.owners, per_text.T)
        return result


@dataclass(frozen=True)
class VectorCache:
    """The vocabulary's embeddings on disk, so a process starts in well under a second instead of
    embedding ~3,500 texts (several seconds on two cores) every time.

    The file name hashes the embedding model's identity (its build's sha256) and the exact texts,
    so a new model or a changed vocabulary never reads stale vectors; a file that cannot be read
    is simply recomputed. Written to a temporary name and renamed (concurrent processes at most
    compute it twice).
    """

    directory: Path
    model_identity: str

    def path(self, texts: Sequence[str]) -> Path:
        digest = hashlib.sha256(self.model_identity.encode())
        for text in texts:
            digest.update(b"\0" + text.encode())
        return self.directory / f"vocabulary-{digest.hexdigest()[:24]}.npy"

    def load(self, texts: Sequence[str]) -> np.ndarray | None:
        try:
            vectors = np.load(self.path(texts), allow_pickle=False)
        except (OSError, ValueError):
            return None
        if vectors.ndim != 2 or vectors.shape[0] != len(texts) or vectors.dtype != np.float32:
            return None
        return vectors

    def save(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        target = self.path(texts)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            with partial.open("wb") as file:
                np.save(file, vectors, allow_pickle=False)
            partial.replace(target)
        except OSError:
            partial.unlink(missing_ok=True)  # a read-only models directory: compute each time


def embed_checked(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """``embedder.embed(texts)`` as float32, checked: one L2-normalised row per text."""
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    vectors = np.asarray(embedder.embed(list(texts)), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise VocabularyError(
            "the embedder returned the wrong shape", expected_rows=len(texts), shape=vectors.shape
        )
    norms = np.linalg.norm(vectors, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        # Cosine similarity is a dot product only on unit rows; normalise rather than trust.
        vectors = vectors / np.maximum(norms, 1e-12)[:, None]
    return vectors
