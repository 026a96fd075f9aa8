"""recipes/toy.yml end to end, shortened: real experts, real lm-eval scoring, final table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mergekit_cycleqd.cli import main
from mergekit_cycleqd.filing.archive import archives_from_ledger
from mergekit_cycleqd.filing.ledger import Ledger

TOY = Path(__file__).resolve().parents[1] / "recipes" / "toy.yml"


@pytest.mark.slow
def test_toy_recipe_runs_end_to_end(tmp_path, capsys) -> None:
    raw = yaml.safe_load(TOY.read_text())
    raw["assets"] = {"builder": "toy", "dir": str(tmp_path / "assets"), "quick": True}
    raw["search"]["generations"] = 6
    recipe = tmp_path / "toy.yml"
    recipe.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"

    assert main([str(recipe), "--out", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "Generations done: 6 (0 failed)" in out

    with Ledger(run_dir / "ledger.sqlite") as ledger:
        seeds = ledger.children(role="seed")
        children = ledger.children(role="child")
        archives = archives_from_ledger(ledger)
        # every expert is the best of the three on its own skill (real generation + lm-eval)
        for seed in seeds:
            skill = seed.name.removeprefix("seed:")
            assert seed.scores[skill] == max(s.scores[skill] for s in seeds)
    assert len(seeds) == 3 and len(children) == 6
    assert all(set(c.scores) == {"shift", "atbash", "rot13"} for c in children)
    assert all(a.elites for a in archives.values())
    assert list((run_dir / "samples").rglob("*.jsonl"))

    results = json.loads((run_dir / "final" / "results.json").read_text())
    names = [row["name"] for row in results["rows"]]
    assert names[:4] == ["base", "expert: shift", "expert: atbash", "expert: rot13"]
    assert "task_arithmetic (mergekit)" in names and "ties (mergekit)" in names
    # the delivered model (final.select: validated) is the one row of kind "final", last
    assert [row["kind"] for row in results["rows"]].count("final") == 1
    assert results["rows"][-1]["kind"] == "final" and names[-1].startswith("delivered: ")
    assert "CycleQD aggregate" in names and any(n.startswith("best-mean elite") for n in names)
    assert results["split"] == "test"
    for row in results["rows"]:
        assert set(row["scores"]) == {"shift", "atbash", "rot13"}
        assert row["mean"] == pytest.approx(sum(row["scores"].values()) / 3)
    assert (run_dir / "final" / "aggregated" / "config.json").exists()
    assert "| delivered: " in out
    assert (run_dir / "report" / "report.html").exists()
