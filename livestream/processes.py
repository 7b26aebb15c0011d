"""Child-process helpers shared by the local broker and the service stack."""

from __future__ import annotations

import contextlib
import ctypes
import signal


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the thread that started it dies (Linux only).

    So a hard-killed ``livestream`` CLI or test run never leaves a broker or a service behind.
    """
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
