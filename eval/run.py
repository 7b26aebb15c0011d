"""``python -m eval`` / ``make eval``: the real pipeline's quality on scripted live streams.

One local Kafka broker and one supervised stack (api, ingest, analyzer, aggregator as processes,
real models) serve every case. Cases that share a script share one real-time live HLS source,
with one session per query started on it together; ingest joins every session at the first
segment (``LIVESTREAM_INGEST_LIVE_EDGE_SEGMENTS``) and chunks are one 2 s segment each, so
stream time is script time and the truth windows apply as written.

Per case: the decision start-session returned (the interpretation's, or ``refused`` for a 422)
against the expected one, and the session's merged events (``get_session``) scored against the
truth windows by :mod:`eval.metrics`. Events are matched by the case's query, not by label: a
session has one query, so every event of the session is an answer to it, whatever the
analyzer labels it. Definitions of the metrics are in :mod:`eval.metrics`.

Prints the table; a full run writes ``eval/results/latest.json`` (``--case`` runs only print),
``--write-readme`` puts the table in the README between ``<!-- eval:start -->`` and
``<!-- eval:end -->``, and ``--rescore`` scores the stored sessions again against the current
cases (a corrected ground truth) without a new run. The broker's and services' logs are kept in
a temporary folder only when a session failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from nomadic import NomadicAI
from nomadic.exceptions import APIError

from eval.cases import REFUSED, Case, cases, scripts
from eval.metrics import Interval, Scores, most_at_once, score
from livestream.kafka.admin import ensure_topics
from livestream.kafka.broker import LocalKafkaBroker
from livestream.stack import stack_for_tests
from livestream.testsource import LiveHlsSource
from schemas.topics import Topics

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
README = REPO / "README.md"
START_MARKER, END_MARKER = "<!-- eval:start -->", "<!-- eval:end -->"

SEGMENT_SECONDS = 2.0
CHUNK_SECONDS = 2.0
WINDOW = 64  # more segments than any script: the playlist lists the whole stream
LIVE_EDGE_SEGMENTS = 1000  # join at the first listed segment: stream time = script time
FINISH_TIMEOUT_S = 240.0  # after the stream ends, for the last chunks to be analysed


@dataclass
class Outcome:
    case: Case
    decision: str | None = None
    status: str | None = None  # the session's final status; None when refused / not started
    events: list[Interval] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    track_ids: list[int | None] = field(default_factory=list)  # per event, in ``events`` order
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    scores: Scores | None = None

    @property
    def decision_ok(self) -> bool:
        return self.decision == self.case.decision


def _start_with_options(api: tuple[str, str], url: str, case: Case) -> dict[str, Any]:
    """start-session with the case's per-session options, which the SDK does not send (plain HTTP)."""
    api_url, api_key = api
    form = {"source_url": url, "name": f"eval-{case.name}", "rapid_review_query": case.query, **case.options}
    response = httpx.post(
        f"{api_url}/api/live/start-session", data=form, headers={"X-API-Key": api_key}, timeout=60
    )
    if response.status_code != 200:
        body = (
            response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        )
        raise APIError(response.status_code, str(body.get("detail", response.text)), body)
    return response.json()


def _start(
    sdk: NomadicAI, api: tuple[str, str], url: str, case: Case
) -> tuple[Outcome, tuple[str, str] | None]:
    outcome = Outcome(case)
    try:
        if case.options:
            started = _start_with_options(api, url, case)
        else:
            started = sdk.livestream.start_session(
                source_url=url, name=f"eval-{case.name}", rapid_review_query=case.query
            )
    except APIError as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        interpretation = details.get("interpretation") or (details.get("detail") or {}).get("interpretation")
        if exc.status_code == 422 and interpretation:
            outcome.decision = REFUSED
            outcome.warnings = list(interpretation.get("warnings", []))
        else:
            outcome.error = f"start-session {exc.status_code}: {exc.message}"
        return outcome, None
    interpretation = started.get("interpretation") or {}
    outcome.decision = interpretation.get("decision")
    outcome.warnings = list(interpretation.get("warnings", []))
    return outcome, (started["stream_id"], started["session_id"])


def run_script(sdk: NomadicAI, api: tuple[str, str], script_name: str, group: list[Case]) -> list[Outcome]:
    """One live source for the script; every case's session started on it, then awaited."""
    script = scripts()[script_name]
    with LiveHlsSource(script, segment_seconds=SEGMENT_SECONDS, window=WINDOW) as source:
        started = [_start(sdk, api, source.url, case) for case in group]
        source.wait_finished(timeout=script.duration + 60)
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        for outcome, ids in started:
            if ids is None:
                continue
            session: dict[str, Any] = {}
            while time.monotonic() < deadline:
                session = sdk.livestream.get_session(*ids)
                if session.get("status") in {"FINISHED", "FAILED"}:
                    break
                time.sleep(0.5)
            outcome.status = session.get("status")
            if outcome.status != "FINISHED":
                outcome.error = f"session {outcome.status}: {session.get('status_reason')}"
            events = session.get("events") or []
            outcome.events = [(float(e["start_time"]), float(e["end_time"])) for e in events]
            outcome.labels = sorted({str(e.get("label")) for e in events})
            outcome.track_ids = [e.get("track_id") for e in events]
    for outcome, ids in started:
        # A session that ran is scored even if it did not finish (its error is in the table).
        if ids is not None:
            outcome.scores = score(outcome.events, outcome.case.windows, script.duration, outcome.case.maybe)
    return [outcome for outcome, _ in started]


def run(selected: list[Case]) -> list[Outcome]:
    run_dir = Path(tempfile.mkdtemp(prefix="livestream-eval-"))
    # The aggregator (faust) writes its data folder in its working directory: keep it out of the repo.
    previous_cwd = Path.cwd()
    os.chdir(run_dir)
    # The stack prints every service's log tail when it stops: kept in a file, not in the table.
    stack_output = (run_dir / "stack-output.log").open("w")
    print(f"broker, stack and logs in {run_dir}", file=sys.stderr)
    outcomes: list[Outcome] = []
    try:
        with contextlib.redirect_stdout(stack_output), LocalKafkaBroker(base_dir=run_dir) as broker:
            topics = Topics(prefix=f"eval{secrets.token_hex(4)}", partitions=3)
            asyncio.run(ensure_topics(broker.bootstrap_servers, topics.specs()))
            with stack_for_tests(
                broker.bootstrap_servers,
                topics.prefix,
                run_dir / "stack",
                extra_env={
                    "LIVESTREAM_INGEST_CHUNK_SECONDS": str(CHUNK_SECONDS),
                    "LIVESTREAM_INGEST_LIVE_EDGE_SEGMENTS": str(LIVE_EDGE_SEGMENTS),
                },
            ) as stack:
                sdk = NomadicAI(api_key=stack.api_key, base_url=stack.api_url)
                groups: dict[str, list[Case]] = {}
                for case in selected:
                    groups.setdefault(case.script_name, []).append(case)
                for script_name, group in groups.items():
                    began = time.monotonic()
                    outcomes += run_script(sdk, (stack.api_url, stack.api_key), script_name, group)
                    print(
                        f"  {script_name}: {len(group)} cases in {time.monotonic() - began:.0f}s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        stack_output.close()
        os.chdir(previous_cwd)
    # Logs and recordings are only worth keeping when something went wrong.
    if all(outcome.error is None for outcome in outcomes):
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"some sessions failed: logs kept in {run_dir}", file=sys.stderr)
    return outcomes


# --------------------------------------------------------------------------- reporting


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _counts(s: Scores | None) -> str:
    if s is None:
        return "-"
    maybe = f" ({s.maybe_events} maybe)" if s.maybe_events else ""
    return f"{s.events}{maybe} / {s.windows}"


def _objects(o: Outcome) -> str:
    """Objects seen at once (its events overlapping), against the case's expectation."""
    if o.scores is None:
        return "-"
    most = most_at_once(o.events)
    tracked = sum(t is not None for t in o.track_ids)
    seen = f"{most} ({tracked} tracked)" if tracked else str(most)
    if o.case.at_once is None:
        return seen
    return f"{seen} / {o.case.at_once}" + ("" if most == o.case.at_once else " **wrong**")


def table(outcomes: list[Outcome]) -> str:
    head = (
        "| case | query | kind | decision (expected) | events / windows | objects at once / expected "
        "| precision | recall | temporal IoU | start error (s) | false events / h absent |"
    )
    lines = [head, "|" + "---|" * 11]
    for o in outcomes:
        s = o.scores
        mark = "ok" if o.decision_ok else "**wrong**"
        decision = f"{o.decision or 'none'} {mark}" + ("" if o.decision_ok else f" ({o.case.decision})")
        if o.error:
            decision += f" — {o.error}"
        lines.append(
            f"| {o.case.name} | {o.case.query} | {o.case.kind} | {decision} "
            f"| {_counts(s)} | {_objects(o)} "
            f"| {_fmt(s.precision if s else None)} | {_fmt(s.recall if s else None)} "
            f"| {_fmt(s.iou if s else None)} | {_fmt(s.start_error_s if s else None, '+.1f')} "
            f"| {_fmt(s.false_per_hour if s else None, '.0f')} |"
        )
    scored = [o.scores for o in outcomes if o.scores is not None]
    correct = sum(o.decision_ok for o in outcomes)
    lines.append(
        f"| **mean** | {len(outcomes)} cases | | {correct}/{len(outcomes)} decisions as expected "
        f"| {sum(s.events for s in scored)} / {sum(s.windows for s in scored)} "
        f"| {_objects_summary(outcomes)} "
        f"| {_fmt(_mean([s.precision for s in scored]))} | {_fmt(_mean([s.recall for s in scored]))} "
        f"| {_fmt(_mean([s.iou for s in scored]))} "
        f"| {_fmt(_mean([s.start_error_s for s in scored]), '+.1f')} "
        f"| {_fmt(_mean([s.false_per_hour for s in scored]), '.0f')} |"
    )
    return "\n".join(lines)


def _objects_summary(outcomes: list[Outcome]) -> str:
    judged = [o for o in outcomes if o.case.at_once is not None and o.scores is not None]
    right = sum(most_at_once(o.events) == o.case.at_once for o in judged)
    return f"{right}/{len(judged)} as expected"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def _commit() -> tuple[str, list[str]]:
    """HEAD, and the tracked files that differed from it: the run measured the working tree."""
    head = _git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return head, changed


def write_results(outcomes: list[Outcome], meta: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for o in outcomes:
        rows.append(
            {
                "name": o.case.name,
                "script": o.case.script_name,
                "query": o.case.query,
                "kind": o.case.kind,
                "expected_decision": o.case.decision,
                "decision": o.decision,
                "decision_ok": o.decision_ok,
                "warnings": o.warnings,
                "status": o.status,
                "error": o.error,
                "windows": [list(w) for w in o.case.windows],
                "maybe_windows": [list(w) for w in o.case.maybe],
                "events": [list(e) for e in o.events],
                "event_labels": o.labels,
                "event_track_ids": o.track_ids,
                "scores": None if o.scores is None else asdict(o.scores),
            }
        )
    RESULTS.write_text(json.dumps({"meta": meta, "cases": rows}, indent=2) + "\n")


def rescored(path: Path = RESULTS) -> tuple[list[Outcome], dict[str, Any]]:
    """The stored run's sessions scored again against the cases as they are now (a corrected
    ground truth needs no new run: the events are what the pipeline produced)."""
    stored = json.loads(path.read_text())
    by_name = {case.name: case for case in cases()}
    all_scripts = scripts()
    outcomes = []
    for row in stored["cases"]:
        case = by_name.get(row["name"])
        if case is None:
            continue  # a case removed since the run
        outcome = Outcome(
            case,
            decision=row["decision"],
            status=row["status"],
            events=[(float(start), float(end)) for start, end in row["events"]],
            labels=list(row["event_labels"]),
            track_ids=list(row.get("event_track_ids", [])),
            warnings=list(row["warnings"]),
            error=row["error"],
        )
        if row["scores"] is not None:
            duration = all_scripts[case.script_name].duration
            outcome.scores = score(outcome.events, case.windows, duration, case.maybe)
        outcomes.append(outcome)
    return outcomes, stored["meta"]


def write_readme(text: str, path: Path = README) -> None:
    content = path.read_text()
    start, end = content.find(START_MARKER), content.find(END_MARKER)
    if start < 0 or end < start:
        raise SystemExit(f"{path} has no {START_MARKER} ... {END_MARKER} section")
    path.write_text(content[: start + len(START_MARKER)] + "\n" + text + "\n" + content[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="run only these cases (by name; repeatable)")
    parser.add_argument("--write-readme", action="store_true", help="write the table into README.md")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help=f"score the sessions stored in {RESULTS.relative_to(REPO)} against the current cases (no run)",
    )
    args = parser.parse_args(argv)
    if args.case and (args.write_readme or args.rescore):
        parser.error("--case runs only print their table: the results and the README are for full runs")
    commit, uncommitted = _commit()  # before the run: what was measured
    if args.rescore:
        outcomes, meta = rescored()
        meta["rescored_at_commit"] = commit
    else:
        selected = [c for c in cases() if not args.case or c.name in args.case]
        if not selected:
            parser.error(f"no such case: {args.case}")
        began = time.monotonic()
        measured_at = datetime.now(UTC)
        outcomes = run(selected)
        meta = {
            "measured_at": measured_at.isoformat(timespec="seconds"),
            "commit": commit,
            "uncommitted_changes": uncommitted,
            "cases": len(outcomes),
            "run_seconds": round(time.monotonic() - began, 1),
            "cpu_count": os.cpu_count(),
        }
    rendered = table(outcomes)
    print(rendered)
    if args.case:
        print(f"{len(outcomes)} cases in {meta['run_seconds']:.0f}s (a partial run: no results written)")
    else:
        write_results(outcomes, meta)
        print(f"{len(outcomes)} cases in {meta['run_seconds']:.0f}s; results in {RESULTS.relative_to(REPO)}")
    if args.write_readme:
        changed = meta.get("uncommitted_changes") or []
        summary = (
            f"Measured {meta['measured_at'].replace('T', ' ')[:16]} UTC on commit `{meta['commit']}`"
            + (f" (working tree with uncommitted changes to {', '.join(changed)})" if changed else "")
            + f", {len(outcomes)} cases in {meta['run_seconds']:.0f} s "
            + (f"({meta['cpu_count']} CPU cores, 1 analyzer)" if meta.get("cpu_count") else "(1 analyzer)")
            + (
                f"; scored against the cases of commit `{meta['rescored_at_commit']}`"
                if "rescored_at_commit" in meta
                else ""
            )
            + ".\n\n"
        )
        write_readme(summary + rendered)
    return 0 if all(o.error is None for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
