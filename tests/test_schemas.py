"""Topic records: exported JSON Schema files match the models, and real records validate."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest

from schemas.export import SCHEMA_DIR, schema_documents, stale_files
from schemas.records import (
    SCHEMA_VERSION,
    SESSION_COMMAND_ADAPTER,
    ChunkRecord,
    EndSession,
    Event,
    Frame,
    SessionState,
    SessionStatus,
    Severity,
    StartSession,
    event_id_for,
    format_mmss,
)
from schemas.topics import Topics

NOW = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


def sample_event() -> Event:
    return Event(
        event_id=event_id_for("s", 0, "cat", 1.0),
        session_id="s",
        stream_id="st",
        type="detection",
        label="cat",
        description="cat visible",
        severity=Severity.HIGH,
        confidence=0.9,
        stream_time=1.0,
        start_time=1.0,
        end_time=2.0,
        capture_time=1.0,
        captured_at=NOW,
        chunk_index=0,
        chunk_relative_time=1.0,
        hls_cumulative_offset=0.0,
        t_start="00:01",
        t_end="00:02",
        analysis_id="a",
        chunk_id="s-c000000",
    )


def test_committed_json_schemas_match_the_models() -> None:
    assert stale_files() == [], "run `make schemas` and commit schemas/jsonschema"
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(schema_documents())


@pytest.mark.parametrize(
    ("file", "record"),
    [
        ("events.json", sample_event()),
        (
            "chunks.json",
            ChunkRecord(
                session_id="s",
                stream_id="st",
                chunk_id="s-c000000",
                chunk_index=0,
                start_time=0,
                end_time=4,
                hls_cumulative_offset=0,
                capture_time=0.0,
                captured_at=NOW,
                media_sequences=[1],
                frames=[Frame(stream_time=0.0, width=2, height=2, jpeg=b"\xff\xd8jpeg")],
            ),
        ),
        (
            "session-state.json",
            SessionState(
                stream_id="st",
                session_id="s",
                name="n",
                source_url="http://x/a.m3u8",
                status=SessionStatus.ACTIVE,
                created_at=NOW,
                updated_at=NOW,
                events=[sample_event()],
            ),
        ),
        ("session-commands.json", EndSession(session_id="s", stream_id="st")),
    ],
)
def test_records_validate_against_their_exported_schema(file: str, record) -> None:
    schema = json.loads((SCHEMA_DIR / file).read_text())
    jsonschema.validate(json.loads(record.model_dump_json()), schema)


def test_frames_travel_as_base64_and_round_trip() -> None:
    frame = Frame(stream_time=0.5, width=2, height=2, jpeg=b"\xff\xd8\x00binary")
    wire = json.loads(frame.model_dump_json())
    assert isinstance(wire["jpeg"], str)
    assert Frame.model_validate_json(frame.model_dump_json()).jpeg == b"\xff\xd8\x00binary"


def test_commands_are_a_discriminated_union_and_readers_ignore_new_fields() -> None:
    start = StartSession(session_id="s", stream_id="st", name="n", source_url="http://x/a.m3u8")
    raw = json.loads(start.model_dump_json()) | {"added_in_a_later_minor": 1}
    parsed = SESSION_COMMAND_ADAPTER.validate_python(raw)
    assert isinstance(parsed, StartSession) and parsed.schema_version == SCHEMA_VERSION


def test_event_ids_are_stable_and_mmss_formatting() -> None:
    assert event_id_for("s", 1, "cat", 4.0) == event_id_for("s", 1, "cat", 4.0)
    assert event_id_for("s", 1, "cat", 4.0) != event_id_for("s", 2, "cat", 4.0)
    assert format_mmss(0) == "00:00" and format_mmss(75.9) == "01:15" and format_mmss(3600) == "60:00"


def test_topics_are_co_partitioned_and_state_is_compacted() -> None:
    specs = {s.name: s for s in Topics(prefix="p", partitions=4).specs()}
    assert {s.partitions for s in specs.values()} == {4}
    for compacted in ("session-state", "session-chunks", "session-events", "ingest-checkpoints"):
        assert specs[f"p.{compacted}"].config["cleanup.policy"] == "compact"
    assert int(specs["p.chunks"].config["max.message.bytes"]) > 1_500_000
