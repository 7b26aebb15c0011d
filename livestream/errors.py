"""One exception root for the whole system; each package subclasses it and carries context.

Errors are logged once, where they are handled (usually the service loop), never where raised.
"""

from __future__ import annotations

from typing import Any

from livestream.redact import redact_url


class LivestreamError(Exception):
    """Root of every error this system raises on purpose.

    ``context`` holds what an operator needs to find the failing thing: session id,
    topic, partition, offset, URL... It is rendered after the message.
    """

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        if not self.context:
            return self.message
        # A source URL may carry credentials; whatever shows an error (logs, FAILED reasons,
        # API answers) shows it redacted.
        ctx = ", ".join(
            f"{key}={redact_url(value) if 'url' in key and isinstance(value, str) else value}"
            for key, value in self.context.items()
        )
        return f"{self.message} ({ctx})"


class ConfigurationError(LivestreamError):
    """Settings or environment that cannot work (bad value, missing model file)."""


class KafkaSetupError(LivestreamError):
    """The broker could not be started, reached or prepared (topics)."""


class RecordError(LivestreamError):
    """A Kafka record that cannot be decoded into its schema (poison record)."""
