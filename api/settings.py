"""Settings of the HTTP API service (env prefix ``LIVESTREAM_API_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from livestream.errors import ConfigurationError
from livestream.settings import ServiceSettings


class ApiSettings(ServiceSettings):
    """Where the API listens, which keys it accepts, how it talks to Kafka and what it keeps.

    ``LIVESTREAM_API_KEYS`` is a comma-separated list; the service refuses to start
    without at least one key (there is no open mode).
    """

    model_config = SettingsConfigDict(env_prefix="LIVESTREAM_API_", frozen=True, extra="ignore")

    host: str = Field(default="127.0.0.1", description="Interface uvicorn binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port uvicorn binds to (0 = any free).")
    keys: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Accepted API keys (comma-separated in the environment)."
    )
    client_id: str = Field(default="livestream-api", description="Kafka client id prefix.")
    sse_ping_seconds: float = Field(default=15.0, gt=0, description="Interval of SSE keep-alive pings.")
    subscriber_queue_size: int = Field(
        default=1000, ge=1, description="Items buffered per SSE subscriber before it is disconnected."
    )
    kafka_startup_timeout_seconds: float = Field(
        default=60.0, gt=0, description="How long startup waits for the broker and the topics."
    )
    produce_timeout_seconds: float = Field(
        default=15.0, gt=0, description="How long a command waits for the broker's acknowledgement."
    )
    store_dir: Path | None = Field(
        default=None,
        description="Directory of the SQLite file the session topics are materialized into; the file "
        "is new for every process (rebuilt from the topics) and removed at shutdown. "
        "Unset: a fresh temporary directory.",
    )
    store_cache_mib: int = Field(default=64, ge=1, description="SQLite page cache of the store, in MiB.")
    recent_finished_sessions: int = Field(
        default=1000,
        ge=0,
        description="Headers of at most this many finished sessions stay in memory (older ones are read "
        "from the store); active sessions are always in memory.",
    )
    recent_finished_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="A finished session's header stays in memory at most this long after it ended.",
    )
    global_feed_ring_size: int = Field(
        default=10_000,
        ge=1,
        description="Messages of the all-sessions SSE feed kept in memory for resuming with Last-Event-ID.",
    )

    @field_validator("keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple):
            return tuple(str(part).strip() for part in value if str(part).strip())
        return value

    def require_api_keys(self) -> tuple[str, ...]:
        """The configured keys, or ``ConfigurationError`` when there are none."""
        if not self.keys:
            raise ConfigurationError(
                "no API keys configured: set LIVESTREAM_API_KEYS to a comma-separated list of keys "
                "(the API never runs without authentication)",
                setting="LIVESTREAM_API_KEYS",
            )
        return self.keys
