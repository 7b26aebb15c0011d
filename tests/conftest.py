"""Shared fixtures. Logic lives in ``livestream.kafka.testing``; keep this file small."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from livestream.kafka.testing import create_test_topics, kafka_for_tests
from schemas.topics import Topics


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a real Kafka broker: $KAFKA_BOOTSTRAP_SERVERS, Docker, or a local broker."""
    with kafka_for_tests() as bootstrap:
        yield bootstrap


@pytest.fixture
async def topics(kafka_bootstrap: str) -> Topics:
    """The system's topics under a prefix unique to this test, 3 partitions each (no cross-talk)."""
    return await create_test_topics(kafka_bootstrap)
