"""How far the analyzers are behind a session, and what the overload policy does about it (pure).

Lag. A session's *lag* is stream time at the source's live edge (``source_edge``: the end of
the newest segment its playlist listed, ``PlaylistTracker.stream_time``, plus what a live
source has made since ingest last looked, when that look is overdue) minus the stream time the
analyzers have taken over: the start of the session's oldest published chunk the analyzer
consumer group has not committed yet, or, when every published chunk is committed, the end of
the newest one. So it counts the analyzers' backlog *and* ingest's own delay (segments listed
but not yet ingested, the open chunk, segments not listed yet because ingest is busy): about
one chunk plus a segment or two when nothing is behind, which is why ``max_lag_s`` must be
well above ``chunk_seconds`` plus a few segment durations.

Ingest reloads a playlist only once it has ingested what the last load listed. When ingest
itself is short of CPU (the whole machine overloaded), that takes longer than the reload
interval, and the listed edge falls behind the source: at 40 streams on a machine that keeps
up with 20, segments waited 9 s on average between being listed and fetched, and the lag
from the listed edge peaked at 34 s while chunks reached the sessions 48 s after their
segments were published (last quarter's mean; ``bench/capacity.py --streams 40``); with
``source_edge`` the lag peaked at 50 s against 51. ``source_edge`` adds the time since the load
beyond one reload interval (a live source makes media in real time; within one interval the
listed edge is as fresh as the protocol allows, so a healthy session's lag is unchanged), and
nothing when the load listed nothing new or the playlist has ended (nothing then says the
source is making more).

``ChunkLag`` keeps, per session, the (partition, offset, start, end) of each published chunk
until the group's committed offset on that partition passes it (a committed offset is the
next record the group will read, so a chunk at offset ``o`` is done once it is ``> o``). It is
bounded (``MAX_PENDING_CHUNKS``): past it the oldest entries are forgotten and the lag is
underestimated, by at most what they covered (hours of stream at the default chunk length).
Guarantees: the lag is never negative; committed offsets only ever drop entries (a stale or
smaller answer changes nothing already dropped); entries whose partition the answer does not
mention stay pending.

Policy. ``LagPolicy`` names what happens when a session's lag exceeds ``max_lag_s``:

* ``queue``: nothing, up to ``max_lag_s`` (chunks wait in the topic, as before there was a
  policy); past it, the fallback policy (``skip`` or ``thin``) acts as described below.
* ``skip``: the session stops fetching and decoding segments (each one the playlist lists is a
  gap in the recording and counted as skipped; its chunks are published empty, so chunk
  indexes stay contiguous) until the lag is below ``max_lag_s / 2``; then it goes on at the
  live edge.
* ``thin``: the sampling rate halves (never below ``thin_min_fps``), at most once per
  ``thin_step_s`` and only while the lag has not fallen since the previous halving; once the
  lag is below ``max_lag_s / 2`` the configured rate comes back at once.

``next_state`` is that state machine: one call per lag measurement, no clock of its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ingest.settings import IngestSettings

PolicyName = Literal["queue", "skip", "thin"]
FallbackName = Literal["skip", "thin"]
# What a step did: "skip" (skipping began), "thin" (the rate halved) are the policy's actions
# (counted); "resume" (skipping ended) and "restore" (the full rate is back) undo them.
LagAction = Literal["skip", "thin", "resume", "restore"]
COUNTED_ACTIONS: frozenset[str] = frozenset({"skip", "thin"})

# Published, not yet committed chunks remembered per session (at 4 s chunks: 4.5 h of stream).
MAX_PENDING_CHUNKS = 4096
# Lag and sampling-rate changes smaller than this are not worth a lifecycle report of their own.
MATERIAL_LAG_CHANGE_S = 1.0


@dataclass(frozen=True)
class PendingChunk:
    partition: int
    offset: int
    start: float
    end: float


class ChunkLag:
    """One session's published chunks the analyzers have not committed yet (see the module docstring)."""

    def __init__(self, analysed_to: float = 0.0, max_pending: int = MAX_PENDING_CHUNKS) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._pending: deque[PendingChunk] = deque(maxlen=max_pending)
        # End of the newest committed (or, when resuming, already published) chunk.
        self._analysed_to = analysed_to
        self._newest_end = analysed_to

    @property
    def partitions(self) -> set[int]:
        """Partitions holding this session's pending chunks (whose committed offsets matter)."""
        return {chunk.partition for chunk in self._pending}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def published(self, partition: int, offset: int, start: float, end: float) -> None:
        """A chunk covering ``[start, end)`` was acknowledged at ``partition``/``offset``."""
        self._pending.append(PendingChunk(partition, offset, start, end))
        self._newest_end = max(self._newest_end, end)

    def committed(self, offsets: Mapping[int, int]) -> None:
        """The group's committed offsets by partition (absent or negative: nothing committed)."""
        kept: deque[PendingChunk] = deque(maxlen=self._pending.maxlen)
        for chunk in self._pending:
            if chunk.offset < offsets.get(chunk.partition, -1):
                self._analysed_to = max(self._analysed_to, chunk.end)
            else:
                kept.append(chunk)
        self._pending = kept

    def analysed_to(self) -> float:
        """Stream time the analyzers have taken over (see the module docstring)."""
        if self._pending:
            return min(chunk.start for chunk in self._pending)
        return self._newest_end

    def lag(self, source_edge: float) -> float:
        """Seconds of stream time between the source's live edge and what the analyzers took over."""
        return max(0.0, source_edge - self.analysed_to())


def source_edge(listed_edge: float, listed_at: float | None, reload_interval: float, now: float) -> float:
    """Stream time at the source's live edge at clock ``now`` (see the module docstring).

    ``listed_edge``: the end of the newest segment the playlist listed when it was loaded at
    ``listed_at`` (the same clock as ``now``); None when that load listed nothing new or the
    playlist has ended. ``reload_interval``: how soon after a load the next one is due (the
    playlist's target duration)."""
    if listed_at is None:
        return listed_edge
    return listed_edge + max(0.0, now - listed_at - reload_interval)


@dataclass(frozen=True)
class LagPolicy:
    """The overload policy of a session (from ``IngestSettings``)."""

    policy: PolicyName = "thin"
    max_lag_s: float = 60.0
    fallback: FallbackName = "thin"
    sample_fps: float = 2.0
    thin_min_fps: float = 0.5
    thin_step_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_lag_s <= 0 or self.sample_fps <= 0 or self.thin_min_fps <= 0 or self.thin_step_s < 0:
            raise ValueError("max_lag_s, sample_fps and thin_min_fps must be positive, thin_step_s >= 0")

    @classmethod
    def of(cls, settings: IngestSettings) -> LagPolicy:
        return cls(
            policy=settings.lag_policy,
            max_lag_s=settings.max_lag_s,
            fallback=settings.lag_fallback_policy,
            sample_fps=settings.sample_fps,
            thin_min_fps=settings.thin_min_fps,
            thin_step_s=settings.thin_step_s,
        )

    @property
    def action(self) -> FallbackName:
        """What acts past ``max_lag_s``: the policy itself, or queue's fallback."""
        return self.fallback if self.policy == "queue" else self.policy

    @property
    def floor_fps(self) -> float:
        return min(self.thin_min_fps, self.sample_fps)


@dataclass(frozen=True)
class LagState:
    """Where a session's policy stands: skipping or not, the sampling rate, actions so far."""

    sample_fps: float
    skipping: bool = False
    actions: int = 0
    last_thin_at: float | None = None  # clock of the last halving (None: at the full rate)
    lag_at_thin: float = 0.0  # the lag that halving answered

    @classmethod
    def initial(cls, policy: LagPolicy, actions: int = 0) -> LagState:
        return cls(sample_fps=policy.sample_fps, actions=actions)


@dataclass(frozen=True)
class LagStep:
    state: LagState
    action: LagAction | None = None


def next_state(policy: LagPolicy, state: LagState, lag: float, now: float) -> LagStep:
    """The policy's answer to one lag measurement ``lag`` taken at clock ``now`` (seconds)."""
    low_water = policy.max_lag_s / 2
    if policy.action == "skip":
        if not state.skipping and lag > policy.max_lag_s:
            return LagStep(replace(state, skipping=True, actions=state.actions + 1), "skip")
        if state.skipping and lag < low_water:
            return LagStep(replace(state, skipping=False), "resume")
        return LagStep(state)
    # thin
    if lag > policy.max_lag_s and state.sample_fps > policy.floor_fps:
        last = state.last_thin_at
        if last is None or (now - last >= policy.thin_step_s and lag >= state.lag_at_thin):
            fps = max(policy.floor_fps, state.sample_fps / 2)
            thinned = replace(
                state, sample_fps=fps, actions=state.actions + 1, last_thin_at=now, lag_at_thin=lag
            )
            return LagStep(thinned, "thin")
    if lag < low_water and state.sample_fps < policy.sample_fps:
        return LagStep(
            replace(state, sample_fps=policy.sample_fps, last_thin_at=None, lag_at_thin=0.0), "restore"
        )
    return LagStep(state)


@dataclass(frozen=True)
class LagReport:
    """What a session tells the aggregator about its lag (``SessionLifecycle``'s lag fields)."""

    lag_s: float
    skipped_s: float
    sample_fps: float
    lag_actions: int
    skipping: bool = False


def report_due(
    previous: LagReport | None, current: LagReport, since_last_s: float, interval_s: float, lag_step_s: float
) -> bool:
    """Whether ``current`` deserves an ACTIVE lifecycle report: it differs materially from the
    last one sent (``previous``; None: the one sent when the session became ACTIVE, with no
    lag) and that one is at least ``interval_s`` old, so a session reports at most that often.
    Material: an action, skipping begun or ended, a second or more of skipped time, another
    sampling rate, or the lag
    moved by ``lag_step_s`` or more (the lag of a healthy session wobbles by about a chunk:
    that alone must not rewrite its header every few seconds)."""
    if since_last_s < interval_s:
        return False
    before = previous or LagReport(lag_s=0.0, skipped_s=0.0, sample_fps=current.sample_fps, lag_actions=0)
    return (
        current.lag_actions != before.lag_actions
        or current.skipping != before.skipping
        or abs(current.skipped_s - before.skipped_s) >= MATERIAL_LAG_CHANGE_S
        or current.sample_fps != before.sample_fps
        or abs(current.lag_s - before.lag_s) >= max(MATERIAL_LAG_CHANGE_S, lag_step_s)
    )


def overlap(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of ``[start, end)`` covered by ``spans`` (disjoint ``(start, end)`` pairs)."""
    return sum(max(0.0, min(end, s_end) - max(start, s_start)) for s_start, s_end in spans)
