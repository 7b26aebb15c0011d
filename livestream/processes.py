"""Child processes and their supervisor, shared by the local broker and the service stack.

The supervisor's rules (README, *Supervision*):

* a process that exits while the supervisor is not stopping is restarted after a backoff that
  starts at ``backoff_initial_s`` and doubles per crash up to ``backoff_max_s``; the backoff
  starts over once a process has run ``stable_after_s`` without crashing;
* every exit is logged once, with its exit code and the delay before the restart, and counted
  (``Supervisor.restarts``, ``Supervisor.status()``);
* a process that exits more than ``crash_loop_max`` times within ``crash_loop_window_s`` is a
  crash loop: ``supervise()`` raises ``CrashLoopError`` naming it, with the tail of its log;
* ``stop()`` ends supervision first, so nothing is restarted while (or after) the stack stops.

Nothing here blocks between checks: ``supervise()`` is called periodically (a thread, a loop),
notes exits and performs the restarts whose backoff has run out.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from livestream.errors import LivestreamError

log = logging.getLogger("livestream.supervisor")

LOG_TAIL_LINES = 30


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the thread that started it dies (Linux only).

    So a hard-killed ``livestream`` CLI or test run never leaves a broker or a service behind.
    """
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def tail_of(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<no log at {path}>"
    return "\n".join(text.splitlines()[-lines:])


class StackError(LivestreamError):
    """A supervised process failed to start or died."""


class CrashLoopError(StackError):
    """A supervised process kept crashing: the stack stops instead of restarting it forever."""


class SupervisorSettings(BaseSettings):
    """Restart backoff and crash-loop limits of every process ``livestream up`` supervises."""

    model_config = SettingsConfigDict(env_prefix="LIVESTREAM_SUPERVISOR_", frozen=True, extra="ignore")

    backoff_initial_s: float = Field(default=0.5, gt=0, description="Delay before the first restart.")
    backoff_max_s: float = Field(default=10.0, gt=0, description="Cap of the doubling restart delay.")
    stable_after_s: float = Field(
        default=30.0, gt=0, description="A process up this long without crashing starts its backoff over."
    )
    crash_loop_max: int = Field(
        default=5, ge=1, description="More crashes than this within the window stop the stack."
    )
    crash_loop_window_s: float = Field(default=60.0, gt=0, description="The crash-loop window.")
    interval_s: float = Field(default=0.5, gt=0, description="How often the background supervisor checks.")


class Supervised(Protocol):
    """One restartable thing: a service process, or the local Kafka broker."""

    @property
    def name(self) -> str: ...

    @property
    def returncode(self) -> int | None:
        """The exit code once it exited; None while it runs."""

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None:
        """Start it, or start it again after it exited (blocks until it is started)."""

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM) without waiting."""

    def wait(self, timeout: float) -> None:
        """Wait until it exited; kill it when ``timeout`` runs out."""

    def log_tail(self, lines: int) -> str: ...

    @property
    def log_path(self) -> Path | None: ...


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path


class ChildProcess:
    """A command run with its output appended to a log file, in its own process group."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def log_path(self) -> Path:
        return self.spec.log_path

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spec.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.spec.argv,
                env=self.spec.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own process group: a terminal Ctrl-C reaches only the CLI, which ends the
                # session and then stops the services in order; they still die with it.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def wait(self, timeout: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(max(0.1, timeout))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", self.name)
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail_of(self.spec.log_path, lines)


class ProcessState(StrEnum):
    UP = "up"
    RESTARTING = "restarting"  # exited; waiting out its backoff
    STOPPED = "stopped"


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    state: ProcessState
    restarts: int
    pid: int | None
    last_exit_code: int | None

    def describe(self) -> str:
        text = f"{self.name} {self.state.value}"
        if self.restarts:
            text += f" (restarted {self.restarts}x)"
        return text


@dataclass
class _Watch:
    unit: Supervised
    started_at: float
    restarts: int = 0
    backoff_step: int = 0  # crashes since the unit last ran stably: the backoff's exponent
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    last_exit_code: int | None = None


class Supervisor:
    """Keeps a set of ``Supervised`` units running; see the module docstring for the rules."""

    def __init__(
        self, settings: SupervisorSettings | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or SupervisorSettings()
        self._clock = clock
        self._watches: dict[str, _Watch] = {}
        self._lock = threading.RLock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.failure: StackError | None = None

    # -- the process table

    def add(self, unit: Supervised, *, already_running: bool = False) -> None:
        """Start ``unit`` (unless it already runs) and supervise it from now on."""
        with self._lock:
            if unit.name in self._watches:
                raise StackError(f"{unit.name} is already supervised")
            if not already_running:
                unit.start()
            self._watches[unit.name] = _Watch(unit=unit, started_at=self._clock())

    def unit(self, name: str) -> Supervised:
        return self._watches[name].unit

    def units(self) -> list[Supervised]:
        return [watch.unit for watch in self._watches.values()]

    @property
    def restarts(self) -> dict[str, int]:
        return {name: watch.restarts for name, watch in self._watches.items()}

    def status(self) -> list[ProcessStatus]:
        with self._lock:
            return [self._status(watch) for watch in self._watches.values()]

    def _status(self, watch: _Watch) -> ProcessStatus:
        if self._stopping:
            state = ProcessState.STOPPED
        elif watch.restart_at is not None or watch.unit.returncode is not None:
            state = ProcessState.RESTARTING
        else:
            state = ProcessState.UP
        return ProcessStatus(
            name=watch.unit.name,
            state=state,
            restarts=watch.restarts,
            pid=watch.unit.pid if state is ProcessState.UP else None,
            last_exit_code=watch.last_exit_code,
        )

    # -- supervision

    def supervise(self) -> None:
        """Note exited units, restart those whose backoff ran out; ``CrashLoopError`` on a crash loop."""
        if self.failure is not None:
            raise self.failure
        with self._lock:
            if self._stopping:
                return
            for watch in self._watches.values():
                if self._stopping:  # a restart can block (the broker waits until it is ready)
                    return
                if watch.restart_at is None:
                    code = watch.unit.returncode
                    if code is not None:
                        self._crashed(watch, code)
                elif self._clock() >= watch.restart_at:
                    self._restart(watch)

    def _crashed(self, watch: _Watch, code: int) -> None:
        now = self._clock()
        name, settings = watch.unit.name, self.settings
        watch.last_exit_code = code
        watch.crashes.append(now)
        while watch.crashes and watch.crashes[0] < now - settings.crash_loop_window_s:
            watch.crashes.popleft()
        if len(watch.crashes) > settings.crash_loop_max:
            path = watch.unit.log_path
            self.failure = CrashLoopError(
                f"{name} crashed {len(watch.crashes)} times within {settings.crash_loop_window_s:.0f}s"
                f" (last exit code {code}); stopping the stack. Tail of its log:\n{watch.unit.log_tail(20)}",
                log=None if path is None else str(path),
            )
            raise self.failure
        if now - watch.started_at >= settings.stable_after_s:
            watch.backoff_step = 0
        delay = min(settings.backoff_initial_s * 2**watch.backoff_step, settings.backoff_max_s)
        watch.backoff_step += 1
        watch.restart_at = now + delay
        log.warning(
            "%s exited with code %s; restarting it in %.1fs (restart %d)",
            name,
            code,
            delay,
            watch.restarts + 1,
        )

    def _restart(self, watch: _Watch) -> None:
        watch.restart_at = None
        watch.restarts += 1
        watch.started_at = self._clock()
        try:
            watch.unit.start()
        except (LivestreamError, OSError) as exc:
            # A failed restart counts as one more crash: backoff, and a crash loop if it persists.
            log.warning("restarting %s failed: %s", watch.unit.name, exc)
            self._crashed(watch, -1)
            return
        log.warning("%s restarted (pid %s, restart %d)", watch.unit.name, watch.unit.pid, watch.restarts)

    # -- in the background

    def supervise_in_background(self, on_failure: Callable[[StackError], None] | None = None) -> None:
        """Call ``supervise()`` every ``interval_s`` from a thread until ``stop()``.

        Units restarted by the thread die with it (``die_with_parent``), which only happens
        once ``stop()`` has stopped them anyway.
        """
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stopping:
                try:
                    self.supervise()
                except StackError as exc:
                    log.error("%s", exc)
                    self.stop()
                    if on_failure is not None:
                        on_failure(exc)
                    return
                self._wake.wait(self.settings.interval_s)

        self._thread = threading.Thread(target=loop, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 20.0, *, keep: tuple[str, ...] = ()) -> None:
        """End supervision, then SIGTERM every unit (last started first) and wait; kill stragglers.

        Units named in ``keep`` are left running (their owner stops them).
        """
        self._stopping = True
        self._wake.set()
        with self._lock:  # waits for a supervise() in progress, so no restart races the stop
            units = [unit for unit in reversed(self.units()) if unit.name not in keep]
            for unit in units:
                unit.terminate()
            deadline = self._clock() + timeout
            for unit in units:
                unit.wait(deadline - self._clock())
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
