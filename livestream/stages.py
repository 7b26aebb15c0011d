"""Stage timestamps that travel with a chunk's records, and the per-stage latency histograms.

A chunk's way through the system, one stamp per stage (wall-clock seconds since the epoch):

====================  ==========  =======================================================
stage                 stamped by  when
====================  ==========  =======================================================
``segment_listed``    ingest      the media playlist that first listed the chunk's last
                                  segment was read (the earliest moment anyone here can
                                  know the segment is available at the source: the
                                  source's own publication time is not observable, and
                                  ``#EXT-X-PROGRAM-DATE-TIME`` is capture time on its clock)
``segment_fetched``   ingest      that segment's bytes were downloaded
``segment_decoded``   ingest      its sampled frames were decoded (the chunk is complete)
``chunk_published``   ingest      the chunk record was handed to the producer
``chunk_consumed``    analyzer    a poll returned the chunk record
``chunk_inferred``    analyzer    the batch holding the chunk was analysed
``result_published``  analyzer    its result and events were handed to the producer
``state_folded``      aggregator  the session's fold of that result or event was handed to
                                  the producer (session chunk and event records)
``sse_delivered``     api         the event it made was written to a per-session SSE feed
====================  ==========  =======================================================

The stamps so far travel in the Kafka record header ``livestream-stages`` (``STAGE_HEADER``) of
the chunk record, the chunk result and each per-chunk event, and the aggregator's session chunk
and session event records: a JSON object of stage name to seconds, in stage order. Consumers of
our topics may read it; records without it (from before it existed, or produced by others) are
simply not timed. Each service observes the stages it stamps in two histograms with a ``stage``
label: ``livestream_stage_seconds`` (from the previous stamp present) and
``livestream_stage_age_seconds`` (from ``segment_listed``: the latency of the path so far).
Stamps are taken on each host's wall clock: across machines, clock skew adds to (or subtracts
from) the stages that cross hosts; a negative interval is observed as 0.

A malformed header is counted in ``livestream_stage_header_errors_total`` and logged once per
process, and the record is processed as usual: a timing header never stops the data it rides on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from prometheus_client import Counter, Histogram

from livestream.metrics import LATENCY_BUCKETS_S

__all__ = [
    "STAGES",
    "STAGE_HEADER",
    "Stage",
    "StageTimes",
    "observe",
    "stages_from_headers",
]

log = logging.getLogger(__name__)

STAGE_HEADER = "livestream-stages"

Stage = Literal[
    "segment_listed",
    "segment_fetched",
    "segment_decoded",
    "chunk_published",
    "chunk_consumed",
    "chunk_inferred",
    "result_published",
    "state_folded",
    "sse_delivered",
]
STAGES: tuple[Stage, ...] = get_args(Stage)  # in path order
_ORDER = {stage: position for position, stage in enumerate(STAGES)}
_MAX_HEADER_BYTES = 1024  # nine stamps are ~300 bytes: anything bigger is not ours

STAGE_SECONDS = Histogram(
    "livestream_stage_seconds",
    "Time a chunk spent reaching this stage from the previous stamped one (livestream.stages).",
    ["stage"],
    buckets=LATENCY_BUCKETS_S,
)
STAGE_AGE_SECONDS = Histogram(
    "livestream_stage_age_seconds",
    "Time from the chunk's last segment being listed by its playlist to this stage (livestream.stages).",
    ["stage"],
    buckets=LATENCY_BUCKETS_S,
)
HEADER_ERRORS = Counter(
    "livestream_stage_header_errors_total",
    "Records whose livestream-stages header was malformed (the record itself was processed).",
)
_warned = False


@dataclass(frozen=True, slots=True)
class StageTimes:
    """The stamps of one chunk's path so far, in stage order (immutable: ``at`` makes a new one)."""

    stamps: tuple[tuple[Stage, float], ...] = ()

    def at(self, stage: Stage, when: float | None = None) -> StageTimes:
        """These stamps plus ``stage`` at ``when`` (now by default); a later stage replaces nothing.

        Stamping a stage that is already there, or one before the last stamped, is a programming
        error: the stamps of one path only go forward.
        """
        if self.stamps and _ORDER[stage] <= _ORDER[self.stamps[-1][0]]:
            raise ValueError(f"stage {stage} cannot follow {self.stamps[-1][0]}")
        return StageTimes((*self.stamps, (stage, time.time() if when is None else when)))

    def get(self, stage: Stage) -> float | None:
        return next((when for name, when in self.stamps if name == stage), None)

    @property
    def last(self) -> tuple[Stage, float] | None:
        return self.stamps[-1] if self.stamps else None

    def header(self) -> tuple[str, bytes]:
        """The Kafka record header carrying these stamps (millisecond precision)."""
        body = {stage: round(when, 3) for stage, when in self.stamps}
        return STAGE_HEADER, json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, value: bytes) -> StageTimes:
        """Stamps from a header value; ``ValueError`` when it is not what ``header`` writes."""
        if len(value) > _MAX_HEADER_BYTES:
            raise ValueError(f"{len(value)} bytes, more than {_MAX_HEADER_BYTES}")
        body = json.loads(value)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        stamps: list[tuple[Stage, float]] = []
        for name, when in body.items():
            if name not in _ORDER:
                raise ValueError(f"unknown stage {name!r}")
            if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
                raise ValueError(f"stage {name} has no time: {when!r}")
            stamps.append((name, float(when)))
        if [_ORDER[name] for name, _ in stamps] != sorted({_ORDER[name] for name, _ in stamps}):
            raise ValueError("stages out of order")
        return cls(tuple(stamps))


def stages_from_headers(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> StageTimes:
    """The stamps in a record's headers (aiokafka's pairs or faust's mapping); empty when none.

    A malformed header is counted and logged (once per process) and read as no stamps.
    """
    if not headers:
        return StageTimes()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in pairs:
        if key != STAGE_HEADER:
            continue
        try:
            return StageTimes.parse(value)
        except (ValueError, TypeError) as exc:  # json's errors are ValueErrors
            _malformed(str(exc))
            return StageTimes()
    return StageTimes()


def _malformed(why: str) -> None:
    global _warned
    HEADER_ERRORS.inc()
    if not _warned:
        _warned = True
        log.warning("ignoring a malformed %s header (%s); later ones are only counted", STAGE_HEADER, why)


def observe(times: StageTimes, stage: Stage, when: float | None = None) -> StageTimes:
    """Stamp ``stage`` and observe it in both histograms; returns the new stamps.

    With no earlier stamp (a record without the header) only the stamp is added: there is
    nothing to measure from.
    """
    if times.last is not None and _ORDER[stage] <= _ORDER[times.last[0]]:
        # Stamps of another path (a record re-produced as it was, say): time this one afresh.
        _malformed(f"stage {stage} after {times.last[0]}")
        times = StageTimes()
    stamped = times.at(stage, when)
    now = stamped.stamps[-1][1]
    if times.last is not None:
        STAGE_SECONDS.labels(stage).observe(max(0.0, now - times.last[1]))
    listed = times.get("segment_listed")
    if listed is not None:
        STAGE_AGE_SECONDS.labels(stage).observe(max(0.0, now - listed))
    return stamped
