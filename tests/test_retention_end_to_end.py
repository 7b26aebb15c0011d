"""Retention through the whole stack: a finished session disappears from every topic and from disk.

The four services run as processes (``livestream.stack``) with a retention of a few seconds; a
short scripted live stream runs to its end, then the aggregator's timer purges the session: its
header, chunk and event records get tombstones, ingest tombstones its checkpoint and deletes its
recording, and the API forgets it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from nomadic import NomadicAI
from nomadic.exceptions import APIError

from ingest.storage import directory_name
from livestream.kafka.admin import ensure_topics
from livestream.kafka.serde import session_partition
from livestream.kafka.testing import latest_values
from livestream.stack import Stack, stack_for_tests
from livestream.testsource import LiveHlsSource, short_script
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model]

RETENTION_S = 6


@pytest.fixture(scope="module")
def retention_topics(kafka_bootstrap: str) -> Topics:
    topics = Topics(prefix=f"ret{secrets.token_hex(4)}", partitions=3)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.specs()))
    return topics


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, retention_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with stack_for_tests(
        kafka_bootstrap,
        retention_topics.prefix,
        tmp_path_factory.mktemp("retention-stack"),
        extra_env={
            "LIVESTREAM_INGEST_CHUNK_SECONDS": "2",
            "LIVESTREAM_AGGREGATOR_RETENTION_S": str(RETENTION_S),
            "LIVESTREAM_AGGREGATOR_TIMER_INTERVAL_S": "0.5",
        },
    ) as stack:
        yield stack


def last_values(bootstrap: str, topic: str, partition: int, prefix: str) -> dict[str, bytes | None]:
    return asyncio.run(latest_values(bootstrap, topic, partition, prefix))


def test_a_finished_session_is_purged_everywhere_after_its_retention(
    stack: Stack, retention_topics: Topics, kafka_bootstrap: str
) -> None:
    sdk = NomadicAI(api_key=stack.api_key, base_url=stack.api_url)
    with LiveHlsSource(short_script()) as source:
        started = sdk.livestream.start_session(
            source_url=source.url, name="short-lived", rapid_review_query="detect a cat or a cup"
        )
        stream_id, session_id = started["stream_id"], started["session_id"]
        final = sdk.livestream.monitor_session(stream_id, session_id, poll_interval=0.3, timeout=120)
    assert final["status"] == "FINISHED", final.get("status_reason")
    assert final["chunk_count"] >= 1
    recording = stack.run_dir / "segments" / directory_name(session_id)
    assert Path(final["manifest_path"]).exists() and recording.is_dir()
    partition = session_partition(session_id, retention_topics.partitions)
    chunk_keys = set(last_values(kafka_bootstrap, retention_topics.session_chunks, partition, session_id))
    event_keys = set(last_values(kafka_bootstrap, retention_topics.session_events, partition, session_id))
    assert len(chunk_keys) == final["chunk_count"]
    assert len(event_keys) == final["event_count"]

    # Retention runs from the end of the session: wait until the API no longer knows it.
    deadline = time.monotonic() + RETENTION_S + 60
    while True:
        try:
            sdk.livestream.get_session(stream_id, session_id)
        except APIError as exc:
            assert exc.status_code == 404
            break
        assert time.monotonic() < deadline, "the session was not purged"
        time.sleep(0.5)
    waited_since_end = time.monotonic()

    # ... nor does anything else: every record the session wrote is a tombstone now, and ingest
    # removed its checkpoint and recording (ingest acts on the same purge command; give it a moment).
    headers = last_values(kafka_bootstrap, retention_topics.session_state, partition, session_id)
    assert headers == {session_id: None}
    chunks = last_values(kafka_bootstrap, retention_topics.session_chunks, partition, session_id)
    events = last_values(kafka_bootstrap, retention_topics.session_events, partition, session_id)
    assert set(chunks) == chunk_keys and set(events) == event_keys
    assert all(value is None for value in [*chunks.values(), *events.values()])
    while True:
        checkpoints = last_values(kafka_bootstrap, retention_topics.ingest_checkpoints, partition, session_id)
        if checkpoints.get(session_id, b"") is None and not recording.exists():
            break
        assert time.monotonic() < waited_since_end + 30, (checkpoints.keys(), recording.exists())
        time.sleep(0.5)
    listed = httpx.get(
        f"{stack.api_url}/api/live/live-sessions",
        params={"scope": "all"},
        headers={"X-API-Key": stack.api_key},
    ).json()["sessions"]
    assert session_id not in {s["session_id"] for s in listed}
