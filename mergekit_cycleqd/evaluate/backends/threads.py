"""The CPU thread count of a worker, chosen rather than inherited.

torch starts with one intra-op thread per core. With several workers on one
machine, or any other process busy on a core, an OpenMP region waits for its
slowest thread, and a workload of many small operations (a tiny model's forward
passes, the block-wise genome swap) ran 3-180x slower with 2 threads than with 1
on a 2-core machine, for identical results. So each worker sets its count once,
at start: ``backend.options.threads``, or the cores it may use divided by the
workers that share them.
"""

from __future__ import annotations

import os

import torch

from mergekit_cycleqd.errors import RecipeError


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def choose_threads(requested: int | None, *, local_workers: int = 1) -> int:
    """``requested`` if given, else ``usable_cores() // local_workers`` (at least 1)."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise RecipeError(
                f"backend.options.threads: must be a whole number of at least 1 (got {requested!r}); "
                "leave it out to use the cores divided by the local workers"
            )
        return requested
    return max(1, usable_cores() // max(1, local_workers))


def apply_threads(threads: int) -> int:
    """Set torch's (and so MKL/OpenMP's) intra-op thread count for this process.

    ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` are set too, for processes this
    worker starts. Returns ``threads``.
    """
    torch.set_num_threads(threads)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    return threads
