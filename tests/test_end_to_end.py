"""The whole pipeline on a real broker: live HLS in, events out, driven by the real `nomadic` SDK.

The four services run as separate processes (``livestream.stack``) exactly as users run them;
the stream is a real live HLS stream written in real time from scripted footage and photos,
whose script is the ground truth.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import av
import pytest
from nomadic import NomadicAI
from nomadic.exceptions import APIError

from ingest.settings import IngestSettings
from livestream.kafka.admin import ensure_topics
from livestream.kafka.broker import free_port
from livestream.kafka.testing import TopicRecorder
from livestream.stack import Stack, stack_for_tests
from livestream.testsource import LiveHlsSource, default_script, short_script
from schemas.records import ChunkResult, Event, SessionState
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model]

QUERY = "detect a person, a cat or a cup"
# The stack runs on ingest's default chunk length, the one users get.
CHUNK_SECONDS = IngestSettings.model_fields["chunk_seconds"].default


@pytest.fixture(scope="module")
def e2e_topics(kafka_bootstrap: str) -> Topics:
    topics = Topics(prefix=f"e2e{secrets.token_hex(4)}", partitions=3)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.specs()))
    return topics


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, e2e_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with stack_for_tests(
        kafka_bootstrap,
        e2e_topics.prefix,
        tmp_path_factory.mktemp("stack"),
        analyzer_replicas=2,  # the chunks consumer group is shared, as in a scaled deployment
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> NomadicAI:
    return NomadicAI(api_key=stack.api_key, base_url=stack.api_url)


def overlaps(event: dict, start: float, end: float, slack: float) -> bool:
    return event["source_start"] < end + slack and event["source_end"] > start - slack


def with_source_times(events: list[dict], source_started_at: datetime) -> list[dict]:
    """Place events on the script's timeline through their capture wall clock.

    Ingest joins a live stream at its live edge, so stream time 0 is wherever the session
    joined; the source's PROGRAM-DATE-TIME tags let the wall clock ``captured_at`` map back to
    script time (``capture_time`` is stream time, like ``stream_time``).
    """
    placed = []
    for event in events:
        start = (datetime.fromisoformat(event["captured_at"]) - source_started_at).total_seconds()
        placed.append(
            event | {"source_start": start, "source_end": start + event["end_time"] - event["start_time"]}
        )
    return placed


def test_scripted_stream_yields_events_at_the_right_times(
    sdk: NomadicAI, stack: Stack, e2e_topics: Topics, kafka_bootstrap: str
) -> None:
    script = default_script()
    with (
        TopicRecorder(kafka_bootstrap, e2e_topics.events) as events_topic,
        TopicRecorder(kafka_bootstrap, e2e_topics.chunk_results) as results_topic,
        LiveHlsSource(script) as source,
    ):
        started = sdk.livestream.start_session(source_url=source.url, name="e2e", rapid_review_query=QUERY)
        stream_id, session_id = started["stream_id"], started["session_id"]
        assert started["status"] == "INITIALIZING"
        # What will be detected is said at once, and stays on the session.
        understood = started["interpretation"]
        assert understood["decision"] == "accepted"
        assert [(t["phrase"], [m["label"] for m in t["labels"]]) for t in understood["targets"]] == [
            ("person", ["person"]),
            ("cat", ["cat"]),
            ("cup", ["cup"]),
        ]
        first = sdk.livestream.get_session(stream_id, session_id)
        assert first["status"] in {"INITIALIZING", "ACTIVE"}
        assert first["interpretation"] == understood

        seen = list(sdk.livestream.iter_events(stream_id, session_id, poll_interval=0.5, timeout=240))
        final = sdk.livestream.get_session(stream_id, session_id)

    assert final["status"] == "FINISHED", final.get("status_reason")
    assert final["chunk_count"] == final["chunks_expected"] == len(final["chunks"]) > 0
    assert [c["chunk_index"] for c in final["chunks"]] == list(range(final["chunk_count"]))
    # The session's chunks were spread over the chunks topic's partitions, so both analyzer
    # replicas analysed some of them (ingest's chunk_partitioning="spread").
    results = [ChunkResult.model_validate_json(v) for v in results_topic.values if v]
    analysed_by = {r.analyzer_id for r in results if r.session_id == session_id}
    assert len(analysed_by) == 2, analysed_by
    assert seen, "no events reached the SDK"
    assert {e["event_id"] for e in seen} >= {e["event_id"] for e in final["events"]}

    assert source.started_at is not None
    events = with_source_times(final["events"], source.started_at)
    # One join offset for the whole session, at most the live-edge window of the source.
    offsets = {round(e["source_start"] - e["start_time"], 1) for e in events}
    assert len(offsets) == 1, offsets
    joined_at = offsets.pop()
    assert 0 <= joined_at <= 3 * source.segment_seconds, joined_at
    # Every chunk from the join to the end of the scripted stream was analysed.
    assert final["chunks"][-1]["end_time"] == pytest.approx(script.duration - joined_at, abs=0.5)
    truth = script.truth()
    for label, start, end in truth:
        # A scene that was (almost) over when the session joined the live stream is not owed.
        if label in {"person", "cat", "cup"} and end > joined_at + 1.0:
            assert any(e["label"] == label and overlaps(e, start, end, 0) for e in events), (
                f"no {label} event during {start}-{end}s: {[(e['label'], e['t_start']) for e in events]}"
            )
    # Photos of a cat and a cup are shown only in their scenes: no such event elsewhere.
    for event in (e for e in events if e["label"] in {"cat", "cup"}):
        windows = [(s, t) for label, s, t in truth if label == event["label"]]
        assert any(overlaps(event, s, t, CHUNK_SECONDS) for s, t in windows), event
    for event in events:
        assert event["t_start"] <= event["t_end"]
        assert event["chunk_relative_time"] == pytest.approx(
            event["stream_time"] - event["hls_cumulative_offset"], abs=1e-3
        )

    # Downstream consumers of the events topic see the per-chunk detections every merged event
    # (one tracked object's appearance, with its own id and track_id) was built from.
    on_topic = [Event.model_validate_json(v) for v in events_topic.values if v]
    raw = [e for e in on_topic if e.session_id == session_id]
    for event in final["events"]:
        assert event["track_id"] is not None, event
        assert any(
            r.label == event["label"]
            and r.start_time < event["end_time"]
            and event["start_time"] < r.end_time
            for r in raw
        ), event
    assert SessionState.model_validate(final).status == "FINISHED"
    assert Path(final["manifest_path"]).exists()

    # The SDK's signed manifest plays in a real player (FFmpeg's HLS demuxer, through PyAV).
    signed = sdk.livestream.get_signed_manifest(session_id)
    assert signed["method"] == "GET" and signed["url"].startswith(f"{stack.api_url}/playback/{session_id}/")
    assert datetime.fromisoformat(signed["expires_at"]) > datetime.now(UTC)
    with av.open(signed["url"], timeout=30) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (source.width, source.height)


def test_user_ends_a_running_session(sdk: NomadicAI) -> None:
    with LiveHlsSource(default_script(), loop=True) as source:
        started = sdk.livestream.start_session(source_url=source.url, name="ended-by-user")
        stream_id, session_id = started["stream_id"], started["session_id"]
        session = None
        for _ in range(240):  # wait (at most 2 min) until a first chunk was analysed
            session = sdk.livestream.get_session(stream_id, session_id)
            if session["chunk_count"] >= 1:
                break
            threading.Event().wait(0.5)
        assert session is not None and session["status"] == "ACTIVE" and session["chunk_count"] >= 1
        assert sdk.livestream.end_session(stream_id, session_id) == {"status": "ended"}
        final = sdk.livestream.monitor_session(stream_id, session_id, poll_interval=0.5, timeout=120)
    assert final["status"] == "FINISHED"
    assert final["chunk_count"] == final["chunks_expected"] >= 1
    assert sdk.livestream.end_session(stream_id, session_id) == {"status": "already_ended"}
    assert any(s["session_id"] == session_id for s in sdk.livestream.get_sessions())


def test_unreachable_source_fails_with_a_reason(sdk: NomadicAI) -> None:
    url = f"http://127.0.0.1:{free_port()}/live.m3u8"
    started = sdk.livestream.start_session(source_url=url, name="unreachable", rapid_review_query=QUERY)
    final = sdk.livestream.monitor_session(
        started["stream_id"], started["session_id"], poll_interval=0.5, timeout=120
    )
    assert final["status"] == "FAILED"
    assert final["status_reason"] and "127.0.0.1" in final["status_reason"]
    assert final["chunk_count"] == 0 and final["events"] == []


def test_unknown_session_is_a_404(sdk: NomadicAI) -> None:
    with pytest.raises(APIError) as excinfo:
        sdk.livestream.get_session("nope", "nope")
    assert excinfo.value.status_code == 404


def test_concurrent_sessions_stay_separate(sdk: NomadicAI) -> None:
    """Two live streams at once, different queries: each session gets only its own events."""
    queries = {"cats": "is there a cat?", "cups": "detect a cup"}
    with LiveHlsSource(short_script(6.0)) as cat_source, LiveHlsSource(short_script(6.0)) as cup_source:
        started = {
            name: sdk.livestream.start_session(
                source_url=source.url, name=name, rapid_review_query=queries[name]
            )
            for name, source in (("cats", cat_source), ("cups", cup_source))
        }
        finals = {
            name: sdk.livestream.monitor_session(
                s["stream_id"], s["session_id"], poll_interval=0.5, timeout=180
            )
            for name, s in started.items()
        }
    for name, label in (("cats", "cat"), ("cups", "cup")):
        final = finals[name]
        assert final["status"] == "FINISHED" and final["chunk_count"] == final["chunks_expected"] > 0
        assert final["events"], f"{name}: no events"
        assert {e["label"] for e in final["events"]} == {label}
        assert {e["session_id"] for e in final["events"]} == {started[name]["session_id"]}
