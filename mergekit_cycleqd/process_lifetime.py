"""A child process that never outlives the process that started it."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (kill -9
    included), so a worker never outlives the run that started it. Elsewhere a no-op.

    The kernel watches the parent's *thread* that started this process: start
    workers from a thread that lives as long as they should (the main thread)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
