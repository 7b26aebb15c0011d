"""Process entry for the asyncio services: one place that turns a failed start into a clear exit,
and one that lowers a process's CPU priority."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka.errors import KafkaError

from livestream.errors import LivestreamError

log = logging.getLogger(__name__)


def run_service(name: str, main: Callable[[], Awaitable[None]]) -> int:
    """Run ``main`` to completion; exit status 0 on a clean stop, 2 on a known failure.

    Known failures (bad settings, a missing model, an unreachable broker) are logged once,
    here, as one readable line instead of a traceback.
    """
    try:
        asyncio.run(main())  # type: ignore[arg-type]
    except (LivestreamError, KafkaError) as exc:
        logging.getLogger(name).error("%s stopped: %s", name, exc)
        return 2
    return 0


def lower_cpu_priority(niceness: int) -> int:
    """Run this process at ``niceness`` (0-19) or lower priority; returns the calling thread's
    niceness after the call. Lowering priority needs no privilege; what is already lower stays.

    * Every thread it has now (Linux keeps a nice value per thread, and imports such as numpy's
      BLAS start threads before ``main`` runs) and, inherited, every thread it starts later.
    * Its *autogroup*, when the kernel groups by session (``kernel.sched_autogroup_enabled``,
      the default of most distributions) and the session is this process's own (the stack
      starts every service with ``start_new_session``): the scheduler shares the cores between
      autogroups first, so thread nice values alone do nothing against another service's
      process. A process that does not lead its session (started from a shell) leaves the
      shared autogroup alone: lowering it would lower everything else in the session too.
      Services in cgroups of their own (systemd units, containers) are weighted by their
      cgroup's CPU weight instead, which is the deployment's to set.
    """
    if niceness > 0:
        tasks = Path("/proc/self/task")
        threads = [int(entry.name) for entry in tasks.iterdir()] if tasks.is_dir() else [0]
        for thread in threads:
            try:
                if os.getpriority(os.PRIO_PROCESS, thread) < niceness:
                    os.setpriority(os.PRIO_PROCESS, thread, niceness)
            except ProcessLookupError:
                continue  # a thread that ended meanwhile
        if os.getsid(0) == os.getpid() and _autogroups_enabled():
            _lower_autogroup(niceness)
    return os.getpriority(os.PRIO_PROCESS, 0)


AUTOGROUP_ENABLED = Path("/proc/sys/kernel/sched_autogroup_enabled")
OWN_AUTOGROUP = Path("/proc/self/autogroup")  # "/autogroup-123 nice 0"


def own_autogroup_nice() -> int | None:
    """This process's autogroup nice value; None where it has none of its own: the file is
    missing (no autogroups in this kernel) or empty (the kernel prints nothing for a process
    left in the default, root group; pytest's process in CI's container is one)."""
    try:
        fields = OWN_AUTOGROUP.read_text().split()
    except FileNotFoundError:
        return None
    return int(fields[-1]) if fields else None


def _autogroups_enabled() -> bool:
    try:
        return AUTOGROUP_ENABLED.read_text().strip() == "1" and OWN_AUTOGROUP.exists()
    except OSError:
        return False


def _lower_autogroup(niceness: int) -> None:
    # The kernel takes one autogroup change per 100 ms machine-wide (EAGAIN otherwise): two
    # replicas starting together retry. Not applied, the service still runs, at the priority
    # the log line says.
    for _attempt in range(20):
        try:
            current = own_autogroup_nice()
            if current is None:
                log.warning("could not lower this process's autogroup: it has none of its own")
                return
            if current < niceness:
                OWN_AUTOGROUP.write_text(f"{niceness}\n")
            return
        except BlockingIOError:
            time.sleep(0.05)
        except (OSError, ValueError) as exc:
            log.warning("could not lower this process's autogroup to nice %d: %s", niceness, exc)
            return
    log.warning("could not lower this process's autogroup to nice %d: the kernel kept refusing", niceness)
