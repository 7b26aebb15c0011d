"""SIGKILL each service in the middle of a live session: the session still finishes with exactly
the chunks and events of an undisturbed run of the same scripted stream.

One supervised stack (two analyzer replicas) serves every test: a reference session runs
undisturbed first, then each test runs a fresh session of the same script, SIGKILLs one
service's process (or both analyzer replicas, or one of them) once a first chunk was analysed,
lets the supervisor restart it, and compares the finished session with the reference.

Determinism: the source is real time (so the kill lands while the stream is still live) but
lists its whole stream (window larger than the script) and ingest is told to join a live
playlist ``LIVE_EDGE_SEGMENTS`` from its end, i.e. at its first segment. Every session thus
ingests the same segments from stream time 0; with 2 s segments and 2 s chunks each chunk is
one segment, so chunk boundaries, sampled frames and detections do not depend on when the
session started or on where a resumed ingest picked up.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from nomadic import NomadicAI

from livestream.kafka.admin import ensure_topics
from livestream.kafka.testing import TopicRecorder
from livestream.stack import Stack, stack_for_tests
from livestream.testsource import LiveHlsSource, short_script
from schemas.records import Event
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model]

QUERY = "detect a person, a cat or a cup"
CHUNK_SECONDS = 2.0
SEGMENT_SECONDS = 2.0
SECONDS_PER_SCENE = 4.0  # cat 0-4 s, gray 4-8 s, cup 8-12 s: six chunks
WINDOW = 64  # more segments than the script has: the playlist lists the whole stream
LIVE_EDGE_SEGMENTS = 1000  # join a live playlist at its first listed segment
SESSION_TIMEOUT = 180.0


@pytest.fixture(scope="module")
def crash_topics(kafka_bootstrap: str) -> Topics:
    topics = Topics(prefix=f"crash{secrets.token_hex(4)}", partitions=3)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.specs()))
    return topics


class EventsRecorder(TopicRecorder):
    """A downstream consumer of the raw events topic."""

    def events_of(self, session_id: str) -> list[Event]:
        parsed = [Event.model_validate_json(v) for v in list(self.values)]
        return [e for e in parsed if e.session_id == session_id]


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, crash_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with stack_for_tests(
        kafka_bootstrap,
        crash_topics.prefix,
        tmp_path_factory.mktemp("crash-stack"),
        analyzer_replicas=2,
        extra_env={
            "LIVESTREAM_INGEST_CHUNK_SECONDS": str(CHUNK_SECONDS),
            "LIVESTREAM_INGEST_LIVE_EDGE_SEGMENTS": str(LIVE_EDGE_SEGMENTS),
        },
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> NomadicAI:
    return NomadicAI(api_key=stack.api_key, base_url=stack.api_url)


@pytest.fixture(scope="module")
def events_topic(kafka_bootstrap: str, crash_topics: Topics) -> Iterator[EventsRecorder]:
    with EventsRecorder(kafka_bootstrap, crash_topics.events) as recorder:
        yield recorder


def get_session(sdk: NomadicAI, stream_id: str, session_id: str) -> dict[str, Any] | None:
    """The session, or None while the API is down (killed and not yet restarted)."""
    try:
        return sdk.livestream.get_session(stream_id, session_id)
    except Exception:  # connection refused / reset while the API restarts
        return None


def wait_for(
    sdk: NomadicAI, stream_id: str, session_id: str, done: Any, timeout: float, what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        session = get_session(sdk, stream_id, session_id)
        if session is not None:
            last = session
            if done(session):
                return session
        time.sleep(0.3)
    summary = None if last is None else {k: last.get(k) for k in ("status", "status_reason", "chunk_count")}
    raise AssertionError(f"{what}: not reached in {timeout:.0f}s (last: {summary})")


def unit_pids(stack: Stack) -> dict[str, int | None]:
    """The pid of every supervised unit: the service processes, and the broker when it has one."""
    return {unit.name: unit.pid for unit in stack.supervisor.units()}


def wait_restarted(stack: Stack, names: list[str], before: dict[str, int], old_pids: dict[str, int]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert stack.failure is None, stack.failure
        units = {unit.name: unit for unit in stack.supervisor.units()}
        if all(
            stack.restarts.get(name, 0) > before.get(name, 0)
            and units[name].pid not in (None, old_pids[name])
            and units[name].returncode is None
            for name in names
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"{names} not restarted: restarts={stack.restarts} ({stack.status_line()})")


class Run:
    """One finished session of the scripted stream, in comparable form."""

    def __init__(
        self, session_id: str, final: dict[str, Any], raw: list[Event], killed_at: dict | None
    ) -> None:
        self.session_id = session_id
        self.final = final
        self.raw = raw
        self.killed_at = killed_at

    @property
    def chunks(self) -> list[tuple]:
        return [
            (c["chunk_index"], round(c["start_time"], 3), round(c["end_time"], 3), c["status"])
            for c in self.final["chunks"]
        ]

    @property
    def merged(self) -> list[tuple]:
        return sorted(
            (e["label"], round(e["start_time"], 3), round(e["end_time"], 3)) for e in self.final["events"]
        )

    @property
    def raw_detections(self) -> set[tuple]:
        """The raw events after de-duplication, by what they say (ids differ between sessions)."""
        return {(e.chunk_index, e.label, round(e.start_time, 3), round(e.end_time, 3)) for e in self.raw}


ONE_REPLICA = "the replica analysing the session"


def analysing_replica(stack: Stack, session_id: str) -> str:
    """The analyzer replica that analysed the session's chunks so far (from its log)."""
    replicas = [name for name, module in stack.instances() if module == "analyzer"]
    found = [name for name in replicas if f"session {session_id} chunk" in stack.log_tail(name, 400)]
    assert len(found) == 1, f"session {session_id} analysed by {found or 'no replica'} of {replicas}"
    return found[0]


def run_session(
    sdk: NomadicAI,
    stack: Stack,
    events_topic: EventsRecorder,
    name: str,
    kill: list[str] | None = None,
) -> Run:
    with LiveHlsSource(
        short_script(SECONDS_PER_SCENE), segment_seconds=SEGMENT_SECONDS, window=WINDOW
    ) as source:
        started = sdk.livestream.start_session(source_url=source.url, name=name, rapid_review_query=QUERY)
        stream_id, session_id = started["stream_id"], started["session_id"]
        killed_at = None
        if kill:
            # In the middle of the session: a first chunk was analysed, the stream is still live.
            session = wait_for(
                sdk, stream_id, session_id, lambda s: s["chunk_count"] >= 1, 120, "a first analysed chunk"
            )
            assert not source.finished, "the stream ended before the kill: the test would prove nothing"
            assert session["status"] == "ACTIVE", session["status"]
            kill = [analysing_replica(stack, session_id)] if kill == [ONE_REPLICA] else kill
            killed_at = {
                "killed": kill,
                "chunk_count": session["chunk_count"],
                "segments": source.segments_published,
            }
            before = dict(stack.restarts)
            pids = unit_pids(stack)
            old_pids = {n: pid for n in kill if (pid := pids[n]) is not None}
            assert sorted(old_pids) == sorted(kill), pids
            for n in kill:
                os.kill(old_pids[n], signal.SIGKILL)
            wait_restarted(stack, kill, before, old_pids)
        final = wait_for(
            sdk,
            stream_id,
            session_id,
            lambda s: s["status"] in {"FINISHED", "FAILED"},
            SESSION_TIMEOUT,
            f"session {name} finished",
        )
    # The raw events of the session's last chunks may still be on their way to our consumer.
    time.sleep(1.0)
    return Run(session_id, final, events_topic.events_of(session_id), killed_at)


@pytest.fixture(scope="module")
def reference(sdk: NomadicAI, stack: Stack, events_topic: EventsRecorder) -> Run:
    return undisturbed_run(sdk, stack, events_topic)


def undisturbed_run(sdk: NomadicAI, stack: Stack, events_topic: EventsRecorder) -> Run:
    """The reference: a session nothing disturbs, checked against the script's ground truth."""
    run = run_session(sdk, stack, events_topic, "reference")
    final = run.final
    assert final["status"] == "FINISHED", final.get("status_reason")
    expected_chunks = round(3 * SECONDS_PER_SCENE / CHUNK_SECONDS)
    assert final["chunk_count"] == final["chunks_expected"] == expected_chunks, final["chunk_count"]
    assert [c[3] for c in run.chunks] == ["ok"] * expected_chunks, run.chunks
    # The script's ground truth, from stream time 0 (the session joined at the first segment).
    labels = {label for label, _, _ in run.merged}
    assert labels == {"cat", "cup"}, run.merged
    assert all(start < SECONDS_PER_SCENE for label, start, _ in run.merged if label == "cat"), run.merged
    assert all(start >= 2 * SECONDS_PER_SCENE for label, start, _ in run.merged if label == "cup"), run.merged
    assert run.raw, "no raw events on the events topic"
    return run


def assert_same_as_reference(run: Run, reference: Run) -> None:
    final = run.final
    assert final["status"] == "FINISHED", final.get("status_reason")
    assert final["chunk_count"] == final["chunks_expected"] == reference.final["chunk_count"]
    assert final.get("missing_chunk_count", 0) == 0 and final.get("failed_chunk_count", 0) == 0
    assert run.chunks == reference.chunks
    # Merged events: the same labels and times, none doubled.
    assert run.merged == reference.merged
    ids = [e["event_id"] for e in final["events"]]
    assert len(ids) == len(set(ids)), Counter(ids)
    assert final["event_count"] == len(reference.final["events"])
    # Raw events topic: after de-duplication by event_id, exactly the reference's detections; a
    # redelivered chunk re-produced the same ids (one id per detection).
    raw_ids = {e.event_id for e in run.raw}
    assert run.raw_detections == reference.raw_detections
    assert len(raw_ids) == len(run.raw_detections), (len(raw_ids), len(run.raw_detections))
    # Every merged event (one tracked object's appearance) rests on raw detections of its label.
    for event in final["events"]:
        assert any(
            raw.label == event["label"]
            and raw.start_time < event["end_time"]
            and event["start_time"] < raw.end_time
            for raw in run.raw
        ), event


KILLS = {
    "ingest": ["ingest"],
    "analyzer": ["analyzer-1", "analyzer-2"],  # every replica: no analyzer left until restarts
    "aggregator": ["aggregator"],
    "api": ["api"],
    # Two replicas in one group: the one that holds the session's partition is killed, the other
    # takes the partition over in the rebalance while the killed one restarts.
    "one-analyzer-replica": [ONE_REPLICA],
}


@pytest.mark.parametrize("target", list(KILLS))
def test_session_survives_a_killed_service(
    target: str, sdk: NomadicAI, stack: Stack, events_topic: EventsRecorder, reference: Run
) -> None:
    run = run_session(sdk, stack, events_topic, f"kill-{target}", kill=KILLS[target])
    assert run.killed_at is not None
    print(f"{target}: killed at {run.killed_at}, restarts {stack.restarts}")
    assert_same_as_reference(run, reference)
    assert stack.failure is None
