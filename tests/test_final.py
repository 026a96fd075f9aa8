"""Final models: the softmax aggregation formula, the results table, generalisation rows."""

from __future__ import annotations

import json

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


def test_final_model_is_the_softmax_aggregation_of_the_best_elites(tiny_family, tmp_path) -> None:
    base, experts = tiny_family
    raw = probe_recipe(base, experts, generations=12)
    raw["final"] = {
        "temperature": 0.5,
        "baselines": [],
        "materialize": True,
        "generalisation": [
            {"name": "norm", "evaluator": "norm_probe", "options": {"base": str(base), "reference": str(experts[0])}}
        ],
    }
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), tmp_path / "run")
    run.run()
    results = finish_run(run)
    archives = archives_from_ledger(run.ledger)
    bests = [archives[t].best() for t in run.tasks]
    betas = softmax_weights([b.quality for b in bests], 0.5)
    final = [r for r in run.ledger.children(role="final")][-1]
    assert final.parents == [b.child_id for b in bests]
    np.testing.assert_allclose(final.weights, betas, rtol=1e-12)

    # theta_agg = theta_b + sum_k beta_k * tau(best elite of archive k), materialised elites
    from mergekit_cycleqd.results.run_models import materialize_child

    base_t = _tensors(base)
    expected = {n: t.clone() for n, t in base_t.items()}
    for best, beta in zip(bests, betas):
        elite = _tensors(materialize_child(run.folder.root, best.child_id, tmp_path / f"e{best.child_id}"))
        for name in expected:
            expected[name] += beta * (elite[name] - base_t[name])
    aggregated = _tensors(run.folder.root / "final" / "aggregated")
    for name, tensor in expected.items():
        torch.testing.assert_close(aggregated[name], tensor, rtol=1e-5, atol=1e-6)

    # results table: one row per model, mean = mean of the task scores, test split
    saved = json.loads((run.folder.root / "final" / "results.json").read_text())
    assert [r["name"] for r in saved["rows"]][-1] == "CycleQD final"
    assert saved["rows"][0]["name"] == "base"
    # generalisation: each row's raw score divided by the base model's
    general = saved["generalisation"]
    assert general["tasks"] == ["norm"] and general["rows"][0]["scores"]["norm"] == pytest.approx(1.0)
    for row in results.generalisation:
        record = run.ledger.child(row.child_id)
        base_raw = run.ledger.child(results.generalisation[0].child_id).test_scores["general:norm"]
        assert row.scores["norm"] == pytest.approx(record.test_scores["general:norm"] / base_raw)
    assert "normalised to the base model" in results.markdown()
    run.close()
