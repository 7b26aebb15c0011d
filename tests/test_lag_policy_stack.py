"""The overload policy on the real stack: with no analyzer running, a live session's lag grows
past ``max_lag_s``; under ``lag_policy=skip`` ingest skips segments, and the session's header
and ingest's metrics record the lag and the skip. Once an analyzer runs it catches up and the
ended session finishes with every chunk accounted for."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from livestream.kafka.admin import ensure_topics
from livestream.stack import stack_for_tests
from livestream.testsource import LiveHlsSource, short_script
from schemas.records import ChunkRecord
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model]


def _metric(url: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples on a /metrics page whose labels include ``labels``."""
    text = httpx.get(url, timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def _chunk_records(bootstrap: str, topic: str, session_id: str, count: int) -> list[ChunkRecord]:
    """The session's first ``count`` chunk records (by index) as the analyzers got them."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: dict[int, ChunkRecord] = {}
    try:
        deadline = time.monotonic() + 30
        while len(found) < count and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    record = ChunkRecord.model_validate_json(message.value)
                    if record.session_id == session_id:
                        found.setdefault(record.chunk_index, record)
    finally:
        await consumer.stop()
    return [found[index] for index in sorted(found)]


def _wait_for(api: httpx.Client, path: str, done: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    session: dict[str, Any] = {}
    while time.monotonic() < deadline:
        session = api.get(path).json()
        if done(session):
            return session
        time.sleep(0.5)
    raise AssertionError(f"timed out; last state: {session}")


def test_a_lagging_analyzer_makes_ingest_skip_to_the_live_edge(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = Topics(prefix=f"lag{secrets.token_hex(4)}", partitions=3)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.specs()))
    settings = {
        "LIVESTREAM_INGEST_LAG_POLICY": "skip",
        "LIVESTREAM_INGEST_MAX_LAG_S": "6",
        "LIVESTREAM_INGEST_CHUNK_SECONDS": "2",
        "LIVESTREAM_INGEST_LAG_CHECK_INTERVAL_S": "1",
        "LIVESTREAM_INGEST_LAG_REPORT_INTERVAL_S": "1",
    }
    # No analyzer: nothing commits the chunks, so the lag grows with the stream.
    with stack_for_tests(
        kafka_bootstrap, topics.prefix, tmp_path, services=("aggregator", "ingest", "api"), extra_env=settings
    ) as stack:
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with (
            httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as api,
            LiveHlsSource(short_script(2.0), loop=True) as source,
        ):
            started = api.post(
                "/api/live/start-session",
                data={"source_url": source.url, "name": "lagging", "rapid_review_query": "a cat"},
            )
            assert started.status_code == 200, started.text
            stream_id, session_id = started.json()["stream_id"], started.json()["session_id"]
            path = f"/api/live/live-sessions/{stream_id}/{session_id}"

            skipping = _wait_for(
                api,
                path,
                lambda s: (s.get("skipped_time_s") or 0) > 0 and (s.get("lag_actions") or 0) >= 1,
                timeout=45,
            )
            assert skipping["status"] == "ACTIVE" and skipping["ingest_skipping"] is True, skipping
            assert skipping["ingest_lag_s"] > 6, skipping
            assert skipping["sample_fps"] == 2.0

            metrics = stack.metrics_urls["ingest"]
            assert _metric(metrics, "livestream_ingest_lag_actions_total", policy="skip") >= 1
            assert _metric(metrics, "livestream_ingest_lag_actions_total", policy="thin") == 0
            assert _metric(metrics, "livestream_ingest_skipped_seconds_total") > 0
            assert _metric(metrics, "livestream_ingest_max_session_lag_seconds") > 6
            # The skipped segments are gaps in the recording.
            manifest = Path(skipping["manifest_path"]).read_text()
            assert "#EXT-X-GAP" in manifest

            # An analyzer comes up: it works through the backlog (the skipped chunks are empty),
            # the lag falls and the session can finish.
            log_file = (tmp_path / "logs" / "late-analyzer.log").open("wb")
            analyzer = subprocess.Popen(
                [sys.executable, "-m", "analyzer"],
                env=stack.env() | {"LIVESTREAM_ANALYZER_INSTANCE_ID": "late-analyzer"},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                # The skip ends once the lag is below max_lag_s / 2: ingest goes on at the live edge.
                caught_up = _wait_for(api, path, lambda s: s["ingest_skipping"] is False, timeout=60)
                assert caught_up["ingest_lag_s"] < 6 and caught_up["lag_actions"] == skipping["lag_actions"]
                frames_again = caught_up["chunks_published"] + 2
                _wait_for(api, path, lambda s: s["chunk_count"] >= frames_again, timeout=30)
                ended = api.post(
                    "/api/live/end-session", data={"stream_id": stream_id, "session_id": session_id}
                )
                assert ended.status_code == 200, ended.text
                final = _wait_for(api, path, lambda s: s["status"] in {"FINISHED", "FAILED"}, timeout=60)
            finally:
                analyzer.terminate()
                try:
                    analyzer.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    analyzer.kill()
                    analyzer.wait()
                log_file.close()
    assert final["status"] == "FINISHED", final
    assert final["chunk_count"] == final["chunks_expected"] >= skipping["chunks_published"]
    assert final["missing_chunk_count"] == 0
    assert final["skipped_time_s"] >= skipping["skipped_time_s"] > 0
    assert final["lag_actions"] >= 1
    # The chunks say what was skipped: empty chunks covering the skipped segments, then frames again.
    chunks = asyncio.run(_chunk_records(kafka_bootstrap, topics.chunks, session_id, final["chunks_expected"]))
    assert [chunk.chunk_index for chunk in chunks] == list(range(final["chunks_expected"]))
    skipped = [chunk for chunk in chunks if chunk.skipped_s > 0]
    assert skipped and all(not chunk.frames for chunk in skipped)
    assert sum(chunk.skipped_s for chunk in chunks) == pytest.approx(final["skipped_time_s"], abs=0.01)
    assert any(chunk.frames for chunk in chunks if chunk.chunk_index > skipped[-1].chunk_index)
    assert all(chunk.sample_fps == 2.0 for chunk in chunks)
