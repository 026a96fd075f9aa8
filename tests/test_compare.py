"""mergekit-cycleqd compare, end to end on tiny models with the weight_probe evaluator."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import yaml

from mergekit_cycleqd.cli import main
from mergekit_cycleqd.recipe import parse_recipe
from mergekit_cycleqd.search.loop import CycleQD
from tests.probe_recipe import probe_recipe, write_recipe


def _recipes(family, tmp_path):
    cycleqd = probe_recipe(*family, generations=6)
    cycleqd["name"] = "probe-cycleqd"
    cycleqd["final"] = {"baselines": ["task_arithmetic"], "materialize": False}
    randoms = probe_recipe(*family, generations=6, kind="random", coefficient_range=[0.0, 1.5])
    randoms["name"] = "probe-random"
    randoms["final"] = {"baselines": [], "materialize": False}
    return (
        write_recipe(tmp_path / "cycleqd.yml", cycleqd),
        write_recipe(tmp_path / "random.yml", randoms),
    )


def _children(run_dir):
    with sqlite3.connect(run_dir / "ledger.sqlite") as db:
        return db.execute(
            "SELECT id, generation, role, weights FROM children ORDER BY id"
        ).fetchall()


def _cell(values):
    mean = 100 * np.mean(values)
    error = 100 * np.std(values, ddof=1) / np.sqrt(len(values))
    return f"{mean:.1f} ± {error:.1f}"


def test_compare_runs_every_recipe_and_seed_and_tabulates_them(
    tiny_family, tmp_path, capsys
) -> None:
    first, second = _recipes(tiny_family, tmp_path)
    out = tmp_path / "cmp"
    # an unfinished run of one (recipe, seed) is resumed, not restarted
    partial = CycleQD(
        parse_recipe(
            yaml.safe_dump(
                {
                    **yaml.safe_load(second.read_text()),
                    "search": {**yaml.safe_load(second.read_text())["search"], "seed": 1},
                }
            )
        ),
        out / "runs" / "probe-random" / "seed1",
    )
    partial.run(3)
    partial.close()
    started = _children(out / "runs" / "probe-random" / "seed1")

    assert main(["compare", str(first), str(second), "--seeds", "0", "1", "--out", str(out)]) == 0
    progress = capsys.readouterr().err
    assert "[1/4] probe-cycleqd seed 0: running" in progress
    assert "[4/4] probe-random seed 1: resuming" in progress
    resumed = _children(out / "runs" / "probe-random" / "seed1")
    assert resumed[: len(started)] == started
    assert [c[1] for c in resumed if c[2] == "child"] == list(range(1, 7))

    table = (out / "table.md").read_text()
    results = {
        (name, seed): json.loads(
            (out / "runs" / name / f"seed{seed}" / "final" / "results.json").read_text()
        )
        for name in ("probe-cycleqd", "probe-random")
        for seed in (0, 1)
    }
    tasks = ["t0", "t1", "t2"]
    for name in ("probe-cycleqd", "probe-random"):
        finals = [next(r for r in results[name, s]["rows"] if r["kind"] == "final") for s in (0, 1)]
        cells = [_cell([f["scores"][t] for f in finals]) for t in tasks]
        cells.append(_cell([np.mean([f["scores"][t] for t in tasks]) for f in finals]))
        best_expert = [
            max(
                np.mean([r["scores"][t] for t in tasks])
                for r in results[name, s]["rows"]
                if r["kind"] == "expert"
            )
            for s in (0, 1)
        ]
        beats = sum(
            np.mean([f["scores"][t] for t in tasks]) > b for f, b in zip(finals, best_expert)
        )
        assert f"| {name} | " + " | ".join(cells) + f" | {beats}/2 |" in table
    # reference rows: the experts and the fixed merge, from the first recipe's runs
    for reference in ("expert: t0", "task_arithmetic (mergekit)"):
        rows = [
            next(r for r in results["probe-cycleqd", s]["rows"] if r["name"] == reference)
            for s in (0, 1)
        ]
        assert f"| *{reference}* | " + _cell([r["scores"]["t0"] for r in rows]) in table
    assert (out / "table.png").stat().st_size > 1000

    # a second compare reuses every finished run
    before = {k: _children(out / "runs" / k[0] / f"seed{k[1]}") for k in results}
    assert main(["compare", str(first), str(second), "--seeds", "0", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().err.count(": reused") == 4
    assert {k: _children(out / "runs" / k[0] / f"seed{k[1]}") for k in results} == before
    assert (out / "table.md").read_text() == table


def test_two_recipes_with_one_name_are_refused(tiny_family, tmp_path, capsys) -> None:
    first, _ = _recipes(tiny_family, tmp_path)
    assert (
        main(["compare", str(first), str(first), "--seeds", "0", "--out", str(tmp_path / "x")]) == 2
    )
    assert "probe-cycleqd" in capsys.readouterr().err
