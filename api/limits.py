"""Per-key limits: request rate (token bucket), concurrent SSE feeds, concurrent sessions.

Pure state with an injectable clock; a limit of 0 means "no limit"; everything is per API
process. (The request body limit is FastAPI's own ``max_body_size``, see ``api.app``.)
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from api.errors import RateLimited, TooManyFeeds, TooManySessions
from api.tenants import Caller


def _decrement(counter: Counter[str], name: str) -> None:
    """One less for ``name``, forgetting it at zero (so counters hold only what is open)."""
    counter[name] -= 1
    if counter[name] <= 0:
        del counter[name]


# --------------------------------------------------------------------------- request rate


@dataclass(slots=True)
class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; each request takes one."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per key (keys are configured, so the map stays bounded)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(max(burst, 1))
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key_id: str) -> None:
        """Take one request from the key's bucket; ``RateLimited`` (429, Retry-After) when it is empty."""
        if self._rate <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket(self._rate, self._burst, self._burst, now)
        wait = bucket.take(now)
        if wait > 0:
            raise RateLimited(
                f"too many requests for this API key (at most {self._rate:g} per second, bursts of "
                f"{self._burst:g}): retry after {math.ceil(wait)} s",
                retry_after=math.ceil(wait),
            )


# --------------------------------------------------------------------------- concurrent feeds


class FeedLease:
    """One open SSE feed of a key; ``release`` (idempotent) frees its slot."""

    def __init__(self, slots: FeedSlots, key_id: str) -> None:
        self._slots = slots
        self._key_id = key_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slots.release(self._key_id)


class FeedSlots:
    """Counts open SSE feeds per key; at most ``per_key`` at once."""

    def __init__(self, per_key: int) -> None:
        self._per_key = per_key
        self._open: Counter[str] = Counter()

    def open_count(self, key_id: str) -> int:
        return self._open[key_id]

    def acquire(self, key_id: str) -> FeedLease:
        """A slot for one more feed; ``TooManyFeeds`` (429) when the key has ``per_key`` open."""
        if self._per_key and self._open[key_id] >= self._per_key:
            raise TooManyFeeds(
                f"this API key already has {self._open[key_id]} event feeds open (at most {self._per_key}): "
                "close one first",
                retry_after=5,
            )
        self._open[key_id] += 1
        return FeedLease(self, key_id)

    def release(self, key_id: str) -> None:
        _decrement(self._open, key_id)


# --------------------------------------------------------------------------- concurrent sessions


class SessionQuota:
    """Caps a key's and a tenant's sessions that are not FINISHED/FAILED.

    The caller passes the counts the view holds; starts still being published (between the
    check and the view's pending entry) are counted here, so two concurrent starts cannot both
    take the last place.
    """

    def __init__(self, per_key: int, per_tenant: int) -> None:
        self._per_key = per_key
        self._per_tenant = per_tenant
        self._starting_by_key: Counter[str] = Counter()
        self._starting_by_tenant: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return bool(self._per_key or self._per_tenant)

    @contextmanager
    def admit(self, caller: Caller, active_of_key: int, active_of_tenant: int) -> Iterator[None]:
        """Hold a place while the start is published; ``TooManySessions`` (429) when none is left."""
        of_key = active_of_key + self._starting_by_key[caller.key_id]
        of_tenant = active_of_tenant + self._starting_by_tenant[caller.tenant]
        if self._per_key and of_key >= self._per_key:
            raise TooManySessions(
                f"this API key already has {of_key} sessions running (at most {self._per_key}): "
                "end one before starting another",
                retry_after=30,
            )
        if self._per_tenant and of_tenant >= self._per_tenant:
            raise TooManySessions(
                f"your organisation already has {of_tenant} sessions running (at most {self._per_tenant}): "
                "end one before starting another",
                retry_after=30,
            )
        self._starting_by_key[caller.key_id] += 1
        self._starting_by_tenant[caller.tenant] += 1
        try:
            yield
        finally:
            _decrement(self._starting_by_key, caller.key_id)
            _decrement(self._starting_by_tenant, caller.tenant)
