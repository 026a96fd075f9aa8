"""Progress display for the cycle: generation, active task, best scores, coverage, rate."""

from __future__ import annotations

import time
from collections.abc import Mapping

from tqdm.auto import tqdm

from mergekit_cycleqd.filing.archive import Archive
from mergekit_cycleqd.search.jobs import JobResult


class RunProgress:
    """A tqdm bar whose postfix shows what a person watching a run wants to see."""

    def __init__(self, tasks: list[str], total: int, initial: int = 0):
        self.tasks = tasks
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc="CycleQD",
            unit="child",
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self.started = time.monotonic()
        self.finished_here = 0
        self.failed = 0

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.bar.close()

    def update(self, archives: Mapping[str, Archive], result: JobResult | None) -> None:
        if result is not None and result.job.role == "child":
            self.bar.update(1)
            self.finished_here += 1
            self.failed += result.status != "ok"
        minutes = max(time.monotonic() - self.started, 1e-9) / 60
        elites = {t: archives[t].best() if t in archives else None for t in self.tasks}
        best = {t: e.quality if e is not None else None for t, e in elites.items()}
        postfix = {
            "gen": f"{self.bar.n}",
            "task": result.job.active_task
            if result is not None and result.job.active_task
            else "-",
        }
        postfix.update({f"best:{t}": f"{v:.3f}" if v is not None else "-" for t, v in best.items()})
        if archives:
            coverage = sum(a.coverage() for a in archives.values()) / len(archives)
            postfix["coverage"] = f"{coverage:.1%}"
        postfix["children/min"] = f"{self.finished_here / minutes:.1f}"
        if self.failed:
            postfix["failed"] = str(self.failed)
        self.bar.set_postfix(postfix, refresh=True)
