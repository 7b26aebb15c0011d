"""PlaylistTracker: live-edge join, each segment once, gaps, resets, endlist, refresh timing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingest.playlist import MediaPlaylist, Segment
from ingest.tracker import PlaylistTracker, outage_poll_delay, refresh_interval

URL = "http://origin.test/live.m3u8"


def window(
    first: int,
    count: int,
    *,
    duration: float = 2.0,
    target: float = 2.0,
    ended: bool = False,
    dated_from: datetime | None = None,
) -> MediaPlaylist:
    """A live sliding window listing segments ``first .. first+count-1``."""
    segments = tuple(
        Segment(
            media_sequence=n,
            uri=f"http://origin.test/s{n}.ts",
            duration=duration,
            program_date_time=dated_from + timedelta(seconds=n * duration) if dated_from else None,
        )
        for n in range(first, first + count)
    )
    return MediaPlaylist(URL, target, first, segments, ended=ended)


def sequences(update: object) -> list[int]:
    return [s.media_sequence for s in update.new_segments]  # type: ignore[attr-defined]


def test_joins_live_playlist_at_the_live_edge() -> None:
    tracker = PlaylistTracker(live_edge_segments=2)
    update = tracker.update(window(10, 6))
    assert sequences(update) == [14, 15]
    assert [s.stream_start for s in update.new_segments] == [0.0, 2.0]
    assert [s.ordinal for s in update.new_segments] == [0, 1]
    assert tracker.stream_time == 4.0


def test_ended_playlist_is_read_from_its_first_segment() -> None:
    update = PlaylistTracker(live_edge_segments=1).update(window(3, 4, ended=True))
    assert sequences(update) == [3, 4, 5, 6]
    assert update.ended


def test_sliding_window_yields_each_segment_once_in_order() -> None:
    tracker = PlaylistTracker(live_edge_segments=1)
    seen: list[int] = []
    seen += sequences(tracker.update(window(0, 3)))
    unchanged = tracker.update(window(0, 3))
    assert not unchanged.changed and sequences(unchanged) == []
    seen += sequences(tracker.update(window(1, 3)))
    seen += sequences(tracker.update(window(3, 3)))  # two new at once
    seen += sequences(tracker.update(window(4, 3)))
    assert seen == [2, 3, 4, 5, 6]
    assert tracker.missed_total == 0
    assert tracker.stream_time == pytest.approx(10.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_gap_is_counted_and_shifts_stream_time_by_the_missed_durations() -> None:
    clock = FakeClock()
    tracker = PlaylistTracker(live_edge_segments=1, clock=clock)
    tracker.update(window(0, 3, duration=2.0, target=2.0))  # yields 2, stream time now 2.0
    clock.now += 8.0  # the time those segments took to appear
    update = tracker.update(window(6, 3, duration=2.0, target=2.0))  # 3, 4, 5 slid out unseen
    assert update.missed == 3
    assert tracker.missed_total == 3
    first = update.new_segments[0]
    assert first.media_sequence == 6
    assert first.missed_before == 3
    assert first.missed_duration_before == pytest.approx(6.0)
    assert first.discontinuity
    assert first.stream_start == pytest.approx(2.0 + 6.0)
    assert [s.stream_start for s in update.new_segments] == pytest.approx([8.0, 10.0, 12.0])


def test_gap_duration_comes_from_program_date_time_when_available() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    tracker = PlaylistTracker(live_edge_segments=1)
    tracker.update(window(0, 2, duration=1.5, target=2.0, dated_from=start))  # yields 1
    update = tracker.update(window(4, 2, duration=1.5, target=2.0, dated_from=start))  # 2, 3 missed
    assert update.new_segments[0].missed_duration_before == pytest.approx(3.0)  # not 2 x target (4.0)
    assert update.new_segments[0].stream_start == pytest.approx(1.5 + 3.0)


def test_a_sequence_jump_is_one_gap_bounded_by_the_wall_clock() -> None:
    clock = FakeClock()
    tracker = PlaylistTracker(live_edge_segments=1, clock=clock)
    tracker.update(window(0, 3, duration=2.0, target=2.0))  # yields 2
    clock.now += 2.0
    leap = 2**62
    update = tracker.update(window(leap, 3, duration=2.0, target=2.0))
    assert sequences(update) == [leap, leap + 1, leap + 2]
    assert update.missed == leap - 3
    # Not (2**62 - 3) x 2 s: at most the 2 s that passed, plus two target durations of slack.
    first = update.new_segments[0]
    assert first.missed_duration_before == pytest.approx(2.0 + 2 * 2.0)
    assert first.stream_start == pytest.approx(2.0 + 6.0)
    # A PROGRAM-DATE-TIME far in the future does not make it longer either.
    dated = PlaylistTracker(live_edge_segments=1, clock=clock)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    dated.update(window(0, 2, dated_from=start))
    clock.now += 4.0
    far = window(10**6, 2, dated_from=start)
    gap = dated.update(far).new_segments[0].missed_duration_before
    assert gap == pytest.approx(4.0 + 4.0)


def test_a_source_restart_after_an_outage_is_a_gap_of_the_wall_clock_time() -> None:
    clock = FakeClock()
    tracker = PlaylistTracker(live_edge_segments=1, clock=clock)
    tracker.update(window(100, 3))  # yields 102; stream time 2.0
    clock.now += 30.0  # the source was away for 30 s and came back as a new encoder
    update = tracker.update(window(0, 3))  # rejoins at segment 2 (2 s of new media)
    assert update.reset and sequences(update) == [2]
    assert update.new_segments[0].missed_duration_before == pytest.approx(28.0)
    assert update.new_segments[0].stream_start == pytest.approx(2.0 + 28.0)


def test_media_sequence_reset_rejoins_at_live_edge_and_keeps_stream_time() -> None:
    tracker = PlaylistTracker(live_edge_segments=1)
    tracker.update(window(100, 3))
    tracker.update(window(101, 3))  # yields 103; stream time 4.0
    update = tracker.update(window(0, 2))  # encoder restarted
    assert update.reset and tracker.resets == 1
    assert sequences(update) == [1]
    assert update.new_segments[0].discontinuity
    assert update.new_segments[0].stream_start == pytest.approx(4.0)
    assert sequences(tracker.update(window(0, 3))) == [2]


def test_empty_live_playlist_waits_for_segments() -> None:
    tracker = PlaylistTracker(live_edge_segments=2)
    empty = tracker.update(MediaPlaylist(URL, 2.0, 0, ()))
    assert not empty.changed and not tracker.started
    assert sequences(tracker.update(window(0, 1))) == [0]


def test_refresh_interval_is_target_duration_or_half_when_unchanged() -> None:
    playlist = window(0, 1, target=6.0)
    assert refresh_interval(playlist, changed=True) == 6.0
    assert refresh_interval(playlist, changed=False) == 3.0
    # A tiny target duration does not make a busy loop.
    assert refresh_interval(window(0, 1, duration=0.001, target=0.001), changed=False) == 0.5


def test_outage_polls_back_off_exponentially_up_to_the_cap() -> None:
    delays = [outage_poll_delay(polls, target_duration=2.0, cap=15.0) for polls in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert outage_poll_delay(10**9, target_duration=0.001, cap=15.0) == 15.0
    assert outage_poll_delay(0, target_duration=0.001, cap=15.0) == 0.5  # never a busy loop
