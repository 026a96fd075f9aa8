"""CycleQD archives: one grid per task, axes = the other tasks' scores.

Archives are never the source of truth: they are rebuilt by replaying the
ledger in filing order, so a resumed run has exactly the archives an
uninterrupted run would have had.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mergekit_cycleqd.filing.ledger import ChildRecord, Ledger

Cell = tuple[int, ...]


def bin_index(value: float, lo: float, hi: float, bins: int) -> int:
    """Index of the right-closed bin (e_i, e_{i+1}] holding ``value``.

    Edges are ``linspace(lo, hi, bins + 1)``; values at or below ``lo`` go to the
    first bin and values above ``hi`` to the last (clamping).
    """
    inner = np.linspace(lo, hi, bins + 1)[1:-1]
    return int(np.searchsorted(inner, value, side="left"))


def paper_range(expert_scores: Sequence[float]) -> tuple[float, float]:
    """The paper's BC range: 85 % of the weakest expert, 115 % of the strongest, in [0, 1].

    When every expert scores 0 the rule gives an empty range; it is widened to
    [0, 1] so that any improvement still spreads over the bins.
    """
    lo = min(1.0, max(0.0, 0.85 * min(expert_scores)))
    hi = min(1.0, max(0.0, 1.15 * max(expert_scores)))
    if hi <= lo:  # only when every expert scores 0
        hi = 1.0
    return lo, hi


@dataclass(frozen=True)
class Elite:
    child_id: int
    quality: float
    bcs: dict[str, float]


@dataclass
class Archive:
    """Task ``task``'s archive: a grid over ``bc_tasks`` scores, one elite per cell."""

    task: str
    bc_tasks: list[str]
    bins: int
    ranges: dict[str, tuple[float, float]]
    elites: dict[Cell, Elite] = field(default_factory=dict)
    quality_tasks: list[str] | None = None  # quality = their mean score (else: scores[task])

    def cell(self, scores: Mapping[str, float]) -> Cell:
        return tuple(
            bin_index(scores[t], self.ranges[t][0], self.ranges[t][1], self.bins)
            for t in self.bc_tasks
        )

    def offer(self, child_id: int, scores: Mapping[str, float]) -> bool:
        """File a scored child; it replaces the cell's elite only if strictly better."""
        cell = self.cell(scores)
        if self.quality_tasks is None:
            quality = float(scores[self.task])
        else:
            quality = float(np.mean([scores[t] for t in self.quality_tasks]))
        current = self.elites.get(cell)
        if current is not None and not quality > current.quality:
            return False
        self.elites[cell] = Elite(child_id, quality, {t: float(scores[t]) for t in self.bc_tasks})
        return True

    def grid(self) -> np.ndarray:
        """Qualities on a (bins,)*(K-1) grid, NaN where a cell is empty."""
        grid = np.full((self.bins,) * len(self.bc_tasks), np.nan)
        for cell, elite in self.elites.items():
            grid[cell] = elite.quality
        return grid

    def coverage(self) -> float:
        return len(self.elites) / float(self.bins ** len(self.bc_tasks))

    def qd_score(self) -> float:
        return float(sum(e.quality for e in self.elites.values()))

    def best(self) -> Elite | None:
        """The highest-quality elite.

        Ties (common when the expert already scores 1.0) go to the elite with the
        best mean over the other tasks, then to the oldest, for determinism.
        """
        if not self.elites:
            return None

        def rank(e: Elite) -> tuple[float, float, int]:
            others = sum(e.bcs.values()) / len(e.bcs) if e.bcs else 0.0
            return (e.quality, others, -e.child_id)

        return max(self.elites.values(), key=rank)

    def members(self) -> list[Elite]:
        """Elites in a deterministic order (by child id)."""
        return sorted(self.elites.values(), key=lambda e: e.child_id)


def empty_archives(
    tasks: Sequence[str], bins: int, ranges: Mapping[str, Sequence[float]]
) -> dict[str, Archive]:
    resolved = {t: (float(ranges[t][0]), float(ranges[t][1])) for t in tasks}
    return {task: Archive(task, [t for t in tasks if t != task], bins, resolved) for task in tasks}


MEAN_ARCHIVE = "mean"


def mean_archive(tasks: Sequence[str], bins: int, ranges: Mapping[str, Sequence[float]]) -> Archive:
    """QD without cycling: one archive, quality = the mean over all tasks, BCs = every task.

    The quality is the mean because that is what the results table ranks; every task is
    a BC because without cycling no task is privileged, and the grid then keeps the same
    trade-offs between tasks that CycleQD's per-task archives keep between them.
    """
    resolved = {t: (float(ranges[t][0]), float(ranges[t][1])) for t in tasks}
    return Archive(MEAN_ARCHIVE, list(tasks), bins, resolved, quality_tasks=list(tasks))


def offer_to_all(archives: Mapping[str, Archive], record: ChildRecord) -> list[str]:
    """Every evaluated model is offered to every archive (CYCLEQD.md).

    Returns the tasks whose archive took it as an elite.
    """
    return [task for task, a in archives.items() if a.offer(record.id, record.scores)]


def filable(record: ChildRecord, tasks: Sequence[str]) -> bool:
    return record.ok and record.role in ("seed", "child") and all(t in record.scores for t in tasks)


def replay(ledger: Ledger) -> Iterator[tuple[ChildRecord, dict[str, Archive]]]:
    """Yield (record, archives) after each seed/child is filed, in filing order.

    The same archives object is updated in place; copy what you keep.
    """
    meta = ledger.meta()
    tasks = meta["tasks"]
    archives = empty_archives(tasks, int(meta["bins"]), meta["bc_ranges"])
    for record in ledger.children():
        if filable(record, tasks):
            offer_to_all(archives, record)
            yield record, archives


def archives_from_ledger(
    ledger: Ledger, upto: int | None = None, *, with_mean: bool = False
) -> dict[str, Archive]:
    """The archives as they stand after every filed child (of generation <= ``upto``).

    ``with_mean`` adds the archive QD without cycling samples parents from
    (``MEAN_ARCHIVE``: the best mean of all task scores per cell).
    """
    meta = ledger.meta()
    tasks, bins, ranges = meta["tasks"], int(meta["bins"]), meta["bc_ranges"]
    archives = empty_archives(tasks, bins, ranges)
    mean = mean_archive(tasks, bins, ranges) if with_mean else None
    for record in ledger.children():
        if filable(record, tasks) and (upto is None or record.generation <= upto):
            offer_to_all(archives, record)
            if mean is not None:
                mean.offer(record.id, record.scores)
    if mean is not None:
        archives[MEAN_ARCHIVE] = mean
    return archives
