"""The evaluation's metrics (eval.metrics) on hand-made intervals: no broker, no models."""

from __future__ import annotations

import pytest

from eval.metrics import (
    false_events_per_hour,
    overlaps,
    precision,
    recall,
    score,
    start_error,
    subtract,
    temporal_iou,
    union,
)


def test_overlap_needs_positive_shared_time() -> None:
    assert overlaps((0, 4), (3, 5))
    assert not overlaps((0, 4), (4, 8))  # touching ends share no time
    assert not overlaps((0, 1), (2, 3))


def test_union_merges_overlapping_and_touching_intervals() -> None:
    assert union([(4, 6), (0, 2), (1, 3), (6, 7), (9, 9)]) == [(0, 3), (4, 7)]


def test_precision_and_recall() -> None:
    windows = [(0, 4), (8, 12)]
    events = [(0.5, 3.5), (5, 6), (9, 10), (10, 11)]
    assert precision(events, windows) == pytest.approx(3 / 4)
    assert recall(events, windows) == 1.0
    assert recall([(0, 1)], windows) == 0.5
    assert precision([], windows) is None
    assert recall(events, []) is None


def test_temporal_iou_is_union_based_and_clipped_to_the_session() -> None:
    # events cover 2-6, windows 0-4: intersection 2, union 6
    assert temporal_iou([(2, 6)], [(0, 4)], 12) == pytest.approx(2 / 6)
    # an event past the session's end counts only up to the end
    assert temporal_iou([(0, 20)], [(0, 12)], 12) == 1.0
    assert temporal_iou([], [], 12) == 1.0  # nothing to find, nothing reported
    assert temporal_iou([(1, 2)], [], 12) == 0.0
    assert temporal_iou([], [(1, 2)], 12) == 0.0


def test_start_error_takes_the_earliest_overlapping_event_per_window() -> None:
    windows = [(0, 4), (8, 12)]
    events = [(1, 2), (0.5, 3), (7.5, 9)]
    # window 1: 0.5 - 0 ; window 2: 7.5 - 8
    assert start_error(events, windows) == pytest.approx((0.5 + -0.5) / 2)
    assert start_error([(5, 6)], windows) is None


def test_false_events_per_hour_of_absent_time() -> None:
    # absent time: 12 - 8 = 4 s; one event outside the windows
    assert false_events_per_hour([(0, 4), (5, 6)], [(0, 4), (8, 12)], 12) == pytest.approx(3600 / 4)
    assert false_events_per_hour([(0, 1)], [(0, 12)], 12) is None  # never absent
    assert false_events_per_hour([], [], 10) == 0.0


def test_score_of_a_perfect_and_an_empty_answer() -> None:
    perfect = score([(0, 4), (8, 12)], [(0, 4), (8, 12)], 12)
    assert (perfect.precision, perfect.recall, perfect.iou, perfect.start_error_s) == (1.0, 1.0, 1.0, 0.0)
    assert perfect.false_per_hour == 0.0
    silent = score([], [(0, 4)], 12)
    assert (silent.precision, silent.recall, silent.iou, silent.start_error_s) == (None, 0.0, 0.0, None)


def test_subtract_cuts_removed_time_out() -> None:
    assert subtract([(0, 10)], [(2, 3), (5, 6)]) == [(0, 2), (3, 5), (6, 10)]
    assert subtract([(0, 2), (4, 6)], [(1, 5)]) == [(0, 1), (5, 6)]
    assert subtract([(1, 2)], [(0, 3)]) == []


def test_maybe_windows_are_neither_right_nor_wrong() -> None:
    windows, maybe = [(0, 4)], [(6, 8)]
    # one event on the truth, one only on the maybe time, one false
    events = [(0, 4), (6, 7), (10, 11)]
    scores = score(events, windows, 12, maybe)
    assert scores.maybe_events == 1
    assert scores.precision == pytest.approx(1 / 2)  # the maybe event is not counted
    assert scores.recall == 1.0
    # absent time: 12 - 4 - 2 = 6 s, one false event
    assert scores.false_per_hour == pytest.approx(3600 / 6)
    # IoU outside the maybe time: events 0-4 and 10-11, windows 0-4 -> 4 / 5
    assert scores.iou == pytest.approx(4 / 5)
    # an event reaching from the truth into maybe time is a right one
    assert score([(2, 7)], windows, 12, maybe).precision == 1.0
    # an event from maybe time into a window starts, for the start error, where the maybe time ends
    assert score([(6, 12)], [(8, 12)], 12, maybe).start_error_s == 0.0
