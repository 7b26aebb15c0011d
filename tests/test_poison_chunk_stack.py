"""A poison chunk record through the whole stack: it lands in the dead-letter topic, its chunk is
reported failed, and the session still FINISHES with every other chunk analysed.

The test plays ingest itself (the stack runs aggregator, analyzer and API as processes, as
``livestream up`` does) so that it can write exact records: the session is started through the
API as a user would, then the test publishes what ingest would (an ACTIVE report, four chunk
records, ENDED with ``chunks_published=4``), except that chunk 2 is a record no analyzer can read
(its frames are not frames). The analyzer dead-letters it at the first attempt (an undecodable
record cannot get better by retrying), with its source topic, partition and offset, and
publishes a failed result for it, read from the record's own session id and chunk index.
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from nomadic import NomadicAI
from PIL import Image
from skimage import data as skdata

from livestream.kafka.admin import ensure_topics
from livestream.kafka.serde import encode_key, encode_value
from livestream.kafka.testing import TopicRecorder
from livestream.stack import Stack, stack_for_tests
from schemas.records import (
    ChunkRecord,
    DeadLetter,
    Frame,
    IngestState,
    SessionLifecycle,
    chunk_id_for,
)
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model]

CHUNK_SECONDS = 2.0
CHUNKS = 4
POISON_INDEX = 2


@pytest.fixture(scope="module")
def poison_topics(kafka_bootstrap: str) -> Topics:
    topics = Topics(prefix=f"poison{secrets.token_hex(4)}", partitions=3)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.specs()))
    return topics


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, poison_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with stack_for_tests(
        kafka_bootstrap,
        poison_topics.prefix,
        tmp_path_factory.mktemp("poison-stack"),
        services=("aggregator", "analyzer", "api"),
    ) as stack:
        yield stack


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def chunk_record(session_id: str, stream_id: str, index: int, query: str) -> ChunkRecord:
    start = index * CHUNK_SECONDS
    cat = skdata.chelsea()
    return ChunkRecord(
        session_id=session_id,
        stream_id=stream_id,
        chunk_id=chunk_id_for(session_id, index),
        chunk_index=index,
        start_time=start,
        end_time=start + CHUNK_SECONDS,
        hls_cumulative_offset=start,
        capture_time=start,
        captured_at=datetime.now(UTC),
        media_sequences=[index],
        rapid_review_query=query,
        frames=[Frame(stream_time=start + 0.5, width=cat.shape[1], height=cat.shape[0], jpeg=jpeg(cat))],
    )


def poisoned(record: ChunkRecord) -> bytes:
    """The record's JSON with its frames replaced by something that is not a list of frames:
    session id and chunk index stay readable, the record as a whole does not validate."""
    raw = json.loads(encode_value(record))
    raw["frames"] = "not frames"
    return json.dumps(raw).encode()


async def play_ingest(bootstrap: str, topics: Topics, session_id: str, stream_id: str, query: str) -> int:
    """Publish the session's records as ingest would; return the poison record's offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    key = encode_key(session_id)
    try:
        active = SessionLifecycle(session_id=session_id, stream_id=stream_id, state=IngestState.ACTIVE)
        await producer.send_and_wait(topics.session_lifecycle, encode_value(active), key=key)
        poison_offset = -1
        for index in range(CHUNKS):
            record = chunk_record(session_id, stream_id, index, query)
            value = poisoned(record) if index == POISON_INDEX else encode_value(record)
            metadata = await producer.send_and_wait(topics.chunks, value, key=key)
            if index == POISON_INDEX:
                poison_offset = metadata.offset
        ended = SessionLifecycle(
            session_id=session_id,
            stream_id=stream_id,
            state=IngestState.ENDED,
            ended_by="stream",
            chunks_published=CHUNKS,
        )
        await producer.send_and_wait(topics.session_lifecycle, encode_value(ended), key=key)
    finally:
        await producer.stop()
    return poison_offset


def wait_finished(sdk: NomadicAI, stream_id: str, session_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    session: dict[str, Any] = {}
    while time.monotonic() < deadline:
        session = sdk.livestream.get_session(stream_id, session_id)
        if session["status"] in ("FINISHED", "FAILED"):
            return session
        time.sleep(0.3)
    raise AssertionError(f"session not finished in {timeout:.0f} s: {session.get('status')}")


def test_a_poison_chunk_is_dead_lettered_and_its_session_finishes(
    kafka_bootstrap: str, poison_topics: Topics, stack: Stack, tmp_path: Path
) -> None:
    sdk = NomadicAI(api_key=stack.api_key, base_url=stack.api_url)
    query = "detect a cat"
    with TopicRecorder(kafka_bootstrap, poison_topics.dead_letter) as dead_letters:
        # No ingest runs: the source is never fetched (a loopback address, as the rule wants).
        started = sdk.livestream.start_session(
            source_url="http://127.0.0.1:9/never-fetched.m3u8", name="poison", rapid_review_query=query
        )
        session_id, stream_id = started["session_id"], started["stream_id"]
        poison_offset = asyncio.run(play_ingest(kafka_bootstrap, poison_topics, session_id, stream_id, query))
        final = wait_finished(sdk, stream_id, session_id)
        deadline = time.monotonic() + 30
        while not dead_letters.values and time.monotonic() < deadline:
            time.sleep(0.2)
        letters = [DeadLetter.model_validate_json(v) for v in list(dead_letters.values)]

    assert final["status"] == "FINISHED", final.get("status_reason")
    assert final["chunk_count"] == CHUNKS
    statuses = {c["chunk_index"]: c["status"] for c in final["chunks"]}
    assert statuses == {0: "ok", 1: "ok", 2: "failed", 3: "ok"}, statuses
    [failed] = [c for c in final["chunks"] if c["chunk_index"] == POISON_INDEX]
    assert "undecodable chunk record (dead-lettered)" in failed["error"], failed
    # The other chunks were analysed: the cat in them is an event of the session.
    assert any(e["label"] == "cat" for e in final["events"]), final["events"]

    [letter] = [entry for entry in letters if entry.session_id == session_id]
    assert letter.service == "analyzer" and letter.error_type == "RecordError" and letter.attempts == 1
    assert (letter.source_topic, letter.source_offset) == (poison_topics.chunks, poison_offset)
    assert letter.value is not None and json.loads(letter.value)["frames"] == "not frames"
