"""Every service stops with a non-zero status once the broker has been gone for its outage limit.

The four services run as processes (``python -m ingest|analyzer|aggregator|api``, as
``livestream up`` runs them, but unsupervised so that their exit is what we observe) against a
broker of this module's own, with ``BROKER_OUTAGE_LIMIT_S`` of a few seconds. Once the API
answers ``/healthz`` the broker is stopped for good: each service must notice the outage even
though it is idle (no session runs), keep going within the limit, and then exit with status 2
(the aggregator, stopped through faust's ``app.crash``, with 1), naming the outage in its log.
What they do within the limit with work in hand is tested per service (``test_ingest_broker_errors``,
``test_analyzer_broker_restart``, ``test_aggregator_broker_errors``).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from livestream.kafka.admin import ensure_topics
from livestream.kafka.broker import LocalKafkaBroker, free_port
from livestream.stack import SERVICES, Stack
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model]

OUTAGE_LIMIT_S = 4.0
# What each service logs once it runs (faust's worker: "Ready" after its start-up).
READY = {"ingest": "ingest consuming", "analyzer": "analyzer consuming", "aggregator": "Ready"}
EXPECTED_EXIT = {"ingest": 2, "analyzer": 2, "api": 2, "aggregator": 1}


def test_every_service_exits_non_zero_past_its_broker_outage_limit(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    with LocalKafkaBroker(base_dir=tmp_path / "broker") as broker:
        topics = Topics(prefix=f"outage{secrets.token_hex(4)}", partitions=2)
        asyncio.run(ensure_topics(broker.bootstrap_servers, topics.specs()))
        stack = Stack(
            bootstrap_servers=broker.bootstrap_servers,
            api_key=uuid.uuid4().hex,
            api_port=free_port(),
            run_dir=tmp_path,
            topic_prefix=topics.prefix,
            extra_env={
                f"LIVESTREAM_{service.upper()}_BROKER_OUTAGE_LIMIT_S": str(OUTAGE_LIMIT_S)
                for service in SERVICES
            },
        )
        (tmp_path / "logs").mkdir()
        processes: dict[str, subprocess.Popen[bytes]] = {}
        logs = {service: tmp_path / "logs" / f"{service}.log" for service in SERVICES}
        try:
            for service in SERVICES:
                with logs[service].open("wb") as log:
                    processes[service] = subprocess.Popen(
                        [sys.executable, "-m", service], env=stack.env(), stdout=log, stderr=subprocess.STDOUT
                    )
            deadline = time.monotonic() + 90
            while True:
                assert all(p.poll() is None for p in processes.values()), _tails(logs)
                try:
                    if httpx.get(f"{stack.api_url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, _tails(logs)
                time.sleep(0.5)
            # Every service is past its start-up (an outage during start-up is a failed start,
            # which exits non-zero too, but is not what this test is about).
            while not all(marker in logs[name].read_text(errors="replace") for name, marker in READY.items()):
                assert all(p.poll() is None for p in processes.values()), _tails(logs)
                assert time.monotonic() < deadline, _tails(logs)
                time.sleep(0.5)
            time.sleep(2.0)
            assert all(p.poll() is None for p in processes.values()), _tails(logs)

            broker.stop()
            stopped_at = time.monotonic()
            codes: dict[str, int] = {}
            for service, process in processes.items():
                try:
                    codes[service] = process.wait(timeout=max(1.0, stopped_at + 90 - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            took = time.monotonic() - stopped_at
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()

    assert codes == EXPECTED_EXIT, f"exit codes {codes} after {took:.0f} s\n{_tails(logs)}"
    for service, path in logs.items():
        text = path.read_text(errors="replace")
        assert "broker errors for" in text, f"{service} does not name the outage:\n{text[-3000:]}"
    print(f"every service exited {took:.1f} s after the broker stopped (limit {OUTAGE_LIMIT_S:g} s)")


def _tails(logs: dict[str, Path]) -> str:
    return "\n".join(
        f"--- {name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-20:])
        for name, path in logs.items()
        if path.exists()
    )
