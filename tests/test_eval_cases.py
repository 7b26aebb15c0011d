"""The evaluation's cases are well formed: every script renders and every truth window lies in its
script (no broker, no models; the evaluation itself is ``make eval``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from eval.cases import ACCEPTED, REFUSED, WARNED, Case, cases, scripts
from eval.media import recoloured_cup
from eval.metrics import overlaps
from livestream.testsource.media import render_frames

CASES = cases()
KINDS = {
    "count",
    "attribute",
    "relation",
    "synonym",
    "fine-grained",
    "absence",
    "refused",
    "warned",
    "footage",
}


def test_enough_cases_covering_every_kind() -> None:
    assert len(CASES) >= 25
    assert len({case.name for case in CASES}) == len(CASES), "case names must be unique"
    assert KINDS <= {case.kind for case in CASES}
    assert {case.decision for case in CASES} == {ACCEPTED, WARNED, REFUSED}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_truth_windows_lie_within_the_script(case: Case) -> None:
    script = scripts()[case.script_name]
    for start, end in case.windows:
        assert 0 <= start < end <= script.duration
    for (_, end), (start, _) in itertools.pairwise(case.windows):
        assert end < start, "windows are sorted and disjoint"
    for start, end in case.maybe:
        assert 0 <= start < end <= script.duration
        assert not any(overlaps((start, end), window) for window in case.windows), "maybe is not truth"


@pytest.mark.parametrize("name", sorted(scripts()))
def test_every_script_renders(name: str) -> None:
    script = scripts()[name]
    fps = 2  # enough to touch every scene; the eval's source renders at 12 fps
    frames = list(render_frames(script, 160, 90, fps))
    assert len(frames) == round(script.duration * fps)
    assert all(frame.shape == (90, 160, 3) and frame.dtype == np.uint8 for frame in frames)


def test_recoloured_cup_changes_the_cup_not_the_table() -> None:
    original, blue = recoloured_cup(0), recoloured_cup(225)
    assert np.array_equal(original[:, :60], blue[:, :60])  # the table left of the cup's region
    cup = (slice(150, 250), slice(200, 400))
    assert blue[cup][..., 2].mean() > original[cup][..., 2].mean() + 30  # bluer
