"""Base of every service's settings class: frozen, env-driven, Kafka address shared.

Each service defines one subclass with its own ``env_prefix`` (``LIVESTREAM_INGEST_`` ...).
The broker address is read from ``KAFKA_BOOTSTRAP_SERVERS`` by every service, so one
variable points the whole stack at one cluster.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
        description="Comma-separated host:port list of the Kafka cluster.",
    )
    topic_prefix: str = Field(
        default="livestream",
        validation_alias=AliasChoices("LIVESTREAM_TOPIC_PREFIX", "topic_prefix"),
        description="Prefix of every topic name, so several stacks can share one cluster.",
    )
