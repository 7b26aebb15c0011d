"""Per-case quality metrics of a session's merged events against ground-truth windows (pure).

All times are seconds of stream time. An *event* and a *window* are half-open intervals
``(start, end)``; two intervals *overlap* when they share a positive length of time.

* **precision**: events that overlap at least one truth window / events (None: no events).
* **recall**: truth windows overlapped by at least one event / windows (None: no windows).
* **temporal IoU**: |union(events) & union(windows)| / |union(events) | union(windows)|, both
  clipped to the session's ``[0, duration]``; 1.0 when both are empty (nothing to find, nothing
  reported), 0.0 when only one is.
* **start error**: for each window overlapped by an event, (earliest start of the events that
  overlap it) - (window start); the mean over those windows (None: no window matched). Positive:
  the event started late; negative: early.
* **false events per hour**: events that overlap no window, per hour of *absent* time (the
  session's duration minus the union of the windows); None when the target is never absent.

*Maybe* windows mark time in which the answer is neither clearly true nor clearly false (a
walker's legs for "a pedestrian", a recoloured espresso): an event that overlaps only maybe
windows counts neither for precision nor as a false event, maybe time is not absent time, and
the temporal IoU is taken over the session's time outside the maybe windows, and an event's
start error counts from where it leaves maybe time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Interval = tuple[float, float]


def overlaps(a: Interval, b: Interval) -> bool:
    """True when ``a`` and ``b`` share a positive length of time."""
    return min(a[1], b[1]) - max(a[0], b[0]) > 0


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Disjoint, sorted intervals covering the same time; empty intervals are dropped."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def clip(intervals: Iterable[Interval], lo: float, hi: float) -> list[Interval]:
    return [(max(lo, s), min(hi, e)) for s, e in intervals if min(hi, e) > max(lo, s)]


def total(intervals: Iterable[Interval]) -> float:
    return sum(end - start for start, end in union(intervals))


def subtract(intervals: Iterable[Interval], removed: Iterable[Interval]) -> list[Interval]:
    """The parts of ``intervals`` outside every interval of ``removed``."""
    remaining = union(intervals)
    for cut_start, cut_end in union(removed):
        pieces: list[Interval] = []
        for start, end in remaining:
            if start < cut_start:
                pieces.append((start, min(end, cut_start)))
            if end > cut_end:
                pieces.append((max(start, cut_end), end))
        remaining = [piece for piece in pieces if piece[1] > piece[0]]
    return remaining


def intersection_length(a: Sequence[Interval], b: Sequence[Interval]) -> float:
    """Length of time covered by both interval sets."""
    ua, ub = union(a), union(b)
    length = 0.0
    for sa, ea in ua:
        for sb, eb in ub:
            length += max(0.0, min(ea, eb) - max(sa, sb))
    return length


def precision(events: Sequence[Interval], windows: Sequence[Interval]) -> float | None:
    if not events:
        return None
    hits = sum(1 for event in events if any(overlaps(event, w) for w in windows))
    return hits / len(events)


def recall(events: Sequence[Interval], windows: Sequence[Interval]) -> float | None:
    if not windows:
        return None
    found = sum(1 for window in windows if any(overlaps(e, window) for e in events))
    return found / len(windows)


def temporal_iou(
    events: Sequence[Interval], windows: Sequence[Interval], duration: float, maybe: Sequence[Interval] = ()
) -> float:
    ev = subtract(clip(events, 0.0, duration), maybe)
    wi = subtract(clip(windows, 0.0, duration), maybe)
    covered = total([*ev, *wi])
    if covered == 0:
        # Nothing to find and nothing reported is a perfect answer for an absent target.
        return 1.0
    return intersection_length(ev, wi) / covered


def start_error(events: Sequence[Interval], windows: Sequence[Interval]) -> float | None:
    errors = [
        min(e[0] for e in matching) - window[0]
        for window in windows
        if (matching := [e for e in events if overlaps(e, window)])
    ]
    return sum(errors) / len(errors) if errors else None


def false_events_per_hour(
    events: Sequence[Interval], windows: Sequence[Interval], duration: float, maybe: Sequence[Interval] = ()
) -> float | None:
    absent_s = duration - total(clip([*windows, *maybe], 0.0, duration))
    if absent_s <= 0:
        return None
    false = sum(1 for event in events if not any(overlaps(event, w) for w in [*windows, *maybe]))
    return false * 3600.0 / absent_s


def most_at_once(events: Sequence[Interval]) -> int:
    """The most events open at one moment: objects seen at once, when each event is one object."""
    edges = sorted([(start, 1) for start, _ in events] + [(end, -1) for _, end in events])
    # Ends sort before starts at the same time (-1 < 1): touching events are not simultaneous.
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def counted(
    events: Sequence[Interval], windows: Sequence[Interval], maybe: Sequence[Interval]
) -> list[Interval]:
    """The events that count for precision: all but those overlapping only maybe windows."""
    return [
        event
        for event in events
        if any(overlaps(event, w) for w in windows) or not any(overlaps(event, m) for m in maybe)
    ]


@dataclass(frozen=True)
class Scores:
    events: int
    windows: int
    maybe_events: int  # events overlapping only maybe windows: not counted as right or wrong
    precision: float | None
    recall: float | None
    iou: float
    start_error_s: float | None
    false_per_hour: float | None


def score(
    events: Sequence[Interval], windows: Sequence[Interval], duration: float, maybe: Sequence[Interval] = ()
) -> Scores:
    """Every metric of the module docstring for one session."""
    judged = counted(events, windows, maybe)
    return Scores(
        events=len(events),
        windows=len(windows),
        maybe_events=len(events) - len(judged),
        precision=precision(judged, windows),
        recall=recall(events, windows),
        iou=temporal_iou(events, windows, duration, maybe),
        # An event running on from maybe time into a window is not early: its maybe part is cut off.
        start_error_s=start_error(subtract(events, maybe), windows),
        false_per_hour=false_events_per_hour(events, windows, duration, maybe),
    )
