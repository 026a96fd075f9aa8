"""The CLI end to end on the probe recipe: run, summary, materialize, elite YAML rebuild."""

from __future__ import annotations

import subprocess
import sys

import torch
from safetensors.torch import load_file

from mergekit_cycleqd.cli import main
from mergekit_cycleqd.filing.ledger import Ledger
from mergekit_cycleqd.results.run_models import run_breeder
from tests.probe_recipe import probe_recipe, write_recipe


def _folder_tensors(folder):
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_run_materialize_and_rebuild_elite(tiny_family, tmp_path, capsys) -> None:
    raw = probe_recipe(*tiny_family, generations=6)
    raw["final"] = {"baselines": ["task_arithmetic"], "materialize": True}
    recipe = write_recipe(tmp_path / "r.yml", raw)
    run_dir = tmp_path / "run"
    assert main([str(recipe), "--out", str(run_dir), "--generations", "5"]) == 0
    out = capsys.readouterr().out
    assert "Generations done: 5 (0 failed)" in out
    assert "| CycleQD final |" in out and "| task_arithmetic (mergekit) |" in out
    assert (run_dir / "final" / "results.json").exists()
    assert (run_dir / "final" / "aggregated" / "config.json").exists()

    # a second plain run into the same folder is refused with instructions
    assert main([str(recipe), "--out", str(run_dir)]) == 2
    assert "--resume" in capsys.readouterr().err

    with Ledger(run_dir / "ledger.sqlite") as ledger:
        child = ledger.children(role="child")[-1]
    elite_yaml = run_dir / "elites" / f"{child.id}.yml"
    if not elite_yaml.exists():  # pick any elite
        elite_yaml = sorted((run_dir / "elites").glob("*.yml"))[0]
    child_id = int(elite_yaml.stem)

    assert main(["materialize", str(run_dir), str(child_id), str(tmp_path / "mat")]) == 0
    materialized = _folder_tensors(tmp_path / "mat")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mergekit_cycleqd.scripts.run_yaml",
            str(elite_yaml),
            str(tmp_path / "yaml"),
        ],
        check=True,
        capture_output=True,
    )
    rebuilt = _folder_tensors(tmp_path / "yaml")
    breeder = run_breeder(run_dir)
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        path = run_dir / ledger.child(child_id).model_path
    expected = dict(breeder.weights(breeder.load(path)).named_tensors())
    breeder.close()
    assert set(materialized) == set(rebuilt) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(materialized[name], tensor), name
        assert torch.equal(rebuilt[name], tensor), name

    assert main(["materialize", str(run_dir), "999", str(tmp_path / "none")]) == 2
    assert "no child with id 999" in capsys.readouterr().err


def test_the_console_script_is_main_then_a_quick_exit() -> None:
    from importlib.metadata import entry_points

    import mergekit_cycleqd.cli as cli

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "mergekit-cycleqd"]
    assert script.load() is cli.entry
    done = subprocess.run(
        [sys.executable, "-m", "mergekit_cycleqd.cli", "check", "missing.yml"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "missing.yml: recipe file not found" in done.stderr
