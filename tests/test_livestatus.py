"""The load line of ``livestream up`` (``livestream.livestatus``): parsing metrics pages, rates."""

from __future__ import annotations

from livestream.livestatus import Load, load_line, parse

INGEST_PAGE = """# HELP livestream_ingest_active_sessions Sessions running in the process.
# TYPE livestream_ingest_active_sessions gauge
livestream_ingest_active_sessions 3.0
# TYPE livestream_ingest_max_session_lag_seconds gauge
livestream_ingest_max_session_lag_seconds 4.12
# TYPE livestream_ingest_frames_decoded_total counter
livestream_ingest_frames_decoded_total 1000.0
# TYPE livestream_ingest_frames_sampled_total counter
livestream_ingest_frames_sampled_total 100.0
"""


def analyzer_page(inferred: float) -> str:
    name = "livestream_analyzer_frames_inferred_total"
    return f"# TYPE {name} counter\n{name} {inferred}\n"


def test_parse_sums_the_instances_and_takes_the_largest_lag() -> None:
    load = parse([INGEST_PAGE, analyzer_page(40.0), analyzer_page(50.0)])
    assert load == Load(
        sessions=3.0, max_lag_s=4.12, frames_decoded=1000.0, frames_sampled=100.0, frames_inferred=90.0
    )


def test_the_first_line_shows_totals_then_rates() -> None:
    first = Load(sessions=3, max_lag_s=4.12, frames_decoded=1000, frames_sampled=100, frames_inferred=90)
    assert load_line(first, None, 0.0) == (
        "load: 3 session(s), lag max 4.1 s, "
        "frames/s decoded 1000 in all, sampled 100 in all, inferred 90 in all"
    )
    later = Load(sessions=3, max_lag_s=2.0, frames_decoded=1500, frames_sampled=150, frames_inferred=140)
    assert load_line(later, first, 10.0) == (
        "load: 3 session(s), lag max 2.0 s, frames/s decoded 50.0, sampled 5.0, inferred 5.0"
    )


def test_nothing_scraped_and_a_restarted_counter() -> None:
    assert load_line(Load(), None, 0.0) == "load: ? session(s)"
    before = Load(sessions=1, frames_inferred=500)
    restarted = Load(sessions=1, frames_inferred=20)  # the analyzer restarted: its counter began again
    assert load_line(restarted, before, 10.0) == "load: 1 session(s), frames/s inferred 20 in all"


def test_unchanged_frames_are_shown_beside_the_inferred_ones() -> None:
    name = "livestream_analyzer_frames_unchanged_total"
    load = parse([analyzer_page(30.0) + f"# TYPE {name} counter\n{name} 12.0\n", analyzer_page(10.0)])
    assert (load.frames_inferred, load.frames_unchanged) == (40.0, 12.0)
    later = Load(sessions=1, frames_inferred=60.0, frames_unchanged=32.0)
    assert load_line(later, load, 10.0) == "load: 1 session(s), frames/s inferred 2.0, unchanged 2.0"
