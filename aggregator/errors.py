"""Errors of the aggregator service (all subclasses of ``LivestreamError``)."""

from __future__ import annotations

from livestream.errors import LivestreamError


class AggregatorError(LivestreamError):
    """Root of the aggregator's errors."""


class TopicLayoutError(AggregatorError):
    """The input topics are missing or not co-partitioned, so the session table cannot be built."""


class BrokerOutageError(AggregatorError):
    """The broker kept refusing the worker's writes for longer than ``broker_outage_limit_s``."""
