"""Container healthchecks (docker-compose): exit 0 when healthy, 1 with the reason otherwise.

    python -m livestream.healthcheck kafka                           # the cluster answers metadata
    python -m livestream.healthcheck http://127.0.0.1:8000/healthz   # the URL answers 200

A worker container (ingest, analyzer, aggregator) runs its service as PID 1, so the container
exits (and its restart policy applies) when the service dies; what its healthcheck adds is
whether the worker can reach the cluster it depends on. The API says more itself: /healthz is
200 only once its Kafka clients run and its session view has caught up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import httpx

from livestream.errors import KafkaSetupError
from livestream.kafka.admin import wait_for_broker
from livestream.settings import ServiceSettings

DEFAULT_TIMEOUT_S = 5.0


def check_kafka(bootstrap_servers: str, timeout_s: float) -> str | None:
    """None when the cluster lists a broker within ``timeout_s``, else why not."""
    try:
        asyncio.run(wait_for_broker(bootstrap_servers, timeout_s))
    except KafkaSetupError as exc:
        return str(exc)
    return None


def check_http(url: str, timeout_s: float) -> str | None:
    """None when ``url`` answers 200 within ``timeout_s``, else why not."""
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"{url}: {type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return f"{url}: HTTP {response.status_code} {response.text[:200]}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m livestream.healthcheck", description=__doc__)
    parser.add_argument("target", help="'kafka' (KAFKA_BOOTSTRAP_SERVERS) or an http(s) URL")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    args = parser.parse_args(argv)
    if args.target == "kafka":
        problem = check_kafka(ServiceSettings().kafka_bootstrap_servers, args.timeout)
    elif args.target.startswith(("http://", "https://")):
        problem = check_http(args.target, args.timeout)
    else:
        parser.error(f"unknown target {args.target!r}")
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
