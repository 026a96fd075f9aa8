"""The segmentation toy: IoU scoring by hand, deterministic domains, the recipe end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from mergekit_cycleqd.evaluate import build_evaluator
from mergekit_cycleqd.toy.segmentation.domains import DOMAINS, draw

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "segmentation.yml"


class ThresholdModel(torch.nn.Module):
    """Predicts foreground where channel 0 > 0.5, at the input resolution."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values):
        fg = (pixel_values[:, 0] > 0.5).float()
        return SimpleNamespace(logits=torch.stack([1 - fg, fg], 1))


def test_iou_matches_a_hand_computation(tmp_path):
    images = np.zeros((3, 3, 4, 4), np.float32)
    masks = np.zeros((3, 4, 4), np.int64)
    images[0, 0, :2, :2] = 1.0  # predicts 4 pixels
    masks[0, :2, :3] = 1  # truth 6 pixels, 4 shared -> IoU 4/6
    masks[1, 0, 0] = 1  # predicts nothing, truth 1 pixel -> 0
    # image 2: both empty -> 1
    np.savez(tmp_path / "d.npz", images=images, masks=masks)
    evaluator = build_evaluator("iou", {"data": str(tmp_path / "d.npz"), "batch_size": 2})
    result = evaluator.evaluate(SimpleNamespace(model=ThresholdModel()))
    assert [s["iou"] for s in result.samples] == pytest.approx([4 / 6, 0.0, 1.0])
    assert result.score == pytest.approx((4 / 6 + 0 + 1) / 3)


def test_iou_refuses_bad_data_with_the_file_named(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 3, 4, 4)))
    evaluator = build_evaluator("iou", {"data": str(tmp_path / "bad.npz")})
    with pytest.raises(ValueError, match=r"bad.npz lacks arrays \['masks'\]"):
        evaluator.evaluate(SimpleNamespace(model=ThresholdModel()))


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_domains_are_deterministic_and_non_trivial(domain):
    images, masks = draw(domain, 8, seed=3, size=32)
    again, masks_again = draw(domain, 8, seed=3, size=32)
    assert np.array_equal(images, again) and np.array_equal(masks, masks_again)
    assert images.shape == (8, 3, 32, 32) and masks.shape == (8, 32, 32)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert 0 < masks.mean() < 0.5  # every domain has foreground, never mostly foreground
    assert not np.array_equal(draw(domain, 8, seed=4, size=32)[1], masks)


@pytest.mark.slow
def test_segmentation_recipe_runs_end_to_end(tmp_path):
    from mergekit_cycleqd.cli import main

    raw = yaml.safe_load(RECIPE.read_text())
    raw["assets"] = {"builder": "segmentation", "dir": str(tmp_path / "assets"), "quick": True}
    raw["search"]["generations"] = 4
    recipe = tmp_path / "seg.yml"
    recipe.write_text(yaml.safe_dump(raw))
    assert main([str(recipe), "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "final" / "results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert set(results["tasks"]) == {"camouflage", "polyp", "lesion", "leaf"}
    assert {"task_arithmetic (mergekit)", "ties (mergekit)"} <= set(rows)
    # the expert fine-tuned on polyps segments polyps better than the base does
    assert rows["expert: polyp"]["scores"]["polyp"] > rows["base"]["scores"]["polyp"]


def test_pairwise_study_reads_every_pair_from_its_own_run(tiny_family, tmp_path):
    """Three experts -> three two-expert runs; the table restates each run's results.json."""
    from mergekit_cycleqd.results.pairs import run_pairs
    from tests.probe_recipe import probe_recipe, write_recipe

    base, experts = tiny_family
    raw = probe_recipe(base, experts, generations=3)
    raw["final"] = {"baselines": [], "materialize": False, "similarity": False}
    recipe = write_recipe(tmp_path / "probe.yml", raw)
    rows = run_pairs(recipe, tmp_path / "pairs")
    assert [(r.task_a, r.task_b) for r in rows] == [("t0", "t1"), ("t0", "t2"), ("t1", "t2")]
    for row in rows:
        results = json.loads(
            (
                tmp_path / "pairs" / f"{row.task_a}-{row.task_b}" / "final" / "results.json"
            ).read_text()
        )
        assert results["tasks"] == [row.task_a, row.task_b]
        final = [r for r in results["rows"] if r["kind"] == "final"][0]
        assert (row.score_a, row.score_b) == (
            final["scores"][row.task_a],
            final["scores"][row.task_b],
        )
        # weight_probe scores an expert 1.0 on its own task, so "kept" is the plain mean
        assert row.kept == pytest.approx((row.score_a + row.score_b) / 2)
        assert -1.0 <= row.similarity <= 1.0
    table = (tmp_path / "pairs" / "pairs.md").read_text().splitlines()
    assert len(table) == 2 + 3 and (tmp_path / "pairs" / "pairs.png").stat().st_size > 0
