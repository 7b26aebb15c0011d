"""``livestream.service.lower_cpu_priority``: the analyzers' lower CPU priority, in processes of
their own (it changes the calling process). The stack's analyzers running with it is checked on
the metrics test's stack (``tests/test_metrics.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from livestream.service import own_autogroup_nice

AUTOGROUPS = Path("/proc/sys/kernel/sched_autogroup_enabled")

# Starts a thread before and one after the call (numpy's BLAS threads start at import, the
# service's own later), then reports every thread's nice value and the process's autogroup.
PROBE = """
import json, os, threading
from pathlib import Path
from livestream.service import lower_cpu_priority, own_autogroup_nice

release = threading.Event()
before = threading.Thread(target=release.wait)
before.start()
returned = lower_cpu_priority(NICENESS)
after = threading.Thread(target=release.wait)
after.start()

def nice_of(task):
    stat = (task / "stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])

threads = [nice_of(task) for task in Path("/proc/self/task").iterdir()]
release.set()
print(json.dumps({
    "returned": returned,
    "threads": threads,
    "autogroup": own_autogroup_nice(),
}))
"""


def probe(niceness: int, *, own_session: bool) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.replace("NICENESS", str(niceness))],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=own_session,  # as livestream.stack starts every service
        check=True,
    )
    return json.loads(result.stdout)


def autogroups_enabled() -> bool:
    return AUTOGROUPS.exists() and AUTOGROUPS.read_text().strip() == "1"


BASE = os.getpriority(os.PRIO_PROCESS, 0)  # what the probes inherit (0 unless run under `nice`)


def test_a_service_in_its_own_session_lowers_every_thread_and_its_autogroup() -> None:
    report = probe(10, own_session=True)
    lowered = max(BASE, 10)  # lowering only: a process already below keeps its priority
    assert report["returned"] == lowered
    assert report["threads"] == [lowered] * 3  # the main thread, one started before, one after
    if autogroups_enabled():
        # The scheduler shares the cores between autogroups first: without this, the threads'
        # nice values would not count against another service's process.
        assert report["autogroup"] == 10
    else:
        assert report["autogroup"] in (None, 0)


def test_a_process_sharing_its_session_leaves_the_sessions_autogroup_alone() -> None:
    # None where pytest's session has no autogroup of its own (CI's container: the root group).
    shared = own_autogroup_nice()
    report = probe(10, own_session=False)
    assert report["threads"] == [max(BASE, 10)] * 3
    assert report["autogroup"] == shared == own_autogroup_nice()  # the session's other processes keep theirs


def test_zero_changes_nothing() -> None:
    report = probe(0, own_session=True)
    assert report["returned"] == BASE and report["threads"] == [BASE] * 3
    assert report["autogroup"] in (None, 0)  # a new session's autogroup starts at 0


def test_a_process_in_the_root_group_has_no_autogroup_nice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in CI's container: /proc/self/autogroup exists but is empty for a process left in the
    # default, root group; the priority call must neither fail nor invent a value.
    import livestream.service as service

    autogroup = tmp_path / "autogroup"
    monkeypatch.setattr(service, "OWN_AUTOGROUP", autogroup)
    assert service.own_autogroup_nice() is None  # missing: no autogroups in this kernel
    autogroup.write_text("")
    assert service.own_autogroup_nice() is None
    service._lower_autogroup(10)
    assert autogroup.read_text() == ""  # left alone
    autogroup.write_text("/autogroup-42 nice 3\n")
    assert service.own_autogroup_nice() == 3
