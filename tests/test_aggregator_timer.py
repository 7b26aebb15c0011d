"""Pure tests of the aggregator timer's choice of deadlines and purges (no Kafka, no faust worker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aggregator.app import sessions_due
from aggregator.settings import AggregatorSettings
from schemas.records import PurgeSession, SessionDeadline, SessionHeader, SessionStatus

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = AggregatorSettings(ending_timeout_s=60, retention_s=3600)


def stored(session_id: str, status: SessionStatus, *, source: bool = True, **times: datetime) -> dict:
    """A header as the table stores it (a JSON dict)."""
    header = SessionHeader(
        stream_id=f"stream-{session_id}",
        session_id=session_id,
        name="cam" if source else "",
        source_url="https://example.test/live.m3u8" if source else "",
        status=status,
        created_at=NOW - timedelta(days=2),
        updated_at=times.pop("updated_at", NOW),
        **times,
    )
    return header.model_dump(mode="json")


def test_due_deadlines_and_purges_are_chosen_by_status_and_age() -> None:
    entries = [
        (
            "ending-late",
            stored("ending-late", SessionStatus.ENDING, ending_since=NOW - timedelta(seconds=61)),
        ),
        (
            "ending-soon",
            stored("ending-soon", SessionStatus.ENDING, ending_since=NOW - timedelta(seconds=59)),
        ),
        ("finished-old", stored("finished-old", SessionStatus.FINISHED, ended_at=NOW - timedelta(hours=2))),
        ("failed-old", stored("failed-old", SessionStatus.FAILED, ended_at=NOW - timedelta(hours=1))),
        ("finished-new", stored("finished-new", SessionStatus.FINISHED, ended_at=NOW - timedelta(minutes=5))),
        ("active-old", stored("active-old", SessionStatus.ACTIVE, updated_at=NOW - timedelta(days=1))),
        (
            "placeholder-old",
            stored(
                "placeholder-old",
                SessionStatus.INITIALIZING,
                source=False,
                updated_at=NOW - timedelta(hours=2),
            ),
        ),
        ("garbage", "not a header"),
    ]
    due = sessions_due(entries, NOW, SETTINGS)
    assert {(type(c), c.session_id) for c in due} == {
        (SessionDeadline, "ending-late"),
        (PurgeSession, "finished-old"),
        (PurgeSession, "failed-old"),
        (PurgeSession, "placeholder-old"),
    }
    assert all(c.stream_id == f"stream-{c.session_id}" for c in due)
