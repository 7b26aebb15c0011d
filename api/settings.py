"""Settings of the HTTP API service (env prefix ``LIVESTREAM_API_``)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from api.tenants import DEFAULT_MIN_KEY_LENGTH, TenantKeys, load_tenants_file, merge_tenants, parse_tenant_map
from livestream.egress import SourceRuleList
from livestream.errors import ConfigurationError
from livestream.settings import ServiceSettings

MIN_PLAYBACK_SECRET_LENGTH = 16


class ApiSettings(ServiceSettings):
    """Where the API listens, which keys it accepts, how it talks to Kafka and what it keeps.

    Keys belong to tenants (organisations): ``LIVESTREAM_API_TENANTS`` (JSON) and
    ``LIVESTREAM_API_TENANTS_FILE`` (JSON or YAML) map tenant names to key lists, and
    ``LIVESTREAM_API_KEYS`` (comma-separated) adds keys to the ``default_tenant``; a tenant named
    in several places has all those keys. The service refuses to start without at least one key
    (there is no open mode), with a key shorter than ``min_key_length``, or with one key given to
    two tenants.
    """

    model_config = SettingsConfigDict(env_prefix="LIVESTREAM_API_", frozen=True, extra="ignore")

    host: str = Field(default="127.0.0.1", description="Interface uvicorn binds to.")
    # The deployment's one egress policy for sources: the API refuses a source at start-session
    # (422) with the same variables ingest enforces at connect time.
    allow_private_sources: bool = Field(
        default=False,
        validation_alias=AliasChoices("LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES", "allow_private_sources"),
        description="Same as ingest's: accept sources on loopback, private and other non-public addresses.",
    )
    source_allow: SourceRuleList = Field(
        default=(),
        validation_alias=AliasChoices("LIVESTREAM_INGEST_SOURCE_ALLOW", "source_allow"),
        description="Same as ingest's allow list of sources (CIDRs and host names).",
    )
    source_deny: SourceRuleList = Field(
        default=(),
        validation_alias=AliasChoices("LIVESTREAM_INGEST_SOURCE_DENY", "source_deny"),
        description="Same as ingest's deny list of sources.",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port uvicorn binds to (0 = any free).")
    # Prometheus metrics: never on the public port above (this API is meant to be exposed, and
    # the scrape endpoint has no key), but on a listener of their own that is off by default.
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=(
            "Port of a separate Prometheus listener (/metrics, no authentication; metrics in api.app); "
            "None: metrics are not served at all. The public port never serves them."
        ),
    )
    metrics_host: str | None = Field(
        default=None,
        description=(
            "Address the metrics listener binds to; None: the API's host. Set 127.0.0.1 (or a private "
            "interface) when the API itself listens publicly and only a local scraper should read it."
        ),
    )
    keys: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        repr=False,
        description="API keys of the default tenant (comma-separated in the environment).",
    )
    tenants: str = Field(
        default="",
        repr=False,
        description="Tenants and their keys as JSON, e.g. "
        '{"acme": ["<key1>", "<key2>"], "globex": ["<key3>"]}.',
    )
    tenants_file: Path | None = Field(
        default=None,
        description="A JSON or YAML file mapping tenant names to lists of keys (same shape as TENANTS).",
    )
    default_tenant: str = Field(
        default="default",
        description="Tenant of the LIVESTREAM_API_KEYS keys, and of sessions recorded before tenants "
        "existed (their records name no tenant).",
    )
    min_key_length: int = Field(
        default=DEFAULT_MIN_KEY_LENGTH, ge=1, description="Shortest API key accepted at start-up."
    )
    feed_token_ttl_seconds: float = Field(
        default=300.0, gt=0, description="Lifetime of a feed token from POST /api/live/feed-token."
    )
    feed_token_secret: SecretStr | None = Field(
        default=None,
        description="Secret that signs feed tokens; unset: random per process (set the same one on every "
        "replica behind one address so a token from one works on all).",
    )
    sse_query_api_key: bool = Field(
        default=True,
        description="Whether the SSE routes still accept ?api_key= (browsers' EventSource cannot send "
        "headers; prefer ?token= from POST /api/live/feed-token). Other routes never accept it.",
    )
    rate_limit_per_second: float = Field(
        default=20.0, ge=0, description="Requests per second each key may sustain (0: no limit)."
    )
    rate_limit_burst: int = Field(
        default=200, ge=1, description="Requests a key may send at once above the sustained rate."
    )
    max_sse_per_key: int = Field(
        default=20, ge=0, description="SSE feeds each key may hold open at once (0: no limit)."
    )
    max_active_sessions_per_key: int = Field(
        default=50, ge=0, description="Sessions not FINISHED/FAILED each key may have (0: no limit)."
    )
    max_active_sessions_per_tenant: int = Field(
        default=200, ge=0, description="Sessions not FINISHED/FAILED each tenant may have (0: no limit)."
    )
    max_body_bytes: int = Field(
        default=64 * 1024,
        ge=1,
        description="Largest request body, checked before authentication (413 beyond it).",
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
    broker_outage_limit_s: float = Field(
        default=300.0,
        gt=0,
        description="Broker errors (reading the session topics, producing commands) lasting this long "
        "with no success in between stop the API (exit status 2) for its supervisor to restart it.",
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

    # Signed playback (see api.signing and api.playback).
    playback_secret: SecretStr | None = Field(
        default=None,
        description="Secret (at least 16 characters) that signs playback URLs. Unset: random per process, "
        "so URLs do not survive a restart and replicas behind one address must be given the same one.",
    )
    playback_previous_secret: SecretStr | None = Field(
        default=None,
        description="The secret before the last rotation: URLs it signed stay valid until "
        "PLAYBACK_PREVIOUS_SECRET_VALID_UNTIL.",
    )
    playback_previous_secret_valid_until: datetime | None = Field(
        default=None,
        description="Instant (ISO 8601, with a time zone) until which the previous secret's signatures "
        "are accepted; an absolute instant, so restarts never extend it. Required with the previous secret.",
    )
    playback_url_ttl_s: float = Field(
        default=3600.0, gt=0, le=7 * 86400, description="Lifetime of a signed playback URL, in seconds."
    )
    public_base_url: str | None = Field(
        default=None,
        description="What signed playback URLs start with, e.g. https://video.example.com (behind a proxy). "
        "Unset: the base URL of the request that asked for the URL.",
    )

    @field_validator("public_base_url")
    @classmethod
    def _public_base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = value.strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("public_base_url must be an http(s) URL without query or fragment")
        return url

    @field_validator("playback_previous_secret_valid_until")
    @classmethod
    def _aware_instant(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give the instant with a time zone, e.g. 2026-01-31T12:00:00Z")
        return value

    @model_validator(mode="after")
    def _rotation_complete(self) -> ApiSettings:
        if self.playback_previous_secret is not None and self.playback_previous_secret_valid_until is None:
            raise ValueError(
                "LIVESTREAM_API_PLAYBACK_PREVIOUS_SECRET needs "
                "LIVESTREAM_API_PLAYBACK_PREVIOUS_SECRET_VALID_UNTIL"
            )
        for name, secret in (
            ("PLAYBACK_SECRET", self.playback_secret),
            ("PLAYBACK_PREVIOUS_SECRET", self.playback_previous_secret),
        ):
            if secret is not None and len(secret.get_secret_value()) < MIN_PLAYBACK_SECRET_LENGTH:
                raise ValueError(
                    f"LIVESTREAM_API_{name} must have at least {MIN_PLAYBACK_SECRET_LENGTH} characters"
                )
        return self

    @model_validator(mode="after")
    def _metrics_apart(self) -> ApiSettings:
        # One port for both would put the unauthenticated scrape endpoint on the public listener.
        if self.metrics_port is not None and self.metrics_port != 0 and self.metrics_port == self.port:
            raise ValueError("LIVESTREAM_API_METRICS_PORT must differ from LIVESTREAM_API_PORT")
        return self

    @property
    def effective_metrics_host(self) -> str:
        """Where the metrics listener binds: ``metrics_host``, else the API's own host."""
        return self.metrics_host or self.host

    @field_validator("keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple):
            return tuple(str(part).strip() for part in value if str(part).strip())
        return value

    def tenant_keys(self) -> TenantKeys:
        """Every tenant with its keys; ``ConfigurationError`` when there is no key or a bad entry.

        Reads ``tenants_file`` (so a start-up names a missing or malformed file at once).
        """
        maps: list[TenantKeys] = []
        if self.tenants.strip():
            try:
                configured = json.loads(self.tenants)
            except json.JSONDecodeError as exc:
                # The decoder's message gives a position only, never the text (which holds keys).
                raise ConfigurationError(
                    f"LIVESTREAM_API_TENANTS is not valid JSON: {exc.msg} at character {exc.pos}",
                    setting="LIVESTREAM_API_TENANTS",
                ) from None
            maps.append(parse_tenant_map(configured, source="LIVESTREAM_API_TENANTS"))
        if self.tenants_file is not None:
            maps.append(load_tenants_file(self.tenants_file))
        if self.keys:
            maps.append(
                parse_tenant_map({self.default_tenant: list(self.keys)}, source="LIVESTREAM_API_KEYS")
            )
        tenants = merge_tenants(*maps)
        if not tenants:
            raise ConfigurationError(
                "no API keys configured: set LIVESTREAM_API_KEYS to a comma-separated list of keys, or "
                "LIVESTREAM_API_TENANTS / LIVESTREAM_API_TENANTS_FILE to map tenants to keys "
                "(the API never runs without authentication)",
                setting="LIVESTREAM_API_KEYS",
            )
        return tenants

    def feed_token_secret_bytes(self) -> bytes | None:
        return self.feed_token_secret.get_secret_value().encode() if self.feed_token_secret else None
