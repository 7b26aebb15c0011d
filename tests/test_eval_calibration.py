"""Pure tests of eval.calibration's reliability table and isotonic map (no model, no footage)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from eval.calibration import (
    EDGES,
    Sample,
    _pava,
    calibrated,
    ece_split,
    isotonic_fit,
    precision_at,
    reliability,
)


def _samples(score: float, right: int, wrong: int, label: str = "cat") -> list[Sample]:
    return [Sample(label, score, True)] * right + [Sample(label, score, False)] * wrong


def test_bins_count_mean_and_precision_on_a_hand_made_sample():
    samples = [
        *_samples(0.32, 1, 3),  # [0.3, 0.4): 1 of 4
        *_samples(0.38, 1, 0),  # [0.3, 0.4): now 2 of 5
        *_samples(0.55, 3, 1),  # [0.5, 0.6): 3 of 4
        *_samples(0.95, 2, 0),  # [0.9, 1.0]
        *_samples(1.0, 1, 0),  # the last bin is closed
        *_samples(0.2, 5, 5),  # below the first edge: ignored
    ]
    r = reliability(samples)
    assert [b.count for b in r.bins] == [5, 0, 4, 0, 0, 0, 3]
    assert r.samples == 12
    first, empty, third, last = r.bins[0], r.bins[1], r.bins[2], r.bins[-1]
    assert (first.lo, first.hi) == (0.3, 0.4)
    assert first.correct == 2
    assert first.precision == pytest.approx(0.4)
    assert first.mean_score == pytest.approx((4 * 0.32 + 0.38) / 5)
    assert empty.precision is None and empty.mean_score is None
    assert third.precision == pytest.approx(0.75)
    assert last.precision == 1.0 and last.mean_score == pytest.approx((0.95 * 2 + 1.0) / 3)
    expected = (
        5 / 12 * abs(0.4 - first.mean_score) + 4 / 12 * abs(0.75 - 0.55) + 3 / 12 * abs(1.0 - last.mean_score)
    )
    assert r.ece == pytest.approx(expected)


def test_bin_edges_are_half_open():
    r = reliability(_samples(0.4, 1, 0) + _samples(0.39999, 0, 1), edges=(0.3, 0.4, 0.5))
    assert [b.count for b in r.bins] == [1, 1]
    assert [b.precision for b in r.bins] == [0.0, 1.0]


def test_ece_is_zero_for_a_perfectly_calibrated_sample():
    samples: list[Sample] = []
    for score, right, wrong in ((0.35, 7, 13), (0.45, 9, 11), (0.65, 13, 7), (0.85, 17, 3), (0.95, 19, 1)):
        samples += _samples(score, right, wrong)
    r = reliability(samples)
    assert r.ece == pytest.approx(0.0, abs=1e-12)
    for b in r.bins:
        if b.count:
            assert b.precision == pytest.approx(b.mean_score)
    # Already monotone: the isotonic fit is the observed rate at each score.
    assert r.map_values == pytest.approx([0.35, 0.45, 0.65, 0.85, 0.95])


def test_isotonic_map_is_monotone_and_pools_violators():
    samples = [*_samples(0.3, 1, 1), *_samples(0.5, 0, 2), *_samples(0.7, 2, 0), *_samples(0.9, 1, 1)]
    xs, values = isotonic_fit(samples)
    assert xs == [0.3, 0.5, 0.7, 0.9]
    # 0.5 vs 0 pooled to 0.25; 1.0 vs 0.5 pooled to 0.75.
    assert values == pytest.approx([0.25, 0.25, 0.75, 0.75])
    assert all(b >= a for a, b in itertools.pairwise(values))
    r = reliability(samples, edges=(0.3, 0.6, 1.0))
    isotonic = [b.isotonic for b in r.bins]
    assert isotonic == pytest.approx([float(np.interp(0.45, xs, values)), float(np.interp(0.8, xs, values))])
    assert isotonic[0] <= isotonic[1]


def test_isotonic_map_is_monotone_on_random_samples():
    rng = np.random.default_rng(7)
    scores = rng.uniform(0.3, 1.0, 300)
    samples = [Sample("x", float(s), bool(rng.random() < s)) for s in scores]
    r = reliability(samples)
    assert all(b >= a for a, b in zip(r.map_values, r.map_values[1:], strict=False))
    centres = [b.isotonic for b in r.bins]
    assert all(v is not None and 0.0 <= v <= 1.0 for v in centres)
    assert all(b >= a for a, b in itertools.pairwise(centres))  # type: ignore[operator]
    assert sum(b.count for b in r.bins) == 300


def test_pava_fallback_matches_scipy():
    rng = np.random.default_rng(3)
    y = rng.random(50)
    w = rng.integers(1, 5, 50).astype(float)
    fitted = _pava(y, w)
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(fitted))
    # SciPy comes with the project (trackers); isotonic_regression since 1.12.
    from scipy.optimize import isotonic_regression

    assert fitted == pytest.approx(isotonic_regression(y, weights=w).x)


def test_calibrated_is_flat_beyond_the_fit_and_none_without_one():
    assert calibrated([], [], 0.5) is None
    assert calibrated([0.4, 0.8], [0.2, 0.9], 0.3) == pytest.approx(0.2)
    assert calibrated([0.4, 0.8], [0.2, 0.9], 0.95) == pytest.approx(0.9)
    assert calibrated([0.4, 0.8], [0.2, 0.9], 0.6) == pytest.approx(0.55)


def test_empty_sample_and_bad_edges():
    r = reliability([])
    assert r.samples == 0 and r.ece == 0.0
    assert len(r.bins) == len(EDGES) - 1
    assert all(b.count == 0 and b.isotonic is None for b in r.bins)
    with pytest.raises(ValueError):
        reliability([], edges=(0.5,))
    with pytest.raises(ValueError):
        reliability([], edges=(0.5, 0.5, 0.9))


def test_ece_split_and_precision_at():
    samples = [*_samples(0.35, 4, 0), *_samples(0.95, 0, 4)]  # under-confident low, over-confident high
    r = reliability(samples)
    split = ece_split(r)
    assert split["under"] == pytest.approx(0.5 * 0.65)
    assert split["over"] == pytest.approx(0.5 * 0.95)
    assert split["under"] + split["over"] == pytest.approx(r.ece)
    assert precision_at(samples, 0.3, 0.5) == (4, 1.0)
    assert precision_at(samples, 0.5) == (4, 0.0)
    assert precision_at(samples, 0.99) == (0, None)
