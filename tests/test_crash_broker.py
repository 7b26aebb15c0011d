"""SIGKILL the Kafka broker in the middle of a live session: the supervisor restarts it in place
(same address, same data directory) and the session finishes with exactly the chunks and events
of an undisturbed run of the same scripted stream.

The broker is one of this module's own (the session's shared broker must not be killed under
the other tests), handed to the stack so that the stack supervises it, as ``livestream up``
does with its local broker. The scripted stream, the comparison and the helpers are those of
``test_crash_recovery`` (see its docstring for why the runs are comparable).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest
from nomadic import NomadicAI

# tests/ is on sys.path (pytest's default "prepend" import mode; tests/ has no __init__.py).
from test_crash_recovery import (
    CHUNK_SECONDS,
    LIVE_EDGE_SEGMENTS,
    EventsRecorder,
    Run,
    assert_same_as_reference,
    run_session,
    undisturbed_run,
)

from livestream.kafka.admin import ensure_topics
from livestream.kafka.broker import LocalKafkaBroker, SupervisedBroker
from livestream.stack import Stack, stack_for_tests
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaBroker]:
    with LocalKafkaBroker(base_dir=tmp_path_factory.mktemp("crash-broker")) as broker:
        yield broker


@pytest.fixture(scope="module")
def broker_topics(broker: LocalKafkaBroker) -> Topics:
    topics = Topics(prefix=f"crashb{secrets.token_hex(4)}", partitions=3)
    asyncio.run(ensure_topics(broker.bootstrap_servers, topics.specs()))
    return topics


@pytest.fixture(scope="module")
def broker_stack(
    broker: LocalKafkaBroker, broker_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with stack_for_tests(
        broker.bootstrap_servers,
        broker_topics.prefix,
        tmp_path_factory.mktemp("crash-broker-stack"),
        broker=broker,
        extra_env={
            "LIVESTREAM_INGEST_CHUNK_SECONDS": str(CHUNK_SECONDS),
            "LIVESTREAM_INGEST_LIVE_EDGE_SEGMENTS": str(LIVE_EDGE_SEGMENTS),
        },
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def broker_events_topic(broker: LocalKafkaBroker, broker_topics: Topics) -> Iterator[EventsRecorder]:
    with EventsRecorder(broker.bootstrap_servers, broker_topics.events) as recorder:
        yield recorder


def test_session_survives_a_killed_broker(
    broker: LocalKafkaBroker, broker_stack: Stack, broker_events_topic: EventsRecorder
) -> None:
    sdk = NomadicAI(api_key=broker_stack.api_key, base_url=broker_stack.api_url)
    reference: Run = undisturbed_run(sdk, broker_stack, broker_events_topic)
    run = run_session(sdk, broker_stack, broker_events_topic, "kill-broker", kill=[SupervisedBroker.NAME])
    assert run.killed_at is not None
    print(f"broker: killed at {run.killed_at}, restarts {broker_stack.restarts}")
    assert broker.restarts >= 1
    assert_same_as_reference(run, reference)
    assert broker_stack.failure is None
