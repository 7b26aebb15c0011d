"""Run the four services as separate processes against one Kafka cluster.

Used by ``livestream up`` / ``livestream demo`` and by the end-to-end tests, so what the
tests exercise is exactly what users run: ``python -m ingest|analyzer|aggregator|api``
processes that talk only through Kafka.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from livestream.errors import LivestreamError
from livestream.kafka.broker import free_port
from livestream.processes import die_with_parent

log = logging.getLogger("livestream.stack")

SERVICES = ("aggregator", "analyzer", "ingest", "api")  # start order; stop runs in reverse


class StackError(LivestreamError):
    """A service process failed to start or died."""


@dataclass
class Stack:
    bootstrap_servers: str
    api_key: str
    api_port: int
    run_dir: Path
    topic_prefix: str = "livestream"
    analyzer_replicas: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
                "LIVESTREAM_TOPIC_PREFIX": self.topic_prefix,
                "LIVESTREAM_API_KEYS": self.api_key,
                "LIVESTREAM_API_PORT": str(self.api_port),
                "LIVESTREAM_API_HOST": "127.0.0.1",
                "LIVESTREAM_INGEST_STORAGE_DIR": str(self.run_dir / "segments"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def log_path(self, service: str) -> Path:
        return self.run_dir / "logs" / f"{service}.log"

    def instances(self) -> list[tuple[str, str]]:
        """(instance name, module) of every process, in start order."""
        named: list[tuple[str, str]] = []
        for service in SERVICES:
            if service == "analyzer" and self.analyzer_replicas > 1:
                named += [(f"analyzer-{n}", service) for n in range(1, self.analyzer_replicas + 1)]
            else:
                named.append((service, service))
        return named

    def start(self, *, ready_timeout: float = 90.0) -> None:
        """Start every service, then wait until the API answers /healthz."""
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        env = self.env()
        for name, module in self.instances():
            log_file = self.log_path(name).open("ab")
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", module],
                env=env | {"LIVESTREAM_ANALYZER_INSTANCE_ID": name} if module == "analyzer" else env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own process group: a terminal Ctrl-C reaches only the CLI, which ends the
                # session and then stops the services in order; they still die with it.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            log_file.close()
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise StackError("API not ready in time", url=self.api_url, log=str(self.log_path("api")))

    def check_alive(self) -> None:
        for service, process in self.processes.items():
            code = process.poll()
            if code is not None:
                raise StackError(
                    f"service {service} exited with code {code}:\n{self.log_tail(service)}",
                    log=str(self.log_path(service)),
                )

    def log_tail(self, service: str, lines: int = 30) -> str:
        path = self.log_path(service)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every service (API first, so no new sessions start), then wait; kill stragglers."""
        for name, _module in reversed(self.instances()):
            process = self.processes.get(name)
            if process and process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for service, process in self.processes.items():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service %s did not stop in time; killing it", service)
                process.kill()
                process.wait()
        self.processes.clear()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def stack_for_tests(
    bootstrap_servers: str,
    topic_prefix: str,
    run_dir: Path,
    *,
    analyzer_replicas: int = 1,
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 120.0,
) -> Iterator[Stack]:
    """A running stack on a free API port with a generated key; prints each log's tail when it stops."""
    stack = Stack(
        bootstrap_servers=bootstrap_servers,
        api_key=uuid.uuid4().hex,
        api_port=free_port(),
        run_dir=run_dir,
        topic_prefix=topic_prefix,
        analyzer_replicas=analyzer_replicas,
        # The tests' sources are on loopback, which the egress policy refuses unless told otherwise.
        extra_env={"LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES": "true", **(extra_env or {})},
    )
    stack.start(ready_timeout=ready_timeout)
    try:
        yield stack
    finally:
        stack.stop()
        for name, _module in stack.instances():
            print(f"--- {name} log tail ---\n{stack.log_tail(name, 15)}")
