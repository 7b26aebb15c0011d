"""The multi-object tracker's state, as the session header carries it (``aggregator.tracking``).

A session's tracker state travels with the session in its ``SessionHeader`` (compacted
session-state topic and the aggregator's changelog), never with one replica, so a redelivered or
re-folded chunk reproduces the same tracks and ids. What the fields mean is written in
``aggregator/tracking.py``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Box = tuple[float, float, float, float]
Mean = tuple[float, float, float, float, float, float, float, float]
# (position variance, position-velocity covariance, velocity variance), shared by the 4 corners.
CovarianceBlock = tuple[float, float, float]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Track(_Frozen):
    """One object's track: the Kalman posterior at ``last_seen`` and its lifecycle counters."""

    track_id: int = Field(ge=1)
    label: str
    mean: Mean
    covariance: CovarianceBlock
    first_seen: float
    last_seen: float
    hits: int = Field(ge=1)
    confirmed: bool
    score: float  # of the last matched detection


class TrackerState(_Frozen):
    """Everything the tracker remembers between frames (kept in the session's header)."""

    next_track_id: int = Field(1, ge=1)
    last_time: float | None = None
    tracks: tuple[Track, ...] = ()  # ordered by track_id
