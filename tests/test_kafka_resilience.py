"""The outage clock and backoff every service uses for broker errors (no broker needed)."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaConnectionError

from livestream.errors import LivestreamError
from livestream.kafka.resilience import Backoff, BrokerWatch


class OutageError(LivestreamError):
    pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first_s=0.5, max_s=3.0)
    assert [backoff.delay(retry) for retry in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_watch_trips_only_after_the_limit_without_a_success() -> None:
    clock = FakeClock()
    watch = BrokerWatch(10.0, OutageError, clock=clock)
    watch.failed(KafkaConnectionError("down"), "produce")
    clock.now += 9.0
    watch.failed(KafkaConnectionError("down"), "produce")
    assert watch.failures == 2 and watch.failing_for_s == pytest.approx(9.0)
    watch.succeeded()  # a success ends the outage: the clock starts again at the next failure
    clock.now += 5.0
    watch.failed(KafkaConnectionError("down"), "produce")
    clock.now += 9.9
    watch.failed(KafkaConnectionError("down"), "produce")
    clock.now += 0.1
    with pytest.raises(OutageError, match=r"broker errors for 10 s while trying to commit") as raised:
        watch.failed(KafkaConnectionError("down"), "commit")
    assert raised.value.context == {"limit_s": 10.0}


def test_a_tripped_watch_stays_tripped() -> None:
    clock = FakeClock()
    watch = BrokerWatch(1.0, OutageError, clock=clock)
    watch.check()  # nothing yet
    watch.failed(KafkaConnectionError("down"), "produce")
    clock.now += 2.0
    with pytest.raises(OutageError) as first:
        watch.failed(KafkaConnectionError("down"), "produce")
    watch.succeeded()  # too late: the service has given up and is stopping
    with pytest.raises(OutageError) as again:
        watch.check()
    assert again.value is first.value
