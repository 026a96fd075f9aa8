"""Everything a report shows, read once from a run folder.

The archives' history is rebuilt by replaying the ledger (the same replay the
driver resumes from), so the report can never disagree with the run. Only small
snapshots are kept: one grid per archive every ``frame_every`` filed children.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mergekit_cycleqd.filing.archive import Archive, empty_archives, replay
from mergekit_cycleqd.filing.ledger import ChildRecord, Ledger

# The animation keeps at most this many frames unless asked otherwise: enough to
# see the archives fill, small enough to embed the GIF in the HTML page.
MAX_FRAMES = 48


@dataclass
class Frame:
    """All archives' grids after ``filed`` children (the last of which is ``child_id``)."""

    filed: int
    child_id: int
    generation: int
    grids: dict[str, np.ndarray]


@dataclass
class GenerationStats:
    """Per archive, after the last child of a generation was filed."""

    generation: int
    best: dict[str, float]
    qd_score: dict[str, float]
    coverage: dict[str, float]


@dataclass
class RunData:
    run_dir: Path
    meta: dict[str, Any]
    tasks: list[str]
    records: list[ChildRecord]
    archives: dict[str, Archive]
    frames: list[Frame]
    stats: list[GenerationStats]
    recipe: str
    results: dict[str, Any] | None
    frame_every: int
    failed: list[ChildRecord] = field(default_factory=list)

    @property
    def similarity(self) -> dict[str, Any] | None:
        value = self.meta.get("similarity")
        return value if isinstance(value, dict) and value.get("matrix") else None


def _copy_archives(archives: dict[str, Archive]) -> dict[str, Archive]:
    return {
        task: Archive(a.task, list(a.bc_tasks), a.bins, dict(a.ranges), dict(a.elites))
        for task, a in archives.items()
    }


def load_run(run_dir: Path, frame_every: int | None = None) -> RunData:
    """Read a run folder (ledger, recipe, results) for the report."""
    run_dir = Path(run_dir)
    ledger_path = run_dir / "ledger.sqlite"
    if not ledger_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no ledger.sqlite)")
    with Ledger(ledger_path) as ledger:
        meta = ledger.meta()
        if "tasks" not in meta:
            raise ValueError(f"{ledger_path} has no task list yet; the run never started")
        tasks = list(meta["tasks"])
        records = ledger.children(status="ok")
        failed = ledger.children(status="failed")
        filed_total = sum(
            1 for r in records if r.role in ("seed", "child") and all(t in r.scores for t in tasks)
        )
        every = frame_every or max(1, math.ceil(filed_total / MAX_FRAMES))
        frames: list[Frame] = []
        by_generation: dict[int, GenerationStats] = {}
        archives: dict[str, Archive] = {}
        filed = 0
        for record, current in replay(ledger):
            filed += 1
            archives = current
            by_generation[record.generation] = GenerationStats(
                record.generation,
                best={t: (a.best().quality if a.best() else math.nan) for t, a in current.items()},
                qd_score={t: a.qd_score() for t, a in current.items()},
                coverage={t: a.coverage() for t, a in current.items()},
            )
            if filed % every == 0 or filed == filed_total:
                frames.append(
                    Frame(
                        filed,
                        record.id,
                        record.generation,
                        {t: a.grid().copy() for t, a in current.items()},
                    )
                )
        if archives:
            archives = _copy_archives(archives)
        elif "bc_ranges" in meta:
            archives = empty_archives(tasks, int(meta["bins"]), meta["bc_ranges"])
    recipe_path = run_dir / "recipe.yml"
    recipe = recipe_path.read_text() if recipe_path.is_file() else str(meta.get("recipe", ""))
    results_path = run_dir / "final" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    return RunData(
        run_dir=run_dir,
        meta=meta,
        tasks=tasks,
        records=records,
        archives=archives,
        frames=frames,
        stats=[by_generation[g] for g in sorted(by_generation)],
        recipe=recipe,
        results=results,
        frame_every=every,
        failed=failed,
    )
