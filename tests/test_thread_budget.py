"""The thread rule for several analyzer replicas on one machine (``livestream.stack``)."""

from __future__ import annotations

from livestream.cli import default_analyzer_replicas
from livestream.stack import analyzer_thread_budget


def test_one_replica_keeps_the_defaults() -> None:
    assert analyzer_thread_budget(1, {}, cores=8) == {}


def test_replicas_share_the_cores_and_decode_with_one_thread() -> None:
    assert analyzer_thread_budget(2, {}, cores=8) == {
        "LIVESTREAM_ANALYZER_INTRA_OP_THREADS": "4",
        "LIVESTREAM_ANALYZER_DECODE_THREADS": "1",
    }
    # More replicas than cores: one thread each, never zero.
    assert analyzer_thread_budget(3, {}, cores=2)["LIVESTREAM_ANALYZER_INTRA_OP_THREADS"] == "1"


def test_a_value_set_by_the_user_is_kept() -> None:
    env = {"LIVESTREAM_ANALYZER_INTRA_OP_THREADS": "6"}
    assert analyzer_thread_budget(2, env, cores=8) == {"LIVESTREAM_ANALYZER_DECODE_THREADS": "1"}


def test_livestream_runs_two_analyzer_replicas_where_there_are_two_cores() -> None:
    assert [default_analyzer_replicas(cores) for cores in (1, 2, 3, 16)] == [1, 2, 2, 2]
    # The thread rule then gives each replica half the cores.
    assert analyzer_thread_budget(2, {}, cores=2)["LIVESTREAM_ANALYZER_INTRA_OP_THREADS"] == "1"
    assert analyzer_thread_budget(2, {}, cores=16)["LIVESTREAM_ANALYZER_INTRA_OP_THREADS"] == "8"
