"""Stage stamps (``livestream.stages``): the header codec and the histograms, without Kafka.

The stamps' journey across the real services is checked in ``tests/test_metrics.py``.
"""

from __future__ import annotations

import json

import pytest
from prometheus_client import REGISTRY

from livestream.stages import STAGE_HEADER, STAGES, StageTimes, observe, stages_from_headers


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_header_round_trip_keeps_order_and_milliseconds() -> None:
    times = (
        StageTimes().at("segment_listed", 100.0).at("segment_fetched", 100.25).at("chunk_published", 101.1234)
    )
    key, value = times.header()
    assert key == STAGE_HEADER
    assert list(json.loads(value)) == ["segment_listed", "segment_fetched", "chunk_published"]
    parsed = stages_from_headers([("other", b"x"), (key, value)])
    assert parsed.stamps == (
        ("segment_listed", 100.0),
        ("segment_fetched", 100.25),
        ("chunk_published", 101.123),
    )
    assert stages_from_headers({key: value}) == parsed  # faust hands headers over as a mapping
    assert parsed.get("segment_fetched") == 100.25 and parsed.get("sse_delivered") is None


def test_stamps_only_go_forward() -> None:
    times = StageTimes().at("chunk_consumed", 1.0)
    with pytest.raises(ValueError, match="cannot follow"):
        times.at("chunk_published", 2.0)
    with pytest.raises(ValueError, match="cannot follow"):
        times.at("chunk_consumed", 2.0)
    assert STAGES[0] == "segment_listed" and STAGES[-1] == "sse_delivered"


def test_observe_measures_from_the_previous_stamp_and_from_listing() -> None:
    before_step = sample("livestream_stage_seconds_sum", stage="chunk_inferred")
    before_age = sample("livestream_stage_age_seconds_sum", stage="chunk_inferred")
    before_count = sample("livestream_stage_seconds_count", stage="chunk_inferred")
    times = StageTimes().at("segment_listed", 10.0).at("chunk_consumed", 12.0)
    stamped = observe(times, "chunk_inferred", 12.5)
    assert stamped.last == ("chunk_inferred", 12.5)
    assert sample("livestream_stage_seconds_sum", stage="chunk_inferred") - before_step == pytest.approx(0.5)
    assert sample("livestream_stage_age_seconds_sum", stage="chunk_inferred") - before_age == pytest.approx(
        2.5
    )
    assert sample("livestream_stage_seconds_count", stage="chunk_inferred") - before_count == 1


def test_observe_without_stamps_only_stamps_and_clamps_skew() -> None:
    before = sample("livestream_stage_seconds_count", stage="chunk_published")
    stamped = observe(StageTimes(), "chunk_published", 5.0)
    assert stamped.stamps == (("chunk_published", 5.0),)
    assert sample("livestream_stage_seconds_count", stage="chunk_published") == before
    # Another host's clock ahead of ours: a negative interval counts as 0.
    skew_before = sample("livestream_stage_seconds_sum", stage="chunk_consumed")
    observe(stamped, "chunk_consumed", 4.0)
    assert sample("livestream_stage_seconds_sum", stage="chunk_consumed") == skew_before


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1, 2]",
        b'{"segment_listed": "soon"}',
        b'{"segment_listed": true}',
        b'{"nowhere": 1.0}',
        b'{"chunk_published": 2.0, "segment_listed": 1.0}',
        b'{"segment_listed": NaN}',
        b"{" + b" " * 2000 + b"}",
    ],
)
def test_malformed_headers_are_counted_and_read_as_no_stamps(value: bytes) -> None:
    before = sample("livestream_stage_header_errors_total")
    assert stages_from_headers([(STAGE_HEADER, value)]) == StageTimes()
    assert sample("livestream_stage_header_errors_total") == before + 1


def test_a_stage_already_stamped_restarts_the_timing_instead_of_failing() -> None:
    before = sample("livestream_stage_header_errors_total")
    times = StageTimes().at("segment_listed", 1.0).at("result_published", 3.0)
    stamped = observe(times, "chunk_consumed", 4.0)  # a result re-produced into the chunk topic
    assert stamped.stamps == (("chunk_consumed", 4.0),)
    assert sample("livestream_stage_header_errors_total") == before + 1


def test_no_header_means_no_stamps() -> None:
    assert stages_from_headers(None) == StageTimes()
    assert stages_from_headers([("unrelated", b"1")]) == StageTimes()


def test_the_aggregator_observes_state_folded_once_per_input_record() -> None:
    """A chunk result's fold writes a session chunk and event versions sharing its stamps: one
    observation for them all (``aggregator.app.stamp_folded``)."""
    from aggregator.app import _Output, stamp_folded

    one = StageTimes().at("segment_listed", 1.0).at("result_published", 2.0)
    other = StageTimes().at("segment_listed", 1.0).at("result_published", 2.0)  # equal, another input
    outputs = [
        _Output("chunk", b"s/chunk/0", b"{}", 0, one),
        _Output("event", b"s/event/0", b"{}", 0, one),
        _Output("event", b"s/event/1", b"{}", 0, one),
        _Output("chunk", b"s/chunk/1", b"{}", 0, other),
        _Output("header", b"s", b"{}", 0),
    ]
    before = sample("livestream_stage_age_seconds_count", stage="state_folded")
    written = stamp_folded(outputs, 3.0)
    assert sample("livestream_stage_age_seconds_count", stage="state_folded") == before + 2
    assert [o.stages.last if o.stages else None for o in written] == [("state_folded", 3.0)] * 4 + [None]
    assert [o.key for o in written] == [o.key for o in outputs]
