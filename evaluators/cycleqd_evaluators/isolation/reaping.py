"""Kill-and-wait, shared by every sandbox: a run is over only when its last process is gone.

Forks can race a single pass of SIGKILL, and a killed PID namespace is torn down
asynchronously, so the sandboxes list their processes again and again until none is
left or the patience runs out.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable


def kill_until_gone(
    list_pids: Callable[[], list[int] | None], deadline: float, interval_s: float = 0.05
) -> list[int]:
    """SIGKILL whatever ``list_pids`` returns until it returns nothing (or None: the
    group is gone) or ``time.monotonic()`` passes ``deadline``; returns the survivors."""
    while True:
        pids = list_pids()
        if not pids:
            return []
        if time.monotonic() > deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(interval_s)
