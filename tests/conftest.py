"""Shared fixtures. Logic lives in ``livestream.kafka.testing``; keep this file small."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from livestream.kafka.testing import create_test_topics, kafka_for_tests
from schemas.topics import Topics

# Every test source of this suite is on loopback, which the egress policy refuses by default:
# allow it explicitly, at import time so that service processes the tests start inherit it.
# Tests of the policy itself pass settings with it off.
os.environ.setdefault("LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES", "true")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a real Kafka broker: $KAFKA_BOOTSTRAP_SERVERS, Docker, or a local broker."""
    with kafka_for_tests() as bootstrap:
        yield bootstrap


@pytest.fixture
async def topics(kafka_bootstrap: str) -> Topics:
    """The system's topics under a prefix unique to this test, 3 partitions each (no cross-talk)."""
    return await create_test_topics(kafka_bootstrap)
