"""The supervisor: restarts with capped backoff, crash loops, clean stops; the broker restarted in place.

Most tests supervise cheap ``python -c`` children; one restarts a real local Kafka broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from livestream.cli import default_analyzer_replicas, status_key
from livestream.healthcheck import check_http, check_kafka
from livestream.healthcheck import main as healthcheck_main
from livestream.kafka.admin import ensure_topics
from livestream.kafka.broker import (
    EPHEMERAL_PORT_RANGE_FILE,
    LocalKafkaBroker,
    SupervisedBroker,
    free_port,
    stable_free_port,
)
from livestream.processes import (
    ChildProcess,
    ChildSpec,
    CrashLoopError,
    ProcessState,
    Supervisor,
    SupervisorSettings,
)
from livestream.stack import Stack
from schemas.topics import Topics

SLEEPER = "import time; time.sleep(60)"
CRASHER = "import sys; print('boom: the crasher gave up', file=sys.stderr); raise SystemExit(3)"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def child(tmp_path: Path, name: str, code: str) -> ChildProcess:
    argv = [sys.executable, "-c", code]
    return ChildProcess(ChildSpec(name, argv, dict(os.environ), tmp_path / f"{name}.log"))


def settings(**overrides: float) -> SupervisorSettings:
    values: dict[str, float] = {
        "backoff_initial_s": 0.5,
        "backoff_max_s": 2.0,
        "stable_after_s": 30.0,
        "crash_loop_max": 100,
        "crash_loop_window_s": 60.0,
        "interval_s": 0.05,
    }
    return SupervisorSettings(**(values | overrides))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def wait_exited(unit: ChildProcess) -> None:
    wait_until(lambda: unit.returncode is not None)


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    """Every supervisor a test makes is stopped afterwards, so no child outlives its test."""
    made: list[Supervisor] = []
    yield made
    for supervisor in made:
        supervisor.stop(timeout=5)


def test_a_killed_child_is_restarted_after_its_backoff_and_counted(
    tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    clock = FakeClock()
    supervisor = Supervisor(settings(), clock=clock)
    supervisors.append(supervisor)
    sleeper = child(tmp_path, "sleeper", SLEEPER)
    supervisor.add(sleeper)
    first_pid = sleeper.pid
    assert first_pid is not None

    os.kill(first_pid, signal.SIGKILL)
    wait_exited(sleeper)
    supervisor.supervise()  # notes the exit: restart due at 0.5 s
    (status,) = supervisor.status()
    assert (status.state, status.last_exit_code, status.restarts) == (ProcessState.RESTARTING, -9, 0)

    clock.now = 0.49
    supervisor.supervise()
    assert sleeper.returncode == -9, "restarted before its backoff ran out"

    clock.now = 0.5
    supervisor.supervise()
    assert sleeper.returncode is None and sleeper.pid != first_pid
    assert supervisor.restarts == {"sleeper": 1}
    (status,) = supervisor.status()
    assert status.state is ProcessState.UP and status.describe() == "sleeper up (restarted 1x)"


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_stable_run(
    tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    clock = FakeClock()
    backoff = settings(backoff_initial_s=0.5, backoff_max_s=2.0, stable_after_s=30)
    supervisor = Supervisor(backoff, clock=clock)
    supervisors.append(supervisor)
    crasher = child(tmp_path, "crasher", CRASHER)
    supervisor.add(crasher)

    delays = []
    for _ in range(5):
        wait_exited(crasher)
        supervisor.supervise()
        crashed_at = clock.now
        restarts = supervisor.restarts["crasher"]
        while supervisor.restarts["crasher"] == restarts:
            clock.now = round(clock.now + 0.25, 2)
            supervisor.supervise()
        delays.append(clock.now - crashed_at)
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0]

    # The sixth run lasts past stable_after_s before it exits: its backoff is the initial one again.
    wait_exited(crasher)
    clock.now += 30
    supervisor.supervise()
    crashed_at = clock.now
    clock.now += 0.5
    supervisor.supervise()
    assert supervisor.restarts["crasher"] == 6, clock.now - crashed_at


def test_a_child_that_keeps_crashing_stops_supervision_with_its_name_and_log_tail(
    tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    supervisor = Supervisor(settings(backoff_initial_s=0.01, backoff_max_s=0.01, crash_loop_max=2))
    supervisors.append(supervisor)
    supervisor.add(child(tmp_path, "steady", SLEEPER))
    supervisor.add(child(tmp_path, "crasher", CRASHER))

    with pytest.raises(CrashLoopError) as raised:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            supervisor.supervise()
            time.sleep(0.02)
    message = str(raised.value)
    assert "crasher crashed 3 times within 60s (last exit code 3)" in message
    assert "boom: the crasher gave up" in message
    assert str(tmp_path / "crasher.log") in message
    assert supervisor.restarts == {"steady": 0, "crasher": 2}
    # Reported again to whoever asks next, instead of restarting anything.
    with pytest.raises(CrashLoopError):
        supervisor.supervise()


def test_stop_during_a_backoff_restarts_nothing(tmp_path: Path) -> None:
    supervisor = Supervisor(settings(backoff_initial_s=0.2))
    sleeper, other = child(tmp_path, "sleeper", SLEEPER), child(tmp_path, "other", SLEEPER)
    supervisor.add(sleeper)
    supervisor.add(other)
    assert sleeper.pid is not None
    os.kill(sleeper.pid, signal.SIGKILL)
    wait_exited(sleeper)
    supervisor.supervise()  # restart due in 0.2 s

    supervisor.stop(timeout=5)
    time.sleep(0.3)
    supervisor.supervise()
    assert sleeper.returncode == -9 and supervisor.restarts == {"sleeper": 0, "other": 0}
    assert other.returncode == -signal.SIGTERM
    assert {status.state for status in supervisor.status()} == {ProcessState.STOPPED}


def test_background_supervision_restarts_and_stops_cleanly(tmp_path: Path) -> None:
    supervisor = Supervisor(settings(backoff_initial_s=0.05))
    sleeper = child(tmp_path, "sleeper", SLEEPER)
    supervisor.add(sleeper)
    supervisor.supervise_in_background()
    first = sleeper.process
    assert first is not None
    first.send_signal(signal.SIGKILL)
    wait_until(lambda: supervisor.restarts["sleeper"] == 1 and sleeper.returncode is None)
    restarted = sleeper.process
    assert restarted is not None and restarted.pid != first.pid

    supervisor.stop(timeout=5)
    assert restarted.returncode == -signal.SIGTERM
    time.sleep(0.2)
    assert supervisor.restarts["sleeper"] == 1 and sleeper.process is restarted


def test_a_crash_loop_found_in_the_background_stops_every_child(tmp_path: Path) -> None:
    supervisor = Supervisor(settings(backoff_initial_s=0.01, backoff_max_s=0.01, crash_loop_max=1))
    steady = child(tmp_path, "steady", SLEEPER)
    supervisor.add(steady)
    supervisor.add(child(tmp_path, "crasher", CRASHER))
    supervisor.supervise_in_background()
    wait_until(lambda: supervisor.failure is not None and steady.returncode is not None)
    assert "crasher crashed 2 times" in str(supervisor.failure)
    with pytest.raises(CrashLoopError):
        supervisor.supervise()
    supervisor.stop(timeout=5)  # again, as the stack's owner does: harmless


def test_stack_status_line_names_every_process_and_its_restarts(tmp_path: Path) -> None:
    stack = Stack(bootstrap_servers="127.0.0.1:1", api_key="k" * 16, api_port=1, run_dir=tmp_path)
    clock = FakeClock()
    stack.supervisor = Supervisor(settings(), clock=clock)
    try:
        ingest, analyzer = child(tmp_path, "ingest", SLEEPER), child(tmp_path, "analyzer", SLEEPER)
        stack.supervisor.add(ingest)
        stack.supervisor.add(analyzer)
        before = status_key(stack.status())
        for _ in range(2):
            assert analyzer.pid is not None
            os.kill(analyzer.pid, signal.SIGKILL)
            wait_exited(analyzer)
            stack.supervise()
            clock.now += 10
            stack.supervise()
        assert stack.status_line() == "services: ingest up, analyzer up (restarted 2x)"
        assert stack.restarts == {"ingest": 0, "analyzer": 2}
        assert stack.processes["analyzer"].pid == analyzer.pid
        assert status_key(stack.status()) != before
    finally:
        stack.stop(timeout=5)


def test_broker_ports_are_below_the_ephemeral_range() -> None:
    low = int(EPHEMERAL_PORT_RANGE_FILE.read_text().split()[0])
    first = stable_free_port()
    assert first < low
    assert stable_free_port(exclude=(first,)) != first


# --------------------------------------------------------------------------- a real broker


async def _prepare_topic_and_offset(bootstrap: str, topics: Topics, group: str) -> TopicPartition:
    await ensure_topics(bootstrap, topics.specs())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topics.chunks, b"before the crash", key=b"s1")
    finally:
        await producer.stop()
    tp = TopicPartition(topics.chunks, sent.partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(sent.offset + 1, "")})
    finally:
        await consumer.stop()
    return tp


async def _topics_and_committed(
    bootstrap: str, group: str, tp: TopicPartition
) -> tuple[list[str], int | None]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = await admin.list_topics()
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        committed = await consumer.committed(tp)
    finally:
        await consumer.stop()
    return names, committed


@pytest.mark.kafka
def test_a_killed_local_broker_is_restarted_on_its_address_with_its_topics_and_offsets(
    tmp_path: Path,
) -> None:
    topics = Topics(prefix="supervised", partitions=3)
    group = "supervised-group"
    with LocalKafkaBroker(base_dir=tmp_path) as broker:
        bootstrap, work_dir = broker.bootstrap_servers, broker.work_dir
        tp = asyncio.run(_prepare_topic_and_offset(bootstrap, topics, group))

        supervisor = Supervisor(settings(backoff_initial_s=0.05))
        supervisor.add(SupervisedBroker(broker), already_running=True)
        first_pid = broker.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        wait_until(lambda: broker.exit_code is not None)
        deadline = time.monotonic() + 90
        while supervisor.restarts["kafka"] == 0 or not broker.running:
            assert time.monotonic() < deadline, broker.log_file.read_text()[-3000:]
            supervisor.supervise()  # the restart blocks until the broker answers
            time.sleep(0.05)

        assert broker.pid != first_pid and broker.restarts == 1
        assert (broker.bootstrap_servers, broker.work_dir) == (bootstrap, work_dir)
        names, committed = asyncio.run(_topics_and_committed(bootstrap, group, tp))
        assert {spec.name for spec in topics.specs()} <= set(names)
        assert committed == 1
        supervisor.stop(timeout=5, keep=(SupervisedBroker.NAME,))
        assert broker.running, "the broker's owner stops it, not the supervisor"


# --------------------------------------------------------------------------- healthchecks (compose)


@pytest.mark.kafka
def test_kafka_healthcheck_passes_on_a_live_cluster_and_fails_on_a_closed_port(
    kafka_bootstrap: str,
) -> None:
    assert check_kafka(kafka_bootstrap, timeout_s=10) is None
    problem = check_kafka(f"127.0.0.1:{free_port()}", timeout_s=1)
    assert problem is not None and "did not answer" in problem


def test_http_healthcheck_names_the_url_when_nothing_answers() -> None:
    url = f"http://127.0.0.1:{free_port()}/healthz"
    problem = check_http(url, timeout_s=1)
    assert problem is not None and url in problem
    assert healthcheck_main([url, "--timeout", "1"]) == 1


# --------------------------------------------------------------------------- livestream up


def child_pids(pid: int) -> list[int]:
    """The children of ``pid`` (of all its threads: the supervisor thread starts restarts)."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(text) for text in (task / "children").read_text().split()]
    return pids


def service_pid(cli_pid: int, module: str) -> int:
    for pid in child_pids(cli_pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", module.encode()]:
                return pid
    raise AssertionError(f"no {module} process under {cli_pid}")


class Output:
    """A process's stdout, collected line by line in a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        wait_until(lambda: any(text in line for line in self.lines), timeout)

    def text(self) -> str:
        self._thread.join(5)
        return "".join(self.lines)


def up_env(kafka_bootstrap: str, **extra: str) -> dict[str, str]:
    env = dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        LIVESTREAM_TOPIC_PREFIX=f"up{secrets.token_hex(3)}",
        LIVESTREAM_API_KEYS=secrets.token_urlsafe(24),
        LIVESTREAM_SUPERVISOR_BACKOFF_INITIAL_S="0.1",
        LIVESTREAM_SUPERVISOR_INTERVAL_S="0.1",
    )
    return env | extra


@pytest.mark.kafka
@pytest.mark.model
def test_up_restarts_a_killed_service_shows_it_and_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = str(free_port())
    command = [sys.executable, "-m", "livestream", "--run-dir", str(tmp_path), "up", "--port", port]
    env = up_env(kafka_bootstrap, LIVESTREAM_STATUS_INTERVAL_S="600")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(process)
    try:
        # `up` runs as many analyzer replicas as livestream.cli chooses for this machine's cores.
        replicas = default_analyzer_replicas()
        analyzers = ["analyzer"] if replicas == 1 else [f"analyzer-{n}" for n in range(1, replicas + 1)]
        names = ["aggregator", *analyzers, "ingest", "api"]
        output.wait_for("services: " + ", ".join(f"{name} up" for name in names))
        os.kill(service_pid(process.pid, "ingest"), signal.SIGKILL)
        # Printed at once although the status interval is long: the status changed.
        output.wait_for("ingest up (restarted 1x)", timeout=30)
        status = json.loads((tmp_path / "status.json").read_text())
        by_name = {entry["name"]: entry for entry in status["processes"]}
        assert list(by_name) == names
        assert (by_name["ingest"]["restarts"], by_name["ingest"]["last_exit_code"]) == (1, -9)
        assert by_name["ingest"]["state"] == "up" and by_name["api"]["restarts"] == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, output.text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.text()
    assert "ingest exited with code -9; restarting it in 0.1s (restart 1)" in text
    assert "stopping services..." in text


@pytest.mark.kafka
@pytest.mark.model
def test_up_exits_non_zero_naming_a_crash_looping_service(kafka_bootstrap: str, tmp_path: Path) -> None:
    with socket.socket() as taken:  # the API cannot bind its port: it exits at every start
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "livestream", "--run-dir", str(tmp_path), "up", "--port", str(port)],
            env=up_env(kafka_bootstrap, LIVESTREAM_SUPERVISOR_CRASH_LOOP_MAX="1"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: api crashed 2 times within 60s" in done.stderr, done.stderr
    assert "address already in use" in done.stderr.lower(), done.stderr
    assert "stopping services..." in done.stdout
