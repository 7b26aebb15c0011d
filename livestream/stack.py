"""Run the four services as separate processes against one Kafka cluster, supervised.

Used by ``livestream up`` / ``livestream demo`` and by the end-to-end tests, so what the
tests exercise is exactly what users run: ``python -m ingest|analyzer|aggregator|api``
processes that talk only through Kafka. A ``Supervisor`` (``livestream.processes``) restarts
a service that exits unexpectedly, and the local broker too when the stack is given one;
only a crash loop stops the stack.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from livestream.kafka.broker import LocalKafkaBroker, SupervisedBroker, stable_free_port
from livestream.metrics import metrics_url
from livestream.processes import (
    ChildProcess,
    ChildSpec,
    CrashLoopError,
    ProcessStatus,
    StackError,
    Supervisor,
    SupervisorSettings,
    tail_of,
)

__all__ = ["SERVICES", "CrashLoopError", "Stack", "StackError", "stack_for_tests"]

log = logging.getLogger("livestream.stack")

SERVICES = ("aggregator", "analyzer", "ingest", "api")  # start order; stop runs in reverse
METRICS_HOST = "127.0.0.1"  # the stack's listeners are all on loopback


@dataclass
class Stack:
    bootstrap_servers: str
    api_key: str
    api_port: int
    run_dir: Path
    topic_prefix: str = "livestream"
    analyzer_replicas: int = 1
    # Which of SERVICES run (tests play one of them themselves, e.g. ingest, to write exact records).
    services: tuple[str, ...] = SERVICES
    extra_env: dict[str, str] = field(default_factory=dict)
    # The local broker the caller started, if any: supervised (restarted in place) but stopped
    # by its owner, after the services.
    broker: LocalKafkaBroker | None = None
    supervisor_settings: SupervisorSettings = field(default_factory=SupervisorSettings)
    # Signs playback URLs unless the environment sets LIVESTREAM_API_PLAYBACK_SECRET: one secret
    # per stack, so the URLs survive the supervisor restarting the API process.
    playback_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    # Prometheus listener port of each instance (by instance name, see ``instances``), passed as
    # LIVESTREAM_<SERVICE>_METRICS_PORT on loopback; an instance not named here serves none.
    metrics_ports: dict[str, int] = field(default_factory=dict)
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.supervisor_settings)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def metrics_urls(self) -> dict[str, str]:
        """The ``/metrics`` URL of each instance given a metrics port, by instance name."""
        return {name: metrics_url(METRICS_HOST, port) for name, port in self.metrics_ports.items()}

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """The running service processes by instance name (a restart replaces the entry)."""
        return {
            unit.name: unit.process
            for unit in self.supervisor.units()
            if isinstance(unit, ChildProcess) and unit.process is not None
        }

    @property
    def restarts(self) -> dict[str, int]:
        return self.supervisor.restarts

    def status(self) -> list[ProcessStatus]:
        return self.supervisor.status()

    def status_line(self, statuses: list[ProcessStatus] | None = None) -> str:
        statuses = self.status() if statuses is None else statuses
        return "services: " + ", ".join(status.describe() for status in statuses)

    @property
    def status_file(self) -> Path:
        return self.run_dir / "status.json"

    def write_status(self, statuses: list[ProcessStatus] | None = None) -> None:
        """Write every process's state and restart count to ``status_file`` for monitoring.

        Written to a temporary file and renamed, so a reader never sees half of it.
        """
        snapshot = {
            "updated_at": datetime.now(UTC).isoformat(),
            "processes": [
                {
                    "name": status.name,
                    "state": status.state.value,
                    "restarts": status.restarts,
                    "pid": status.pid,
                    "last_exit_code": status.last_exit_code,
                }
                for status in (self.status() if statuses is None else statuses)
            ],
        }
        partial = self.status_file.with_suffix(".json.partial")
        partial.write_text(json.dumps(snapshot, indent=2) + "\n")
        partial.replace(self.status_file)

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
        env.setdefault("LIVESTREAM_API_PLAYBACK_SECRET", self.playback_secret)
        env.update(self.extra_env)
        return env

    def log_path(self, service: str) -> Path:
        if service == SupervisedBroker.NAME and self.broker is not None:
            return self.broker.log_file
        return self.run_dir / "logs" / f"{service}.log"

    def instances(self) -> list[tuple[str, str]]:
        """(instance name, module) of every process, in start order."""
        named: list[tuple[str, str]] = []
        for service in (name for name in SERVICES if name in self.services):
            if service == "analyzer" and self.analyzer_replicas > 1:
                named += [(f"analyzer-{n}", service) for n in range(1, self.analyzer_replicas + 1)]
            else:
                named.append((service, service))
        return named

    def start(self, *, ready_timeout: float = 90.0) -> None:
        """Start every service under supervision, then wait until the API answers /healthz."""
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        if self.broker is not None:
            self.supervisor.add(SupervisedBroker(self.broker), already_running=True)
        env = self.env()
        analyzer_threads = analyzer_thread_budget(self.analyzer_replicas, env)
        for name, module in self.instances():
            # A restarted analyzer replica keeps its instance id: the spec is fixed here.
            child_env = (
                env | {"LIVESTREAM_ANALYZER_INSTANCE_ID": name} | analyzer_threads
                if module == "analyzer"
                else env
            )
            if name in self.metrics_ports:
                prefix = f"LIVESTREAM_{module.upper()}_METRICS"
                child_env = child_env | {
                    f"{prefix}_PORT": str(self.metrics_ports[name]),
                    f"{prefix}_HOST": METRICS_HOST,
                }
            spec = ChildSpec(name, [sys.executable, "-m", module], child_env, self.log_path(name))
            self.supervisor.add(ChildProcess(spec))
        self.wait_ready(ready_timeout)

    def supervise_in_background(self) -> None:
        """Supervise from a thread until ``stop()``; a crash loop stops the stack (``failure``)."""
        self.supervisor.supervise_in_background()

    @property
    def failure(self) -> StackError | None:
        return self.supervisor.failure

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.supervise()
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise StackError("API not ready in time", url=self.api_url, log=str(self.log_path("api")))

    def supervise(self) -> None:
        """Restart what exited (after its backoff); raise ``CrashLoopError`` only on a crash loop."""
        self.supervisor.supervise()

    # The name before supervision: a dead service no longer raises unless it loops.
    check_alive = supervise

    def log_tail(self, service: str, lines: int = 30) -> str:
        path = self.log_path(service)
        return tail_of(path, lines) if path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every service (API first, so no new sessions start), then wait; kill stragglers."""
        self.supervisor.stop(timeout, keep=(SupervisedBroker.NAME,))

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def analyzer_thread_budget(replicas: int, env: dict[str, str], cores: int | None = None) -> dict[str, str]:
    """The thread rule for several analyzer replicas on one machine: they share its cores.

    Each replica's onnxruntime runs (detector and classifier) get ``cores // replicas`` intra-op
    threads (at least 1) and its JPEG decoding one thread, so N replicas do not oversubscribe
    the cores N times over (each would otherwise take them all). One replica keeps the defaults;
    a value set in the environment is kept as it is.
    """
    if replicas <= 1:
        return {}
    cores = cores or os.cpu_count() or 1
    budget = {
        "LIVESTREAM_ANALYZER_INTRA_OP_THREADS": str(max(1, cores // replicas)),
        "LIVESTREAM_ANALYZER_DECODE_THREADS": "1",
    }
    return {name: value for name, value in budget.items() if name not in env}


@contextlib.contextmanager
def stack_for_tests(
    bootstrap_servers: str,
    topic_prefix: str,
    run_dir: Path,
    *,
    analyzer_replicas: int = 1,
    services: tuple[str, ...] = SERVICES,
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 120.0,
    broker: LocalKafkaBroker | None = None,
    metrics: bool = True,
) -> Iterator[Stack]:
    """A running, supervised stack on a free API port with a generated key.

    With ``metrics`` every instance serves Prometheus metrics on a free loopback port of its own
    (``Stack.metrics_urls``). Prints each log's tail when it stops.
    """
    stack = Stack(
        bootstrap_servers=bootstrap_servers,
        api_key=uuid.uuid4().hex,
        api_port=stable_free_port(),
        run_dir=run_dir,
        topic_prefix=topic_prefix,
        analyzer_replicas=analyzer_replicas,
        services=services,
        # The tests' sources are on loopback, which the egress policy refuses unless told otherwise.
        extra_env={"LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES": "true", **(extra_env or {})},
        broker=broker,
    )
    if metrics:
        names = [name for name, _module in stack.instances()]
        stack.metrics_ports = dict(zip(names, free_ports(len(names), taken={stack.api_port}), strict=True))
    try:
        stack.start(ready_timeout=ready_timeout)
        stack.supervise_in_background()
        yield stack
    except Exception:
        # A crash loop stopped the stack, so the test failed on its consequence (an API gone):
        # the crash loop, with the process's log tail, is what to show.
        if stack.failure is not None:
            raise stack.failure from None
        raise
    finally:
        stack.stop()
        for name, _module in stack.instances():
            print(f"--- {name} log tail ---\n{stack.log_tail(name, 15)}")


def free_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` distinct free loopback ports, none of ``taken``, below the ephemeral range when it
    can (``stable_free_port``): a supervised instance binds its port again at every restart, and
    an ephemeral one can meanwhile be some client's outgoing connection (CI once saw the
    aggregator's metrics port so taken; it crash-looped on "Address already in use")."""
    ports: list[int] = []
    while len(ports) < count:
        ports.append(stable_free_port(exclude=(*taken, *ports)))
    return ports
