"""``livestream`` command line: ``up`` (the stack, foreground) and ``demo`` (one session, end to end).

Both start a local Kafka broker unless ``KAFKA_BOOTSTRAP_SERVERS`` points at a cluster,
create the topics, and run the four services as separate processes (``livestream.stack``),
supervised: a process that exits is restarted (the local broker too, on its address and data),
and only a crash loop stops the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from analyzer.errors import QueryError
from analyzer.understanding.runtime import shared_interpreter
from api.settings import ApiSettings
from api.tenants import KeyRing, TenantKeys
from livestream.errors import LivestreamError
from livestream.kafka.admin import ensure_topics
from livestream.kafka.broker import LocalKafkaBroker, free_port
from livestream.livestatus import Load, load_line
from livestream.livestatus import scrape as scrape_load
from livestream.processes import ProcessStatus
from livestream.redact import redact_url
from livestream.stack import Stack, free_ports
from schemas.topics import Topics

log = logging.getLogger("livestream")

DEFAULT_QUERY = "detect a person, a bicycle, a cat or a cup"


class CliSettings(BaseSettings):
    """What the CLI reads from the environment: the same variables the services read."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
        description="A cluster to use; unset: the CLI starts a local broker.",
    )
    topic_prefix: str = Field(default="livestream", validation_alias=AliasChoices("LIVESTREAM_TOPIC_PREFIX"))
    api_port: int = Field(default=8000, validation_alias=AliasChoices("LIVESTREAM_API_PORT"))
    status_interval_s: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices("LIVESTREAM_STATUS_INTERVAL_S"),
        description="`livestream up` prints the services' status this often, and whenever it changes.",
    )


# `up` prints its load line (sessions, lag, frames/s) this often while it changes.
LOAD_INTERVAL_S = 10.0


def configured_api_keys() -> TenantKeys:
    """The tenants and keys the API will accept (its own settings: keys, tenants, tenants file).

    Empty when none is configured; ``ConfigurationError`` for a bad tenants setting or a short key.
    """
    settings = ApiSettings()
    if not (settings.keys or settings.tenants.strip() or settings.tenants_file):
        return {}
    configured = settings.tenant_keys()
    KeyRing(configured, settings.min_key_length)  # a short key fails here, before anything starts
    return configured


def api_keys_for_stack(configured: TenantKeys) -> tuple[str, dict[str, str]]:
    """A key for the CLI's own requests, and the environment that gives the API every configured key.

    The services inherit LIVESTREAM_API_TENANTS / _TENANTS_FILE / _KEYS from this environment;
    the stack sets LIVESTREAM_API_KEYS to the key it is given, so it is set back to the
    configured list here. Nothing configured: a generated key (long enough for the API's
    minimum) becomes the default tenant's only key.
    """
    if not configured:
        generated = secrets.token_urlsafe(24)
        return generated, {"LIVESTREAM_API_KEYS": generated}
    first = next(key for keys in configured.values() for key in keys)
    return first, {"LIVESTREAM_API_KEYS": os.environ.get("LIVESTREAM_API_KEYS", "")}


@contextlib.contextmanager
def kafka_cluster(configured: str | None) -> Iterator[tuple[str, LocalKafkaBroker | None]]:
    """The cluster named by KAFKA_BOOTSTRAP_SERVERS, else a local single-node broker.

    Yields its address and the local broker when one was started here (the stack supervises it).
    """
    if configured:
        yield configured, None
        return
    print("starting a local Kafka broker (KRaft, no Docker)...", flush=True)
    with LocalKafkaBroker() as broker:
        print(f"Kafka broker at {broker.bootstrap_servers}", flush=True)
        yield broker.bootstrap_servers, broker


@contextlib.contextmanager
def running_stack(args: argparse.Namespace, api_key: str, api_env: dict[str, str]) -> Iterator[Stack]:
    with kafka_cluster(args.settings.kafka_bootstrap_servers) as (bootstrap, broker):
        topics = Topics(prefix=args.topic_prefix)
        asyncio.run(ensure_topics(bootstrap, topics.specs()))
        run_dir = Path(args.run_dir).resolve()
        stack = Stack(
            bootstrap_servers=bootstrap,
            api_key=api_key,
            api_port=args.port,
            run_dir=run_dir,
            topic_prefix=args.topic_prefix,
            analyzer_replicas=args.analyzers,
            extra_env=api_env,
            broker=broker,
        )
        # Every instance serves its metrics on a loopback port of its own (``up`` reads them for
        # its load line; so can a local Prometheus).
        names = [name for name, _module in stack.instances()]
        stack.metrics_ports = dict(zip(names, free_ports(len(names), taken={stack.api_port}), strict=True))
        print(f"starting services (logs in {run_dir / 'logs'})...", flush=True)
        try:
            stack.start()
            stack.supervise_in_background()
            yield stack
        except Exception:
            # A crash loop stops the services, so whatever the caller was doing fails next (a
            # dropped event stream): the crash loop is the error to report.
            if stack.failure is not None:
                raise stack.failure from None
            raise
        finally:
            print("stopping services...", flush=True)
            stack.stop()


def iter_sse(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream response."""
    event, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def follow_session(
    client: httpx.Client,
    stream_id: str,
    session_id: str,
    source_origin: datetime | None = None,
    printed: set[str] | None = None,
) -> None:
    """Print each event of the session's SSE feed as it opens and closes, until the session ends.

    ``source_origin`` (the test source's wall-clock time of its second 0) adds the event's
    time on the script's timeline: stream time counts from where the session joined the live
    stream, which is a segment or two after the source began. ``printed`` holds the event
    ids already shown, so following again (after Ctrl-C) shows only new events.
    """
    printed = set() if printed is None else printed
    url = f"/api/live/live-sessions/{stream_id}/{session_id}/events/stream"
    with client.stream("GET", url, timeout=httpx.Timeout(10, read=None)) as response:
        response.raise_for_status()
        for kind, data in iter_sse(response):
            if kind == "detection":
                event = json.loads(data)
                if event["event_id"] in printed:
                    continue
                printed.add(event["event_id"])
                script_time = ""
                if source_origin is not None:
                    # captured_at is the wall clock (PROGRAM-DATE-TIME) of the detection frame.
                    captured = datetime.fromisoformat(event["captured_at"])
                    script_time = f"  (script time {(captured - source_origin).total_seconds():5.1f}s)"
                print(
                    f"  event  {event['t_start']}-{event['t_end']}{_track(event)}"
                    f"  stream_time={event['stream_time']:7.2f}s"
                    f"  {event['label']:<10} confidence={event['confidence']:.2f}{script_time}",
                    flush=True,
                )
            elif kind == "update":
                event = json.loads(data)
                if event.get("lifecycle") == "closed" and event["event_id"] in printed:
                    print(
                        f"  closed {event['t_start']}-{event['t_end']}{_track(event)}  {event['label']:<10}"
                        f" confidence={event['confidence']:.2f}",
                        flush=True,
                    )
            elif kind == "end":
                return


def _track(event: dict[str, Any]) -> str:
    """ " track N" for an event of a tracked object (one object's appearance), else nothing."""
    return f"  track {event['track_id']:<3}" if event.get("track_id") is not None else ""


def describe_interpretation(interpretation: dict[str, Any] | None) -> str:
    """What the API understood of the query: targets with the model answering each, and warnings."""
    if not interpretation:
        return "understood: (the API returned no interpretation)"
    targets = []
    for target in interpretation.get("targets", []):
        labels = ", ".join(
            f"{match['label']} ({match['model']}{' on ' + match['parent'] if match.get('parent') else ''})"
            for match in target.get("labels", [])
        )
        targets.append(f"{'no ' if target.get('negated') else ''}{target['phrase']} -> {labels}")
    lines = ["understood: " + ("; ".join(targets) or "every object the detector knows")]
    lines += [f"  warning: {warning}" for warning in interpretation.get("warnings", [])]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    # A query the models cannot answer fails here, before anything starts (the API would refuse it).
    interpretation = shared_interpreter().interpret(args.query)
    if not interpretation.accepted:
        raise QueryError("the query cannot be answered as written: " + "; ".join(interpretation.warnings))
    api_key, api_env = api_keys_for_stack(configured_api_keys())
    with contextlib.ExitStack() as stack_of_things:
        url, origin = args.url, None
        if not url:
            from livestream.testsource import LiveHlsSource, default_script

            script = default_script()
            source = stack_of_things.enter_context(LiveHlsSource(script))
            url, origin = source.url, source.started_at
            print(f"live test source at {url}; scripted ground truth:")
            for label, start, end in script.truth():
                print(f"  {label:<10} {start:6.1f}s - {end:6.1f}s")
            # The demo's own source is on loopback, which the egress policy refuses by default:
            # allow private sources for this stack only, explicitly.
            api_env = {**api_env, "LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES": "true"}
        stack = stack_of_things.enter_context(running_stack(args, api_key, api_env))
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as client:
            started = client.post(
                "/api/live/start-session",
                data={"source_url": url, "name": args.name, "rapid_review_query": args.query},
            )
            if started.status_code != 200:
                detail = started.json().get("detail", started.text)
                if isinstance(detail, list):  # form validation errors
                    detail = "; ".join(str(item.get("msg", item)) for item in detail)
                print(f"error: the API refused the session: {detail}", file=sys.stderr)
                return 2
            session = started.json()
            stream_id, session_id = session["stream_id"], session["session_id"]
            print(f"session {session_id} on {redact_url(url)}\nquery: {args.query!r}", flush=True)
            print(describe_interpretation(session.get("interpretation")), flush=True)
            # The session's web page, at the path NomadicML's docs print after start_session.
            print(f"web page: {stack.api_url}/events/{stream_id}/{session_id}", flush=True)
            t0, printed = time.monotonic(), set[str]()
            try:
                follow_session(client, stream_id, session_id, origin, printed)
            except KeyboardInterrupt:
                print("ending the session (waiting for in-flight chunks)...", flush=True)
                client.post("/api/live/end-session", data={"stream_id": stream_id, "session_id": session_id})
                follow_session(client, stream_id, session_id, origin, printed)
            final = client.get(f"/api/live/live-sessions/{stream_id}/{session_id}").json()
        if final["events"]:
            print("the session's events, merged across chunk boundaries:")
            for event in final["events"]:
                print(f"  {event['t_start']}-{event['t_end']}  {event['label']:<10} {event['description']}")
        print(
            f"session {final['status']}"
            + (f" ({final['status_reason']})" if final.get("status_reason") else "")
            + f": chunk_count={final['chunk_count']} events={len(final['events'])}"
            f" (merged across chunks) in {time.monotonic() - t0:.0f}s",
            flush=True,
        )
        return 0 if final["status"] == "FINISHED" else 1


def cmd_up(args: argparse.Namespace) -> int:
    configured = configured_api_keys()
    api_key, api_env = api_keys_for_stack(configured)
    if configured:
        keys = sum(len(keys) for keys in configured.values())
        print(f"API keys: {keys} key(s) of {len(configured)} tenant(s)")
    else:
        print(
            "no API keys configured (LIVESTREAM_API_KEYS / LIVESTREAM_API_TENANTS): "
            f"generated API key {api_key}"
        )
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    with running_stack(args, api_key, api_env) as stack:
        print(f"API on {stack.api_url} (Ctrl-C to stop; status in {stack.status_file})", flush=True)
        print(
            "metrics: " + ", ".join(f"{name} {url}" for name, url in stack.metrics_urls.items()), flush=True
        )
        printed: tuple[tuple[str, str, int], ...] = ()
        printed_at = time.monotonic()
        load_urls = {n: u for n, u in stack.metrics_urls.items() if n.startswith(("ingest", "analyzer"))}
        load: tuple[Load, float] | None = None  # the last scrape and when
        load_printed = ""
        try:
            while not stop:
                stack.supervise()  # raises the crash loop the background supervisor found
                statuses = stack.status()
                now = time.monotonic()
                if status_key(statuses) != printed or now - printed_at >= args.settings.status_interval_s:
                    stack.write_status(statuses)  # first: whoever reads the line finds the file current
                    print(f"{datetime.now():%H:%M:%S} {stack.status_line(statuses)}", flush=True)
                    printed, printed_at = status_key(statuses), now
                if load is None or now - load[1] >= LOAD_INTERVAL_S:
                    current = scrape_load(load_urls)
                    line = load_line(current, load[0] if load else None, now - load[1] if load else 0.0)
                    if line != load_printed:  # an idle stack prints it once
                        print(f"{datetime.now():%H:%M:%S} {line}", flush=True)
                        load_printed = line
                    load = (current, now)
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


def status_key(statuses: list[ProcessStatus]) -> tuple[tuple[str, str, int], ...]:
    """What a status line shows: a change of it is printed at once."""
    return tuple((status.name, status.state.value, status.restarts) for status in statuses)


def default_analyzer_replicas(cores: int | None = None) -> int:
    """Two replicas wherever there are two cores to share (``livestream.stack``'s thread rule gives
    each ``cores // 2`` intra-op threads): on 2 cores two single-threaded replicas spent 7.5 CPU s
    per stream-minute where one two-threaded replica spent 9.9, and kept up with 10 streams
    instead of 8 (bench/capacity.py, README Capacity). More replicas than that are a deployment
    choice (each holds its own models in memory)."""
    cores = cores if cores is not None else os.cpu_count() or 1
    return 2 if cores >= 2 else 1


def build_parser(settings: CliSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livestream", description=__doc__)
    parser.set_defaults(settings=settings)
    parser.add_argument("--run-dir", default="var", help="logs and stored segments (default ./var)")
    parser.add_argument("--topic-prefix", default=settings.topic_prefix)
    parser.add_argument(
        "--analyzers",
        type=int,
        default=default_analyzer_replicas(),
        help="analyzer replicas in the consumer group, sharing the cores (default: 2 on a machine "
        "with 2 or more cores, else 1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="broker + services in the foreground until Ctrl-C")
    up.add_argument("--port", type=int, default=settings.api_port)
    up.set_defaults(func=cmd_up)
    demo = sub.add_parser("demo", help="one session on a stream, printing events until it finishes")
    demo.add_argument("--url", default="", help="HLS .m3u8 URL (default: the scripted live test source)")
    demo.add_argument("--query", default=DEFAULT_QUERY)
    demo.add_argument("--name", default="demo")
    demo.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser(CliSettings()).parse_args(argv)
    if getattr(args, "port", None) == 0:
        args.port = free_port()
    try:
        return int(args.func(args))
    except LivestreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
