"""The one-line load status ``livestream up`` prints: sessions, lag and frames/s, from the metrics.

The services already count what matters (``livestream.metrics``); ``up`` scrapes its own ingest
and analyzer instances over loopback and prints a line like::

    load: 3 session(s), lag max 4.1 s, frames/s decoded 75.2, sampled 7.8, inferred 5.8, unchanged 2.0

(``unchanged``: frames analysed without the detector, unchanged since their chunk's last
inferred one, ``analyzer.unchanged``; inferred plus unchanged keep up with sampled.)

Rates are the counters' differences between two scrapes over the seconds between them, so the
first line after start shows totals only. Pure parsing and formatting here; ``scrape`` is the
only I/O (a short HTTP GET per instance, on loopback).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Load:
    """What the load line shows, summed over the instances scraped (None: not scraped)."""

    sessions: float | None = None
    max_lag_s: float | None = None
    frames_decoded: float | None = None  # counters: totals since each process started
    frames_sampled: float | None = None
    frames_inferred: float | None = None
    frames_unchanged: float | None = None  # analysed without the detector (analyzer.unchanged)


def parse(pages: Iterable[str]) -> Load:
    """The load from the /metrics pages of ingest and analyzer instances."""
    sums: dict[str, float] = {}
    lag: float | None = None
    for page in pages:
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                if sample.name == "livestream_ingest_max_session_lag_seconds":
                    lag = max(lag or 0.0, sample.value)
                elif sample.name in _SUMMED:
                    sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return Load(
        sessions=sums.get("livestream_ingest_active_sessions"),
        max_lag_s=lag,
        frames_decoded=sums.get("livestream_ingest_frames_decoded_total"),
        frames_sampled=sums.get("livestream_ingest_frames_sampled_total"),
        frames_inferred=sums.get("livestream_analyzer_frames_inferred_total"),
        frames_unchanged=sums.get("livestream_analyzer_frames_unchanged_total"),
    )


_SUMMED = {
    "livestream_ingest_active_sessions",
    "livestream_ingest_frames_decoded_total",
    "livestream_ingest_frames_sampled_total",
    "livestream_analyzer_frames_inferred_total",
    "livestream_analyzer_frames_unchanged_total",
}


def load_line(current: Load, previous: Load | None, seconds: float) -> str:
    """The status line; rates need a previous scrape ``seconds`` ago."""
    parts = [f"{_number(current.sessions)} session(s)"]
    if current.max_lag_s is not None:
        parts.append(f"lag max {current.max_lag_s:.1f} s")
    rates = []
    for name, now, before in (
        ("decoded", current.frames_decoded, previous.frames_decoded if previous else None),
        ("sampled", current.frames_sampled, previous.frames_sampled if previous else None),
        ("inferred", current.frames_inferred, previous.frames_inferred if previous else None),
        ("unchanged", current.frames_unchanged, previous.frames_unchanged if previous else None),
    ):
        if now is None:
            continue
        if before is None or seconds <= 0 or now < before:  # no earlier scrape, or a restart
            rates.append(f"{name} {now:.0f} in all")
        else:
            rates.append(f"{name} {(now - before) / seconds:.1f}")
    if rates:
        parts.append("frames/s " + ", ".join(rates))
    return "load: " + ", ".join(parts)


def scrape(urls: Mapping[str, str]) -> Load:
    """The load of the instances at ``urls`` (name -> /metrics URL); unreachable ones are left out."""
    pages = []
    for url in urls.values():
        try:
            response = httpx.get(url, timeout=SCRAPE_TIMEOUT_S)
        except httpx.HTTPError:
            continue  # restarting, or not up yet: its numbers come back with it
        if response.status_code == 200:
            pages.append(response.text)
    return parse(pages)


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"
