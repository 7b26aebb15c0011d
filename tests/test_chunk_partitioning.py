"""Where chunk records go (``ingest.service.chunk_partition``): pure, no Kafka.

That two analyzer replicas share one session's chunks on the real stack is checked in
``tests/test_end_to_end.py``.
"""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from ingest.service import chunk_partition
from ingest.settings import IngestSettings
from livestream.kafka.serde import encode_key


@pytest.mark.parametrize("partitions", [1, 3, 6, 24])
def test_chunk_zero_goes_where_the_session_key_goes(partitions: int) -> None:
    for session in ("a", "sess-1", "f" * 32):
        key = encode_key(session)
        every = list(range(partitions))
        assert chunk_partition(key, 0, partitions) == DefaultPartitioner()(key, every, every)


@pytest.mark.parametrize("partitions", [1, 3, 6, 24])
def test_consecutive_chunks_cover_every_partition_once(partitions: int) -> None:
    key = encode_key("sess-42")
    for first in (0, 5, 1000):
        window = [chunk_partition(key, first + k, partitions) for k in range(partitions)]
        assert sorted(window) == list(range(partitions))


def test_two_replicas_share_a_few_sessions_evenly() -> None:
    """Twelve sessions over 6 partitions, replicas owning 3 each: whatever the keys hash to, each
    replica gets half of the chunks (by session key alone, a replica got 10 of 12 in a bench run)."""
    partitions, owned_by_first = 6, {0, 1, 2}
    first = total = 0
    for session in range(12):
        key = encode_key(f"session-{session}")
        for chunk in range(60):
            total += 1
            first += chunk_partition(key, chunk, partitions) in owned_by_first
    assert first == total // 2


def test_spread_is_the_default_and_session_keeps_the_old_placement() -> None:
    assert IngestSettings().chunk_partitioning == "spread"
    assert IngestSettings(chunk_partitioning="session").chunk_partitioning == "session"
    with pytest.raises(ValueError, match="chunk_partitioning"):
        IngestSettings(chunk_partitioning="random")  # type: ignore[arg-type]
