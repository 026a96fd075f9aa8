"""final.select: which model the run delivers (aggregate, best_mean, validated)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import yaml

from mergekit_cycleqd.recipe import RecipeError, parse_recipe
from mergekit_cycleqd.results.final import finish_run
from mergekit_cycleqd.search.loop import CycleQD
from tests.probe_recipe import probe_recipe


def _raw(family, select: str | None, *, test_reference: int | None = None, **search):
    raw = probe_recipe(*family, generations=15, **search)
    for k, task in enumerate(raw["tasks"]):
        task["validation"] = {"power": 2.0}  # validation score = clamp(projection) ** 2
        if test_reference is not None:  # a test split that rewards another expert
            task["test"] = {"reference": str(family[1][(k + test_reference) % 3])}
    raw["final"] = {"baselines": [], "materialize": False, "select": select, "validate_top": 3}
    return raw


def _finish(raw, run_dir):
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), run_dir)
    try:
        run.run()
        finish_run(run)
        delivered = run.ledger.meta()["delivered"]
    finally:
        run.close()
    return json.loads((run_dir / "final" / "results.json").read_text()), delivered


def _split_scores(run_dir, split):
    """child id -> {task: score} read straight from the ledger file."""
    with sqlite3.connect(run_dir / "ledger.sqlite") as db:
        rows = db.execute("SELECT child_id, task, score FROM scores WHERE split=?", (split,))
        found: dict[int, dict[str, float]] = {}
        for child_id, task, score in rows:
            found.setdefault(child_id, {})[task] = score
        roles = dict(db.execute("SELECT id, role FROM children"))
    return found, roles


def test_best_mean_delivers_the_best_mean_optimisation_score(tiny_family, tmp_path) -> None:
    results, delivered = _finish(_raw(tiny_family, "best_mean"), tmp_path / "run")
    opt, roles = _split_scores(tmp_path / "run", "opt")
    evaluated = {i: s for i, s in opt.items() if roles[i] in ("seed", "child")}
    best = max(sorted(evaluated), key=lambda i: np.mean(list(evaluated[i].values())))
    finals = [r for r in results["rows"] if r["kind"] == "final"]
    assert len(finals) == 1 and finals[0]["child_id"] == best == delivered["child_id"]
    assert [r["name"] for r in results["rows"] if r["kind"] == "aggregate"] == ["CycleQD aggregate"]


def test_validated_delivers_the_best_validation_mean_of_the_candidates(
    tiny_family, tmp_path
) -> None:
    results, delivered = _finish(_raw(tiny_family, "validated"), tmp_path / "run")
    validation, _ = _split_scores(tmp_path / "run", "validation")
    opt, _ = _split_scores(tmp_path / "run", "opt")
    candidates = [r["child_id"] for r in results["rows"] if r["kind"] == "candidate"]
    aggregate = next(r["child_id"] for r in results["rows"] if r["kind"] == "aggregate")
    assert candidates[0] == aggregate and set(candidates) == set(validation)
    assert 3 <= len(candidates) <= 1 + 1 + 3 + 3
    for child_id in candidates:  # really scored on the validation split (power 2)
        if child_id in opt:
            for task, score in opt[child_id].items():
                assert validation[child_id][task] == pytest.approx(score**2, abs=1e-12)
    means = {i: np.mean(list(validation[i].values())) for i in candidates}
    best = max(candidates, key=lambda i: (means[i], -candidates.index(i)))
    assert delivered == {"select": "validated", "child_id": best, "label": delivered["label"]}
    assert [r["child_id"] for r in results["rows"] if r["kind"] == "final"] == [best]


def test_the_test_split_never_changes_the_choice(tiny_family, tmp_path) -> None:
    for select in ("best_mean", "validated"):
        _, first = _finish(_raw(tiny_family, select), tmp_path / f"{select}-a")
        _, second = _finish(_raw(tiny_family, select, test_reference=1), tmp_path / f"{select}-b")
        assert first == second


def test_aggregate_is_the_default_for_cycleqd_and_best_mean_for_the_baselines(tiny_family) -> None:
    raw = _raw(tiny_family, None)
    assert parse_recipe(yaml.safe_dump(raw)).final_select == "aggregate"
    raw["search"]["kind"] = "random"
    assert parse_recipe(yaml.safe_dump(raw)).final_select == "best_mean"


def test_validated_without_a_validation_split_names_the_tasks(tiny_family) -> None:
    raw = _raw(tiny_family, "validated")
    del raw["tasks"][1]["validation"]
    with pytest.raises(RecipeError, match=r"validation.*\['t1'\]"):
        parse_recipe(yaml.safe_dump(raw))
