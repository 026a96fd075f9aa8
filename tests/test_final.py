"""Final models: the softmax aggregation formula, the results table, generalisation rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from mergekit_cycleqd.evaluate.base import register_evaluator
from mergekit_cycleqd.filing.archive import archives_from_ledger
from mergekit_cycleqd.merge.modelset import SafetensorsModel
from mergekit_cycleqd.recipe import parse_recipe
from mergekit_cycleqd.results.final import finish_run, softmax_weights
from mergekit_cycleqd.search.loop import CycleQD
from tests.probe_recipe import probe_recipe

register_evaluator("norm_probe", "tests.flaky_evaluator:NormProbe")


def test_softmax_weights_formula() -> None:
    q = [0.2, 0.5, 0.9]
    for temperature in (1.0, 0.1):
        expected = np.exp(np.array(q) / temperature) / np.exp(np.array(q) / temperature).sum()
        np.testing.assert_allclose(softmax_weights(q, temperature), expected, rtol=1e-12)


def _tensors(path):
    model = SafetensorsModel(path)
    return {n: model.tensor(n).double() for n in model.names}


def _ledger(run_dir):
    """(ids of filed seeds/children in filing order, opt scores, test scores) via plain SQL."""
    import sqlite3

    with sqlite3.connect(run_dir / "ledger.sqlite") as db:
        rows = [
            i
            for (i,) in db.execute(
                "SELECT id FROM children WHERE role IN ('seed', 'child') AND status = 'ok' "
                "ORDER BY id"
            )
        ]
        scores = db.execute("SELECT child_id, task, split, score FROM scores").fetchall()
    opt: dict[int, dict[str, float]] = {}
    test: dict[int, dict[str, float]] = {}
    for child_id, task, split, score in scores:
        (opt if split == "opt" else test).setdefault(child_id, {})[task] = score
    return rows, opt, test


def _right_closed_bin(value: float, bounds, bins: int) -> int:
    """Bin i holds (lo + i*w, lo + (i+1)*w]; values outside are clamped."""
    lo, hi = bounds
    width = (hi - lo) / bins
    return min(bins - 1, max(0, math.ceil((value - lo) / width) - 1))


def test_final_model_is_the_softmax_aggregation_of_the_best_elites(tiny_family, tmp_path) -> None:
    base, experts = tiny_family
    raw = probe_recipe(base, experts, generations=12)
    raw["final"] = {
        "temperature": 0.5,
        "baselines": [],
        "materialize": True,
        "generalisation": [
            {
                "name": "norm",
                "evaluator": "norm_probe",
                "options": {"base": str(base), "reference": str(experts[0])},
            }
        ],
    }
    for task in raw["tasks"]:
        task["test"] = {"power": 2.0}  # the test split scores the square: differs from opt
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), tmp_path / "run")
    run.run()
    results = finish_run(run)
    archives = archives_from_ledger(run.ledger)
    bests = [archives[t].best() for t in run.tasks]

    # expected parents, from the ledger rows alone: per task the highest opt score; ties
    # go to the best mean over the other tasks, then to the oldest. Only a model that
    # entered its cell first at that quality is an elite (cells: right-closed bins).
    rows, opt, _ = _ledger(run.folder.root)
    meta = run.ledger.meta()
    expected_parents = []
    for task in run.tasks:
        others = [t for t in run.tasks if t != task]
        top = max(opt[i][task] for i in rows)
        elites, seen_cells = [], set()
        for i in rows:  # filing order
            cell = tuple(_right_closed_bin(opt[i][t], meta["bc_ranges"][t], 5) for t in others)
            if opt[i][task] == top and cell not in seen_cells:
                elites.append(i)
            if opt[i][task] == top:
                seen_cells.add(cell)
        expected_parents.append(
            max(elites, key=lambda i: (sum(opt[i][t] for t in others) / len(others), -i))
        )
    final = [r for r in run.ledger.children(role="final")][-1]
    assert final.parents == expected_parents
    qualities = np.array([opt[i][t] for i, t in zip(expected_parents, run.tasks)])
    betas = np.exp(qualities / 0.5) / np.exp(qualities / 0.5).sum()
    np.testing.assert_allclose(final.weights, betas, rtol=1e-12)

    # theta_agg = theta_b + sum_k beta_k * tau(best elite of archive k), materialised elites
    from mergekit_cycleqd.results.run_models import materialize_child

    base_t = _tensors(base)
    expected = {n: t.clone() for n, t in base_t.items()}
    for best, beta in zip(bests, betas):
        elite = _tensors(
            materialize_child(run.folder.root, best.child_id, tmp_path / f"e{best.child_id}")
        )
        for name in expected:
            expected[name] += beta * (elite[name] - base_t[name])
    aggregated = _tensors(run.folder.root / "final" / "aggregated")
    for name, tensor in expected.items():
        torch.testing.assert_close(aggregated[name], tensor, rtol=1e-5, atol=1e-6)

    # results table: one row per model, its test-split scores and their mean over tasks
    saved = json.loads((run.folder.root / "final" / "results.json").read_text())
    assert [r["name"] for r in saved["rows"]][-1] == "CycleQD final"
    assert saved["rows"][0]["name"] == "base"
    assert saved["split"] == "test"
    _, opt, test = _ledger(run.folder.root)
    for row in saved["rows"]:
        expected = {t: test[row["child_id"]][t] for t in run.tasks}
        assert row["scores"] == expected
        assert row["mean"] == pytest.approx(sum(expected.values()) / len(expected), abs=1e-12)
        for t, score in opt.get(row["child_id"], {}).items():  # searched models only
            assert expected[t] == pytest.approx(score**2, abs=1e-9)  # power 2 on the test split
    assert any(test[i][t] != opt[i][t] for i in opt if i in test for t in run.tasks)
    # generalisation: each row's raw score divided by the base model's
    general = saved["generalisation"]
    assert general["tasks"] == ["norm"] and general["rows"][0]["scores"]["norm"] == pytest.approx(
        1.0
    )
    for row in results.generalisation:
        record = run.ledger.child(row.child_id)
        base_raw = run.ledger.child(results.generalisation[0].child_id).test_scores["general:norm"]
        assert row.scores["norm"] == pytest.approx(record.test_scores["general:norm"] / base_raw)
    assert "normalised to the base model" in results.markdown()
    run.close()
