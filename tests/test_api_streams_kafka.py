"""Named streams on a real broker: attach-stream writes the compacted streams topic, a restarted
API (a fresh store, rebuilt from the topics) still knows the stream, replicas agree, and
start-session accepts only the caller's tenant's streams.

The API runs under uvicorn in background threads (one per replica), reached over HTTP with
httpx and with the real ``nomadic`` SDK; sources are loopback URLs nothing fetches (no ingest
runs here).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from nomadic import NomadicAI

from api.app import create_app
from api.auth import key_fingerprint
from api.settings import ApiSettings
from livestream.kafka.serde import decode_command
from livestream.kafka.testing import create_test_topics
from schemas.records import AttachedStream, SessionHeader, SessionStatus, StartSession
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

API_KEY = "streams-kafka-key-0123456789"
GLOBEX_KEY = "streams-globex-key-0123456"  # another tenant
SOURCE = "http://127.0.0.1:9/door/live.m3u8"
WAIT_S = 30.0
T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, within_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + within_s
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class ApiReplica:
    """One API process's app under uvicorn in a thread, with its own store; ``url`` once healthy."""

    def __init__(self, settings: ApiSettings) -> None:
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api-streams-under-test", daemon=True)
        self.url = ""

    async def start(self) -> None:
        self._thread.start()

        async def listening() -> bool:
            if not self._thread.is_alive():
                raise AssertionError("the API server thread died during startup")
            return self._server.started

        await eventually(listening, "uvicorn to listen", within_s=60)
        self.url = f"http://127.0.0.1:{self._server.servers[0].sockets[0].getsockname()[1]}"

        async def healthy() -> bool:
            async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
                return (await client.get("/healthz")).status_code == 200

        await eventually(healthy, "/healthz (topics replayed)", within_s=60)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the API server did not stop"


@pytest.fixture(scope="module")
async def streams_topics(kafka_bootstrap: str) -> Topics:
    return await create_test_topics(kafka_bootstrap)


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, streams_topics: Topics) -> ApiSettings:
    return ApiSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=streams_topics.prefix,
        keys=API_KEY,
        tenants=json.dumps({"globex": [GLOBEX_KEY]}),
        allow_private_sources=True,  # the loopback source; nothing fetches it here
    )


@pytest.fixture
async def replicas(settings: ApiSettings) -> AsyncIterator[Callable[[], Awaitable[ApiReplica]]]:
    """Starts API replicas on the test's topics; stops the ones still running at the end."""
    started: list[ApiReplica] = []

    async def start() -> ApiReplica:
        replica = ApiReplica(settings)
        started.append(replica)
        await replica.start()
        return replica

    yield start
    for replica in started:
        replica.stop()


def client(replica: ApiReplica, key: str = API_KEY) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=replica.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


async def start(http: httpx.AsyncClient, **form: str) -> httpx.Response:
    return await http.post("/api/live/start-session", data={"source_url": SOURCE, "name": "door", **form})


async def read_topic(bootstrap: str, topic: str, partitions: int) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of ``topic`` from the beginning up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        ends = await consumer.end_offsets(assigned)
        for tp, offset in (await consumer.beginning_offsets(assigned)).items():
            consumer.seek(tp, offset)
        records: list[tuple[bytes | None, bytes | None]] = []
        while [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
            for fetched in (await consumer.getmany(timeout_ms=500)).values():
                records.extend((r.key, r.value) for r in fetched)
        return records
    finally:
        await consumer.stop()


async def test_an_attached_stream_survives_a_restart_and_only_its_tenant_may_use_it(
    replicas: Callable[[], Awaitable[ApiReplica]], kafka_bootstrap: str, streams_topics: Topics
) -> None:
    first = await replicas()
    # The SDK's own call, unchanged: the documented body.
    sdk = NomadicAI(api_key=API_KEY, base_url=first.url)
    attached = await asyncio.to_thread(sdk.livestream.attach_stream, "door-cam", "Front door", SOURCE)
    assert attached == {"ok": True}
    async with client(first) as http:
        # The replica that wrote the stream accepts it at once (before its record comes back).
        right_away = await start(http, stream_id="door-cam")
        assert right_away.status_code == 200, right_away.text
        assert right_away.json()["stream_id"] == "door-cam"
        # Omitted: the backend creates a stream id, which later sessions may name.
        created = await start(http)
        assert created.status_code == 200, created.text
        created_id = created.json()["stream_id"]
        assert len(created_id) == 32 and created_id != "door-cam"
    first.stop()

    # The streams topic holds both, keyed <tenant>/<stream_id>.
    records = await read_topic(kafka_bootstrap, streams_topics.streams, streams_topics.partitions)
    stored = {key: AttachedStream.model_validate_json(value) for key, value in records if key and value}
    door = stored[b"default/door-cam"]
    assert (door.stream_name, door.source_url, door.origin) == ("Front door", SOURCE, "attach-stream")
    assert door.attached_by == key_fingerprint(API_KEY) and API_KEY not in repr(records)
    assert stored[f"default/{created_id}".encode()].origin == "start-session"

    # A new API process: its store is rebuilt from the topics, and the streams are still there.
    second = await replicas()
    async with client(second) as http, client(second, GLOBEX_KEY) as globex:
        again = await start(http, stream_id="door-cam", name="door, again")
        assert again.status_code == 200, again.text
        assert (await start(http, stream_id=created_id)).status_code == 200

        unknown = await start(http, stream_id="never-attached")
        assert unknown.status_code == 404
        assert "attach-stream" in unknown.json()["detail"]
        # Another tenant's stream answers exactly like an unknown one, and starts nothing.
        foreign = await start(globex, stream_id="door-cam")
        assert foreign.status_code == 404
        assert foreign.json()["detail"] == unknown.json()["detail"].replace("never-attached", "door-cam")

        # Stream ids are per tenant: globex may attach a "door-cam" of its own and use it.
        ours = await globex.post(
            "/api/live/attach-stream",
            data={"stream_id": "door-cam", "stream_name": "Globex door", "source_url": SOURCE},
        )
        assert ours.json() == {"ok": True}
        assert (await start(globex, stream_id="door-cam")).status_code == 200

    # The sessions started with a stream id carry it to ingest and the aggregator.
    commands = [
        decode_command(value, topic=streams_topics.session_commands, offset=0)
        for _, value in await read_topic(
            kafka_bootstrap, streams_topics.session_commands, streams_topics.partitions
        )
        if value is not None
    ]
    starts = [c for c in commands if isinstance(c, StartSession)]
    assert sorted((c.tenant, c.stream_id) for c in starts if c.stream_id == "door-cam") == [
        ("default", "door-cam"),
        ("default", "door-cam"),
        ("globex", "door-cam"),
    ]
    assert "never-attached" not in {c.stream_id for c in starts}


async def test_replicas_agree_on_a_stream_attached_through_one_of_them(
    replicas: Callable[[], Awaitable[ApiReplica]],
) -> None:
    one, other = await replicas(), await replicas()
    async with client(one) as first, client(other) as second:
        attached = await first.post(
            "/api/live/attach-stream",
            data={"stream_id": "yard-cam", "stream_name": "Yard", "source_url": SOURCE},
        )
        assert attached.json() == {"ok": True}

        async def accepted_by_the_other() -> bool:
            response = await start(second, stream_id="yard-cam")
            assert response.status_code in (200, 404), response.text
            return response.status_code == 200

        await eventually(accepted_by_the_other, "the other replica to read the stream record")


async def test_a_stream_created_for_a_session_goes_with_its_last_session_an_attached_one_stays(
    replicas: Callable[[], Awaitable[ApiReplica]], kafka_bootstrap: str, streams_topics: Topics
) -> None:
    replica = await replicas()
    async with client(replica) as http:
        created = await start(http)
        assert created.status_code == 200, created.text
        created_id, session_id = created.json()["stream_id"], created.json()["session_id"]
        attached = await http.post(
            "/api/live/attach-stream",
            data={"stream_id": "gate-cam", "stream_name": "Gate", "source_url": SOURCE},
        )
        assert attached.json() == {"ok": True}
        gate = await start(http, stream_id="gate-cam")
        assert gate.status_code == 200, gate.text

        # Play the aggregator: both sessions' headers, then retention's tombstones for them.
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for stream_id, started in ((created_id, session_id), ("gate-cam", gate.json()["session_id"])):
                header = SessionHeader(
                    stream_id=stream_id,
                    session_id=started,
                    name="door",
                    source_url=SOURCE,
                    status=SessionStatus.FINISHED,
                    tenant="default",
                    created_by=key_fingerprint(API_KEY),
                    created_at=datetime.now(UTC),
                    updated_at=datetime.now(UTC),
                )
                topic = streams_topics.session_state
                await producer.send_and_wait(topic, key=started.encode(), value=header.to_bytes())
                await producer.send_and_wait(topic, key=started.encode(), value=None)
        finally:
            await producer.stop()

        async def retired() -> bool:
            records = await read_topic(kafka_bootstrap, streams_topics.streams, streams_topics.partitions)
            return (f"default/{created_id}".encode(), None) in records

        await eventually(retired, "the created stream's tombstone")
        after = await start(http, stream_id=created_id)
        assert after.status_code == 404, after.text
        # The attached stream outlives its sessions.
        assert (await start(http, stream_id="gate-cam")).status_code == 200
    records = await read_topic(kafka_bootstrap, streams_topics.streams, streams_topics.partitions)
    assert (b"default/gate-cam", None) not in records


async def test_attach_stream_validates_before_writing(replicas: Callable[[], Awaitable[ApiReplica]]) -> None:
    replica = await replicas()
    async with client(replica) as http:
        refused = await http.post(
            "/api/live/attach-stream",
            data={"stream_id": "bad id", "stream_name": "Yard", "source_url": "rtsp://127.0.0.1/cam"},
        )
        assert refused.status_code == 422
        fields = {error["loc"][-1] for error in refused.json()["detail"]}
        assert fields == {"stream_id", "source_url"}
        assert (await start(http, stream_id="bad id")).status_code == 422
