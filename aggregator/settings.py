"""Settings of the aggregator (env prefix ``LIVESTREAM_AGGREGATOR_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from aggregator.reducer import (
    DEFAULT_ENDING_TIMEOUT_S,
    DEFAULT_GAP_TOLERANCE_S,
    DEFAULT_HEADER_BUDGET_BYTES,
    DEFAULT_MAX_EVENT_DURATION_S,
    DEFAULT_REORDER_WINDOW_CHUNKS,
    DEFAULT_REORDER_WINDOW_EVENTS,
    FoldPolicy,
)
from aggregator.thumbnails import DEFAULT_DELETE_DELAY_S
from aggregator.tracked import DEFAULT_MAX_LOST_S, DEFAULT_MAX_TRACKS, DEFAULT_MIN_FRAMES
from livestream.settings import ServiceSettings

DEFAULT_RETENTION_S = 30 * 24 * 3600.0


class AggregatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIVESTREAM_AGGREGATOR_", frozen=True, extra="ignore")

    app_id: str | None = Field(
        default=None,
        description="Faust app id (consumer group, changelog prefix); default '<topic_prefix>-aggregator'.",
    )
    partitions: int | None = Field(
        default=None,
        ge=1,
        description="Partition count of the input topics; default: read from the broker at start-up.",
    )
    gap_tolerance_s: float = Field(
        default=DEFAULT_GAP_TOLERANCE_S,
        ge=0.0,
        description="Same-label events this close in stream time are merged into one (chunk boundaries).",
    )
    max_event_duration_s: float = Field(
        default=DEFAULT_MAX_EVENT_DURATION_S,
        gt=0.0,
        description="A merged event never grows longer: the object still visible opens a new event.",
    )
    reorder_window_chunks: int = Field(
        default=DEFAULT_REORDER_WINDOW_CHUNKS,
        ge=1,
        description="Chunk results arriving early wait for their predecessors over at most this many "
        "chunks; then the oldest chunk still without result is declared missing.",
    )
    reorder_window_events: int = Field(
        default=DEFAULT_REORDER_WINDOW_EVENTS,
        ge=1,
        description="At most this many detections wait in the reorder window (keeps the header small).",
    )
    ending_timeout_s: float = Field(
        default=DEFAULT_ENDING_TIMEOUT_S,
        gt=0.0,
        description="An ENDING session whose missing chunk results (or ingest's end report) do not "
        "arrive within this time ends anyway, naming the missing chunks in its status_reason.",
    )
    header_budget_bytes: int = Field(
        default=DEFAULT_HEADER_BUDGET_BYTES,
        ge=4096,
        le=60 * 1024,
        description="A session header is kept under this size: past it, waiting chunks are declared "
        "missing, then the oldest open events are closed early.",
    )
    min_frames: int = Field(
        default=DEFAULT_MIN_FRAMES,
        ge=1,
        le=20,
        description="Sampled frames a tracked object must be seen in before it is an event (a session "
        "may set its own: start-session's min_frames).",
    )
    max_lost_s: float = Field(
        default=DEFAULT_MAX_LOST_S,
        ge=0.0,
        le=60.0,
        description="How long a tracked object may go unseen and stay the same event (start-session's "
        "max_lost_s overrides it).",
    )
    max_tracks: int = Field(
        default=DEFAULT_MAX_TRACKS,
        ge=1,
        le=64,
        description="Objects a session's tracker keeps at once (its state is in the session header).",
    )
    retention_s: float = Field(
        default=DEFAULT_RETENTION_S,
        gt=0.0,
        description="Finished and failed sessions (and placeholders never started) are purged "
        "everywhere this long after they ended: header, chunk and event records, checkpoint, recording.",
    )
    timer_interval_s: float = Field(
        default=10.0,
        gt=0.0,
        description="How often the worker looks for sessions past their ending timeout or retention.",
    )
    batch_max_records: int = Field(
        default=500,
        ge=1,
        description="Input records folded per batch; each batch waits once for the broker to "
        "acknowledge its chunk and event records before its table writes.",
    )
    batch_within_s: float = Field(
        default=0.02,
        gt=0.0,
        description="How long a batch waits to fill up: the most a record waits before it is folded.",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", description="Worker log level."
    )
    web_port: int | None = Field(
        default=None, description="Port of faust's web server (stats, table views); None disables it."
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of the Prometheus listener (/metrics, no authentication; see aggregator.app); "
        "None: no listener. One per worker process.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the metrics listener binds to: loopback by default; 0.0.0.0 for a scraper "
        "on another host, behind a firewall.",
    )
    replication_factor: int | None = Field(
        default=None,
        ge=1,
        description="Replication of faust's changelog topic; default: that of the input topics.",
    )
    # Faust timings (faust's defaults: 60 s, 3 s, 2.8 s).
    broker_session_timeout_s: float = Field(
        default=30.0, gt=0, description="How long the group waits for a dead worker before reassigning."
    )
    broker_heartbeat_interval_s: float = Field(
        default=1.0, gt=0, description="Kafka heartbeat; well under a third of the session timeout."
    )
    broker_commit_interval_s: float = Field(
        default=1.0, gt=0, description="Offset commits; a crash replays at most this much (idempotently)."
    )
    rebalance_reseek_delay_s: float = Field(
        default=2.0,
        ge=0,
        description="Delay of the re-seek to committed offsets after each rebalance (0: never); see app.",
    )
    startup_timeout_s: float = Field(default=30.0, gt=0, description="How long to wait for input topics.")
    retry_backoff_s: float = Field(
        default=0.5, gt=0, description="First wait before a failed batch write is retried; doubles each time."
    )
    retry_backoff_max_s: float = Field(default=10.0, gt=0, description="Longest wait between two retries.")
    broker_outage_limit_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a batch write is retried on broker errors before the worker stops with "
        "a non-zero exit (for its supervisor to restart it).",
    )
    delete_thumbnails: bool = Field(
        default=True,
        description="Delete the thumbnails of detections merged away, from the blob store "
        "LIVESTREAM_STORAGE_* configure (see aggregator/thumbnails.py).",
    )
    thumbnail_delete_delay_s: float = Field(
        default=DEFAULT_DELETE_DELAY_S,
        ge=0.0,
        description="How long after a merge the thumbnail it made unreferenced is deleted (a grace for "
        "readers a moment behind).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def fold_policy(self) -> FoldPolicy:
        return FoldPolicy(
            gap_tolerance_s=self.gap_tolerance_s,
            max_event_duration_s=self.max_event_duration_s,
            reorder_window_chunks=self.reorder_window_chunks,
            reorder_window_events=self.reorder_window_events,
            ending_timeout_s=self.ending_timeout_s,
            header_budget_bytes=self.header_budget_bytes,
            min_frames=self.min_frames,
            max_lost_s=self.max_lost_s,
            max_tracks=self.max_tracks,
        )

    @property
    def effective_app_id(self) -> str:
        return self.app_id or f"{self.topic_prefix}-aggregator"
