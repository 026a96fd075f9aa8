"""QD without cycling (search.cycle: false): one archive, quality = mean, BCs = every task."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mergekit_cycleqd.filing.archive import mean_archive
from mergekit_cycleqd.recipe import parse_recipe
from mergekit_cycleqd.results.final import finish_run
from mergekit_cycleqd.search.loop import CycleQD
from tests.probe_recipe import probe_recipe


def _run(family, run_dir, generations=15, resume=False, **search):
    raw = probe_recipe(*family, generations=15, cycle=False, sampling={"kind": "random"}, **search)
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), run_dir, resume=resume)
    run.run(generations)
    return run


def test_the_mean_archive_keeps_the_best_mean_per_cell_of_all_task_scores() -> None:
    archive = mean_archive(["a", "b"], 2, {"a": (0.0, 1.0), "b": (0.0, 1.0)})
    assert archive.offer(1, {"a": 0.2, "b": 0.4})  # quality 0.3, cell (0, 0)
    assert not archive.offer(2, {"a": 0.4, "b": 0.1})  # same cell, mean 0.25
    assert archive.offer(3, {"a": 0.1, "b": 0.8})  # other cell
    assert archive.offer(4, {"a": 0.45, "b": 0.3})  # same cell, mean 0.375
    assert {c: (e.child_id, e.quality) for c, e in archive.elites.items()} == {
        (0, 0): (4, pytest.approx(0.375)),
        (0, 1): (3, pytest.approx(0.45)),
    }


@pytest.mark.slow
def test_parents_come_from_the_one_mean_archive(tiny_family, tmp_path) -> None:
    run = _run(tiny_family, tmp_path / "run")
    meta = run.ledger.meta()
    archive = mean_archive(run.tasks, int(meta["bins"]), meta["bc_ranges"])
    for record in run.ledger.children(status=None):
        if record.role == "child":
            members = {e.child_id for e in archive.elites.values()}
            assert record.active_task is None
            if len(members) >= 2:
                assert set(record.parents) <= members
        archive.offer(record.id, record.scores)
    assert run.archives["mean"].elites == archive.elites
    for elite in archive.elites.values():
        scores = run.ledger.child(elite.child_id).scores
        assert elite.quality == pytest.approx(np.mean([scores[t] for t in run.tasks]), abs=1e-15)
    # the per-task archives, the final step and the report still work
    results = finish_run(run)
    assert [r.kind for r in results.rows][-1] == "final"
    from mergekit_cycleqd.results.report import write_report

    html, _ = write_report(run.folder.root)
    assert html.exists()
    run.close()


def test_resume_continues_exactly(tiny_family, tmp_path) -> None:
    full = _run(tiny_family, tmp_path / "full")
    expected = [(c.id, c.parents, c.weights) for c in full.ledger.children(status=None)]
    full.close()
    _run(tiny_family, tmp_path / "split", generations=6).close()
    resumed = _run(tiny_family, tmp_path / "split", resume=True)
    assert [(c.id, c.parents, c.weights) for c in resumed.ledger.children(status=None)] == expected
    resumed.close()
