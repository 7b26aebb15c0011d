"""Living through broker outages: backoff, an outage clock, and bounded client shutdown.

Every service retries broker errors (aiokafka reconnects by itself; what surfaces to the caller
is a request that timed out or failed) with capped exponential backoff, and counts how long the
errors have lasted with no success in between. Past the service's ``broker_outage_limit_s`` it
gives up with its package's ``BrokerOutageError`` and exits with status 2, so that its
supervisor (``livestream up``, Compose, Kubernetes) restarts it, and an operator sees which
service lost the broker. What each service loses by exiting is written in its module docstring.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError, KafkaTimeoutError

from livestream.errors import LivestreamError

# How long closing one Kafka client may take before the service gives up on it: with the
# broker gone, aiokafka's stop can wait for requests that never complete.
CLOSE_GUARD_S = 10.0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``first_s`` before the first retry, doubling, at most ``max_s``."""

    first_s: float
    max_s: float

    def delay(self, retry: int) -> float:
        """The wait before retry number ``retry`` (1, 2, ...)."""
        return min(self.max_s, self.first_s * 2 ** max(0, retry - 1))


class BrokerWatch:
    """Measures how long broker errors have lasted with no success in between.

    ``error_type`` is the service's own ``BrokerOutageError`` (it takes a message and a
    ``limit_s`` context value). Once tripped the watch stays tripped: a service that gave up on
    the broker stops, and every later broker call fails at once instead of waiting again.
    """

    def __init__(
        self,
        limit_s: float,
        error_type: type[LivestreamError],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit_s = limit_s
        self._error_type = error_type
        self._clock = clock
        self._failing_since: float | None = None
        self.failures = 0
        self.tripped: LivestreamError | None = None

    @property
    def failing_for_s(self) -> float:
        """Seconds since the first failure of the current outage (0 when none)."""
        return 0.0 if self._failing_since is None else self._clock() - self._failing_since

    def succeeded(self) -> None:
        self._failing_since = None
        self.failures = 0

    def failed(self, exc: BaseException, doing: str) -> None:
        """Count one failure; raise the service's error once failures outlast the limit."""
        if self.tripped is not None:
            raise self.tripped
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        self.failures += 1
        if now - self._failing_since >= self._limit_s:
            self.tripped = self._error_type(
                f"broker errors for {now - self._failing_since:.0f} s while trying to {doing}: "
                f"{type(exc).__name__}: {exc}",
                limit_s=self._limit_s,
            )
            raise self.tripped from exc

    def check(self) -> None:
        """Raise the error the watch tripped with, if it did."""
        if self.tripped is not None:
            raise self.tripped


async def probe_metadata(
    consumer: AIOKafkaConsumer, guard_s: float, log: logging.Logger
) -> KafkaError | None:
    """Ask the cluster for metadata: None when it answered, else the error (no answer within
    ``guard_s`` is a ``KafkaTimeoutError``), logged as a warning.

    An idle consumer sees an outage only as empty polls (aiokafka reconnects quietly), so each
    service probes now and then while idle and counts a failure towards its outage limit.
    """
    try:
        await asyncio.wait_for(consumer.topics(), guard_s)
    except KafkaError as exc:
        error: KafkaError = exc
    except TimeoutError:
        error = KafkaTimeoutError(f"no metadata answer within {guard_s:g} s")
    else:
        return None
    log.warning("broker unreachable (%s: %s)", type(error).__name__, error)
    return error


async def stop_client(name: str, stopping: Awaitable[None], log: logging.Logger) -> None:
    """Stop a Kafka client, bounded: with the broker gone (or just restarted), aiokafka's stop
    can hang, or re-raise a cancellation from its background tasks (a fetcher in its backoff
    sleep); neither may hide why the service stops, nor stop the other clients from closing."""
    try:
        await asyncio.wait_for(stopping, CLOSE_GUARD_S)
    except (KafkaError, TimeoutError) as exc:
        log.warning("the Kafka %s did not stop cleanly: %s: %s", name, type(exc).__name__, exc)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this task is being cancelled: let it
        log.warning("the Kafka %s did not stop cleanly (its tasks were cancelled)", name)


__all__ = ["CLOSE_GUARD_S", "Backoff", "BrokerWatch", "probe_metadata", "stop_client"]
