"""A small deterministic grammar for monitoring queries. Pure: no model, no I/O.

The query is lower-cased and split into tokens (words, numbers, commas). A scanner turns the
tokens into *items*, longest phrase first: conjunctions, negations, relation words, counts,
durations, colours, sizes, filler (stop words) and content words. A parser then groups the
items into noun phrases, actions and relations:

    [negation] [count] [size] [colour] modifier* noun+ [action particle*] [relation noun-phrase]

* a noun phrase ends at anything that is not a content word, or at an *action*: a verb from a
  short list or an ``-ing`` / ``-ed`` word after the phrase's first noun ("someone falling",
  "a bag left unattended"). An ``-ing`` word before any noun is a modifier ("a sleeping bag");
* the first noun phrase of a clause is its *subject*; a phrase after a relation word is that
  relation's *object*, and one after an action is the action's object ("picking up an apple");
* relations, durations and actions belong to the clause subject; commas, "and", "or", "but"
  start a new clause;
* a negation applies to what follows it: a noun phrase ("no people"), a relation ("not near a
  car", "without a helmet") or an action ("not falling");
* a bare number is a minimum ("two people" = at least two: a frame with three people also shows
  two); "exactly two" asks for equality. Vague quantities have fixed minimums (``VAGUE_COUNTS``).

The parser never drops a word silently: every content word ends up in a noun phrase, an action
or an unsupported relation, which the interpreter reports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.interpretation import CountOp, RelationKind, Size

COLOURS: dict[str, str] = {
    "red": "red",
    "orange": "orange",
    "yellow": "yellow",
    "green": "green",
    "blue": "blue",
    "purple": "purple",
    "violet": "purple",
    "pink": "pink",
    "brown": "brown",
    "black": "black",
    "white": "white",
    "gray": "gray",
    "grey": "gray",
}

SIZES: dict[str, Size] = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "big": "large",
    "large": "large",
    "huge": "large",
}

NUMBERS: dict[str, int] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "ninety": 90, "hundred": 100,
    "dozen": 12, "couple": 2, "pair": 2,
}  # fmt: skip

# Vague quantities -> a documented minimum.
VAGUE_COUNTS: dict[tuple[str, ...], int] = {
    ("multiple",): 2,
    ("a", "few"): 2,
    ("a", "couple", "of"): 2,
    ("a", "couple"): 2,
    ("a", "pair", "of"): 2,
    ("several",): 3,
    ("a", "group", "of"): 3,
    ("groups", "of"): 3,
    ("many",): 5,
    ("numerous",): 5,
    ("lots", "of"): 5,
    ("a", "lot", "of"): 5,
    ("a", "crowd", "of"): 5,
    ("crowds", "of"): 5,
    ("plenty", "of"): 5,
}

COUNT_OPS: dict[tuple[str, ...], CountOp] = {
    ("at", "least"): CountOp.AT_LEAST,
    ("no", "fewer", "than"): CountOp.AT_LEAST,
    ("no", "less", "than"): CountOp.AT_LEAST,
    ("not", "less", "than"): CountOp.AT_LEAST,
    ("not", "fewer", "than"): CountOp.AT_LEAST,
    ("a", "minimum", "of"): CountOp.AT_LEAST,
    ("more", "than"): CountOp.MORE_THAN,
    ("greater", "than"): CountOp.MORE_THAN,
    ("longer", "than"): CountOp.MORE_THAN,
    ("over",): CountOp.MORE_THAN,  # only before a number: else a relation word
    ("above",): CountOp.MORE_THAN,
    ("exactly",): CountOp.EXACTLY,
    ("precisely",): CountOp.EXACTLY,
    ("at", "most"): CountOp.AT_MOST,
    ("no", "more", "than"): CountOp.AT_MOST,
    ("not", "more", "than"): CountOp.AT_MOST,
    ("up", "to"): CountOp.AT_MOST,
    ("a", "maximum", "of"): CountOp.AT_MOST,
    ("fewer", "than"): CountOp.FEWER_THAN,
    ("less", "than"): CountOp.FEWER_THAN,
    ("shorter", "than"): CountOp.FEWER_THAN,
    ("under",): CountOp.FEWER_THAN,  # only before a number
    ("below",): CountOp.FEWER_THAN,
}
_OPS_BEFORE_NUMBER_ONLY = frozenset({("over",), ("above",), ("under",), ("below",), ("up", "to")})

# "for a while": durations with no number, reported as not judged.
VAGUE_DURATIONS: dict[tuple[str, ...], None] = {
    ("a", "while"): None,
    ("a", "long", "time"): None,
    ("a", "short", "time"): None,
    ("long",): None,
    ("ages",): None,
    ("some", "time"): None,
    ("a", "bit"): None,
}

# "3 or more people", "2 or fewer cars".
POSTFIX_OPS: dict[tuple[str, ...], CountOp] = {
    ("or", "more"): CountOp.AT_LEAST,
    ("or", "above"): CountOp.AT_LEAST,
    ("and", "more"): CountOp.AT_LEAST,
    ("plus",): CountOp.AT_LEAST,
    ("or", "fewer"): CountOp.AT_MOST,
    ("or", "less"): CountOp.AT_MOST,
}

UNITS: dict[str, float] = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
}  # fmt: skip

# Relation words, longest first. None: a spatial relation the geometry does not judge here.
RELATIONS: dict[tuple[str, ...], tuple[RelationKind | None, bool]] = {
    ("next", "to"): (RelationKind.NEAR, False),
    ("close", "to"): (RelationKind.NEAR, False),
    ("near", "to"): (RelationKind.NEAR, False),
    ("near",): (RelationKind.NEAR, False),
    ("nearby",): (RelationKind.NEAR, False),
    ("beside",): (RelationKind.NEAR, False),
    ("alongside",): (RelationKind.NEAR, False),
    ("by",): (RelationKind.NEAR, False),
    ("at",): (RelationKind.NEAR, False),
    ("with",): (RelationKind.NEAR, False),
    ("together", "with"): (RelationKind.NEAR, False),
    ("without",): (RelationKind.NEAR, True),
    ("far", "from"): (RelationKind.NEAR, True),
    ("away", "from"): (RelationKind.NEAR, True),
    ("holding",): (RelationKind.HOLDING, False),
    ("holds",): (RelationKind.HOLDING, False),
    ("hold",): (RelationKind.HOLDING, False),
    ("carrying",): (RelationKind.HOLDING, False),
    ("carries",): (RelationKind.HOLDING, False),
    ("carry",): (RelationKind.HOLDING, False),
    ("on", "top", "of"): (RelationKind.ON, False),
    ("on",): (RelationKind.ON, False),
    ("onto",): (RelationKind.ON, False),
    ("upon",): (RelationKind.ON, False),
    ("riding",): (RelationKind.ON, False),  # a rider is on the bike / horse
    ("rides",): (RelationKind.ON, False),
    ("inside", "of"): (RelationKind.INSIDE, False),
    ("inside",): (RelationKind.INSIDE, False),
    ("within",): (RelationKind.INSIDE, False),
    ("into",): (RelationKind.INSIDE, False),
    ("in",): (RelationKind.INSIDE, False),
    ("outside", "of"): (RelationKind.INSIDE, True),
    ("outside",): (RelationKind.INSIDE, True),
    ("in", "front", "of"): (None, False),
    ("behind",): (None, False),
    ("under",): (None, False),
    ("underneath",): (None, False),
    ("beneath",): (None, False),
    ("below",): (None, False),
    ("above",): (None, False),
    ("over",): (None, False),
    ("across",): (None, False),
    ("through",): (None, False),
    ("between",): (None, False),
    ("toward",): (None, False),
    ("towards",): (None, False),
    ("from",): (None, False),
    ("past",): (None, False),
    ("along",): (None, False),
    ("against",): (None, False),
    ("around",): (None, False),
}

NEGATIONS = frozenset({"not", "no", "never", "none", "nor"})
# Words that are a negated noun phrase on their own: "nobody" = no person.
NEGATED_NOUNS: dict[tuple[str, ...], str] = {
    ("nobody",): "person",
    ("no", "one"): "person",
    ("noone",): "person",
    ("no", "body"): "person",
    ("nothing",): "thing",
}
CONJUNCTIONS: dict[tuple[str, ...], str] = {
    (",",): ",",
    (";",): ",",
    ("and",): "and",
    ("or",): "or",
    ("but",): "but",
    ("plus",): "and",
    ("as", "well", "as"): "and",
    ("and", "also"): "and",
    ("and", "or"): "or",
}

STOPWORDS = frozenset(
    """
    a an the any some every each all this that these those there here it its them they their
    his her him she he we us our you your my me i of is are was were be been being am do does
    did has have had can could will would should shall may might must please detect detecting
    detection detections find finding spot spotting see seeing seen look looking watch watching
    show showing tell notify alert alerts flag track tracking identify identifying search
    searching monitor monitoring report reporting count counting appear appears appearing
    visible present presence frame frames video stream footage scene image picture camera view
    shot clip anything something thing things kind type sort when whenever while where who whom
    which what whether if then just also only either both currently somewhere anywhere
    let know let's want wanted like get give for to as any
    """.split()
)
# Words after a verb that belong to it: "picking up", "falling down", "running quickly".
PARTICLES = frozenset({"up", "down", "out", "off", "away", "back", "over", "around", "about", "again"})
VERBS = frozenset(
    """
    fall falls fell run runs ran walk walks walked stop stops stopped enter enters entered leave
    leaves exit exits exited cross crosses crossed jump jumps jumped sit sits sat stand stands
    stood open opens opened close closes closed pick picks picked drop drops dropped throw throws
    threw eat eats ate drink drinks drank fight fights fought move moves moved wave waves waved
    climb climbs climbed kick kicks kicked hit hits park parks parked arrive arrives arrived
    approach approaches approached pass passes passed go goes went come comes came lie lies lay
    steal steals stole push pushes pushed pull pulls pulled use uses used wear wears wore touch
    touches touched break breaks broke play plays played fly flies flew swim swims swam sleep
    sleeps slept wait waits waited look looks watch watches turn turns turned shake shakes chase
    chases chased bark barks barked left
    """.split()
)
# Words ending in -ing that are nouns.
ING_NOUNS = frozenset(
    """
    building ceiling clothing painting ring king wing string swing thing sling spring earring
    railing awning stocking pudding dumpling wedding icing bedding herring sibling duckling
    seedling viking evening morning parking ceiling stuffing frosting wiring lightning
    """.split()
)
ED_NOUNS = frozenset({"bed", "shed", "sled", "red", "seed", "weed", "steed", "reed", "need", "bobsled"})

DETERMINERS = frozenset(
    {"a", "an", "the", "any", "some", "every", "each", "all", "this", "that", "these", "those"}
)

_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+(?:'[a-z]+)?|[,;]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words, numbers and clause punctuation; "can't" stays a word, "10s" -> 10, s."""
    return _TOKEN.findall(text.lower())


def is_action_word(word: str) -> bool:
    """A verb form: listed, or an -ing / -ed word that is not a known noun."""
    if word in VERBS:
        return True
    if len(word) > 4 and word.endswith("ing") and word not in ING_NOUNS:
        return True
    return len(word) > 4 and word.endswith("ed") and word not in ED_NOUNS


def is_negation(word: str) -> bool:
    return word in NEGATIONS or word.endswith("n't")


@dataclass(frozen=True, slots=True)
class Count:
    op: CountOp
    n: int
    words: str = ""


@dataclass(frozen=True, slots=True)
class Duration:
    op: CountOp
    seconds: float
    words: str


@dataclass(slots=True)
class NounPhrase:
    """A noun phrase as parsed: its nouns and modifiers, attributes, count, role and negation."""

    words: list[str] = field(default_factory=list)  # modifiers + nouns, as written
    colour: str | None = None
    colour_word: str | None = None
    size: Size | None = None
    size_word: str | None = None
    count: Count | None = None
    duration: Duration | None = None
    negated: bool = False
    role: str = "subject"  # subject | object (of a relation) | action_object
    clause: int = 0
    fixed_noun: str | None = None  # "nobody" -> person: the noun is given, not embedded
    determiner: str | None = None  # "the" of "near the door": kept for display only

    @property
    def text(self) -> str:
        """The phrase as the user would read it: attributes and nouns ("red car")."""
        return " ".join([w for w in (self.size_word, self.colour_word) if w] + self.words)

    @property
    def head(self) -> str:
        return self.words[-1] if self.words else ""

    @property
    def written(self) -> str:
        """The text with its determiner, for phrases shown in context ("near the door")."""
        return f"{self.determiner} {self.text}" if self.determiner else self.text


@dataclass(frozen=True, slots=True)
class Action:
    """Verb words the models cannot judge ("picking up"), with the phrase they apply to."""

    words: str
    subject: int | None  # noun phrase index
    negated: bool


@dataclass(frozen=True, slots=True)
class ParsedRelation:
    kind: RelationKind | None  # None: a relation word the geometry does not judge ("behind")
    words: str
    subject: int | None
    object: int | None
    negated: bool


@dataclass(slots=True)
class ParsedQuery:
    tokens: list[str]
    phrases: list[NounPhrase] = field(default_factory=list)
    relations: list[ParsedRelation] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    vague: list[str] = field(default_factory=list)  # words parsed but with no judgeable meaning
    dangling_negation: bool = False  # a "not" followed by nothing it could apply to


def _match(
    tokens: list[str], position: int, table: Mapping[tuple[str, ...], object]
) -> tuple[str, ...] | None:
    """The longest key of ``table`` starting at ``position``."""
    for length in (4, 3, 2, 1):
        key = tuple(tokens[position : position + length])
        if len(key) == length and key in table:
            return key
    return None


def _number(token: str) -> float | None:
    if token in NUMBERS:
        return NUMBERS[token]
    try:
        return float(token)
    except ValueError:
        return None


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.t = tokens
        self.i = 0
        self.out = ParsedQuery(tokens=tokens)
        self.current: NounPhrase | None = None  # open noun phrase
        self.clause = 0
        self.subject: int | None = None  # clause subject index
        self.role = "subject"  # role of the next noun phrase
        self.relation: tuple[RelationKind | None, str, bool] | None = None  # awaiting its object
        self.negated = False  # pending negation
        self.count: Count | None = None  # pending count
        self.duration: Duration | None = None  # duration seen before any noun phrase
        self.action: list[str] | None = None  # open action words
        self.action_negated = False
        self.determiner: str | None = None  # the determiner just read, for the next noun phrase

    # --- noun phrases -------------------------------------------------------------------
    def _open(self) -> NounPhrase:
        if self.current is None:
            self._close_action()
            self.current = NounPhrase(
                role=self.role,
                clause=self.clause,
                negated=self.negated,
                count=self.count,
                determiner=self.determiner,
            )
            self.determiner = None
            self.negated = False
            self.count = None
        return self.current

    def _close(self) -> None:
        phrase = self.current
        self.current = None
        if phrase is None:
            return
        if not phrase.words and phrase.fixed_noun is None:
            # Only attributes: "a red one", "the big ones", or a colour used as a noun ("an orange").
            if phrase.colour_word and not phrase.size_word:
                phrase.words, phrase.colour, phrase.colour_word = [phrase.colour_word], None, None
            else:
                leftover = phrase.text
                if leftover:
                    self.out.vague.append(leftover)
                return
        index = len(self.out.phrases)
        self.out.phrases.append(phrase)
        if phrase.role == "subject" and self.subject is None:
            self.subject = index
            if self.duration is not None:
                phrase.duration, self.duration = self.duration, None
        if self.relation is not None:
            kind, words, negated = self.relation
            self.out.relations.append(
                ParsedRelation(kind=kind, words=words, subject=self.subject, object=index, negated=negated)
            )
            self.relation = None
        self.role = "subject" if self.subject is None else "action_object"

    # --- actions ------------------------------------------------------------------------
    def _close_action(self) -> None:
        if self.action:
            self.out.actions.append(
                Action(words=" ".join(self.action), subject=self.subject, negated=self.action_negated)
            )
        self.action = None
        self.action_negated = False

    def _start_action(self, word: str) -> None:
        self._close()
        self._close_action()
        self.action = [word]
        self.action_negated, self.negated = self.negated, False
        self.role = "action_object"

    # --- main loop ----------------------------------------------------------------------
    def parse(self) -> ParsedQuery:
        t = self.t
        while self.i < len(t):
            word = t[self.i]
            if self._negated_noun() or self._count_or_duration() or self._conjunction():
                continue
            if self._relation():
                continue
            if is_negation(word):
                self._close()
                self._close_action()
                self.negated = True
                self.i += 1
                continue
            if self.action is not None and (word in PARTICLES or word.endswith("ly")):
                self.action.append(word)
                self.i += 1
                continue
            if word in STOPWORDS or word.isdigit():
                self._close_action()
                if word not in DETERMINERS:
                    self._close()
                self.determiner = word if word in DETERMINERS and self.current is None else None
                self.i += 1
                continue
            if word in COLOURS and not self._followed_by_stop():
                phrase = self._open()
                if phrase.words:  # a colour after the noun starts a new phrase
                    self._close()
                    phrase = self._open()
                phrase.colour, phrase.colour_word = COLOURS[word], word
                self.i += 1
                continue
            if word in SIZES:
                phrase = self._open()
                phrase.size, phrase.size_word = SIZES[word], word
                self.i += 1
                continue
            if is_action_word(word) and self.current is not None and self.current.words:
                self._start_action(word)
                self.i += 1
                continue
            if is_action_word(word) and self.current is None and self.action is not None:
                self.action.append(word)
                self.i += 1
                continue
            if (
                is_action_word(word)
                and self.current is None
                and self.subject is not None
                and self.relation is None
                and self._next_is_boundary()
            ):
                # "a dog that barks", "someone who is falling", "a person not wearing a helmet":
                # a verb after the subject, not a modifier of a new noun phrase.
                self._start_action(word)
                self.i += 1
                continue
            self._open().words.append(word)
            self.i += 1
        self._close()
        self._close_action()
        if self.negated or self.relation is not None:
            self.out.dangling_negation = self.negated
            if self.relation is not None:
                self.out.vague.append(self.relation[1])
        if self.duration is not None:
            self.out.vague.append(self.duration.words)
        if self.count is not None:
            self.out.vague.append(self.count.words)  # "at least 3" of nothing
        return self.out

    def _followed_by_stop(self) -> bool:
        """A colour word followed by nothing nounish is a noun ("an orange")."""
        nxt = self.t[self.i + 1] if self.i + 1 < len(self.t) else None
        return (
            nxt is None or nxt in STOPWORDS or nxt in CONJUNCTIONS_FIRST or _relation_at(self.t, self.i + 1)
        )

    def _next_is_boundary(self) -> bool:
        nxt = self.t[self.i + 1] if self.i + 1 < len(self.t) else None
        return (
            nxt is None
            or nxt in PARTICLES
            or nxt in STOPWORDS
            or nxt in CONJUNCTIONS_FIRST
            or _relation_at(self.t, self.i + 1)
        )

    def _negated_noun(self) -> bool:
        key = _match(self.t, self.i, NEGATED_NOUNS)
        if key is None:
            return False
        self._close()
        self.negated = True
        phrase = self._open()
        phrase.words = list(key)
        phrase.fixed_noun = NEGATED_NOUNS[key]
        self.i += len(key)
        self._close()
        return True

    def _conjunction(self) -> bool:
        key = _match(self.t, self.i, CONJUNCTIONS)
        if key is None:
            return False
        self._close()
        self._close_action()
        self.clause += 1
        self.subject = None
        self.role = "subject"
        if self.relation is not None:
            self.out.vague.append(self.relation[1])
            self.relation = None
        self.i += len(key)
        return True

    def _relation(self) -> bool:
        key = _match(self.t, self.i, RELATIONS)
        if key is None:
            return False
        kind, negated = RELATIONS[key]
        self._close()
        self._close_action()
        negated = negated != self.negated  # "not without" reads as "with"
        self.negated = False
        if self.relation is not None:
            self.out.vague.append(self.relation[1])
        self.relation = (kind, " ".join(key), negated)
        self.role = "object"
        self.i += len(key)
        return True

    def _count_or_duration(self) -> bool:
        """A count ("at least 3", "several") or a duration ("for more than 10 s", "a minute")."""
        t, i = self.t, self.i
        start = i
        has_for = t[i] == "for"
        if has_for:
            i += 1
            vague = _match(t, i, VAGUE_DURATIONS)
            if vague is not None:
                # No number to judge: reported, never guessed.
                self.out.vague.append(" ".join(t[start : i + len(vague)]))
                self.i = i + len(vague)
                return True
        op_key = _match(t, i, COUNT_OPS)
        op = CountOp.AT_LEAST
        if op_key is not None:
            if op_key in _OPS_BEFORE_NUMBER_ONLY and (
                i + len(op_key) >= len(t) or not self._numberish(i + len(op_key))
            ):
                op_key = None
            else:
                op = COUNT_OPS[op_key]
                i += len(op_key)
        vague_key = _match(t, i, VAGUE_COUNTS) if op_key is None else None
        if vague_key is not None and not has_for:
            self._close()
            self.count = Count(CountOp.AT_LEAST, VAGUE_COUNTS[vague_key], " ".join(vague_key))
            self.i = i + len(vague_key)
            return True
        if i >= len(t):
            return False
        value: float | None
        if t[i] in {"a", "an", "one"} and i + 1 < len(t) and t[i + 1] in UNITS:
            value = 1.0
        elif t[i] == "half" and t[i + 1 : i + 3] in (["a", "minute"], ["an", "hour"]):
            value, i = 0.5, i + 1
        else:
            value = _number(t[i])
        if value is None:
            return False
        i += 1
        if i < len(t) and t[i] in UNITS:
            seconds = value * UNITS[t[i]]
            i += 1
            duration = Duration(op=op, seconds=seconds, words=" ".join(t[start:i]))
            self._attach_duration(duration)
            self.i = i
            return True
        if has_for or not float(value).is_integer():
            return False
        postfix = _match(t, i, POSTFIX_OPS)
        if postfix is not None and op_key is None:
            op = POSTFIX_OPS[postfix]
            i += len(postfix)
        self._close()
        if int(value) == 0:
            self.negated = not self.negated  # "zero people" = no people
        else:
            self.count = Count(op, int(value), " ".join(t[start:i]))
        self.i = i
        return True

    def _numberish(self, i: int) -> bool:
        return _number(self.t[i]) is not None or (
            self.t[i] in {"a", "an"} and i + 1 < len(self.t) and self.t[i + 1] in UNITS
        )

    def _attach_duration(self, duration: Duration) -> None:
        if self.current is not None and self.current.role == "subject":
            self._close()
        if self.subject is not None:
            phrase = self.out.phrases[self.subject]
            if phrase.duration is None:
                phrase.duration = duration
                return
            self.out.vague.append(duration.words)
            return
        self.duration = duration


CONJUNCTIONS_FIRST = frozenset(key[0] for key in CONJUNCTIONS)


def _relation_at(tokens: list[str], position: int) -> bool:
    return position < len(tokens) and _match(tokens, position, RELATIONS) is not None


def parse(text: str) -> ParsedQuery:
    """Parse a query into noun phrases, relations and actions; see the module docstring."""
    return _Parser(tokenize(text)).parse()
