"""Settings of the aggregator (env prefix ``LIVESTREAM_AGGREGATOR_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from livestream.settings import ServiceSettings

DEFAULT_GAP_TOLERANCE_S = 1.5


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
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", description="Worker log level."
    )
    web_port: int | None = Field(
        default=None, description="Port of faust's web server (stats, table views); None disables it."
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

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def effective_app_id(self) -> str:
        return self.app_id or f"{self.topic_prefix}-aggregator"
