"""``mergekit-cycleqd compare``: every recipe for every seed, one table over seeds.

Each (recipe, seed) runs in ``OUT/runs/<recipe name>/seed<S>``: a run with a
``final/results.json`` is reused as it is, a run folder without one is resumed, so an
interrupted compare continues where it stopped. The table (``OUT/table.md``, numbers in
``OUT/table.json``, a plot in ``OUT/table.png``) has, per method (recipe), the delivered
model's test score per task and the mean as mean ± standard error over seeds (sample
standard deviation / sqrt(n)), and on how many seeds its mean beats the best expert's
mean of the same run. Experts and fixed merges (task arithmetic, TIES...) are reference
rows, read from the first recipe's runs.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mergekit_cycleqd.errors import CommandError
from mergekit_cycleqd.recipe import load_recipe

log = logging.getLogger(__name__)

REFERENCE_KINDS = ("expert", "baseline")


@dataclass
class Line:
    """One table row: per-seed scores of one model (or method) on every task."""

    name: str
    kind: str  # "method" or a reference kind
    per_seed: list[dict[str, float]]
    beats_best_expert: int | None = None

    def stats(self, task: str) -> tuple[float, float]:
        values = np.array([scores[task] for scores in self.per_seed], dtype=float)
        error = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
        return float(values.mean()), float(error)


def run_one(
    recipe_path: Path,
    seed: int,
    run_dir: Path,
    *,
    generations: int | None = None,
    variables: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The run's results.json, running, resuming or reusing the run folder."""
    results = run_dir / "final" / "results.json"
    if results.exists():
        return json.loads(results.read_text())
    from mergekit_cycleqd.results.final import finish_run
    from mergekit_cycleqd.search.loop import CycleQD

    recipe = load_recipe(recipe_path, variables)
    recipe.search.seed = seed
    if generations is not None:
        recipe.search.generations = generations
    run = CycleQD(recipe, run_dir, resume=(run_dir / "ledger.sqlite").exists())
    try:
        if run.run().interrupted:
            raise KeyboardInterrupt
        finish_run(run)
    finally:
        run.close()
    return json.loads(results.read_text())


def build_lines(runs: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[Line]]:
    """Reference rows (from the first method's runs), then one row per method."""
    first = next(iter(runs.values()))
    tasks = first[0]["tasks"]
    lines = []
    for row in first[0]["rows"]:
        if row["kind"] in REFERENCE_KINDS:
            per_seed = [_row(results, row["name"])["scores"] for results in first]
            lines.append(Line(row["name"], row["kind"], [_with_mean(s, tasks) for s in per_seed]))
    for method, results_list in runs.items():
        delivered = [_final(results, method) for results in results_list]
        beats = sum(
            _mean(row["scores"], tasks)
            > max(_mean(r["scores"], tasks) for r in results["rows"] if r["kind"] == "expert")
            for row, results in zip(delivered, results_list)
        )
        lines.append(
            Line(method, "method", [_with_mean(r["scores"], tasks) for r in delivered], beats)
        )
    return tasks, lines


def _mean(scores: dict[str, float], tasks: Sequence[str]) -> float:
    return float(np.mean([scores[t] for t in tasks]))


def _with_mean(scores: dict[str, float], tasks: Sequence[str]) -> dict[str, float]:
    return {**{t: scores[t] for t in tasks}, "mean": _mean(scores, tasks)}


def _row(results: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in results["rows"] if r["name"] == name)


def _final(results: dict[str, Any], method: str) -> dict[str, Any]:
    finals = [r for r in results["rows"] if r["kind"] == "final"]
    if not finals:
        raise CommandError(
            f"{method}: the run's final/results.json has no delivered (kind final) row"
        )
    return finals[-1]


def markdown(tasks: Sequence[str], lines: Sequence[Line], seeds: Sequence[int], split: str) -> str:
    columns = [*tasks, "mean"]
    out = [
        f"Test scores (x 100) on the {split} split, mean ± standard error over seeds "
        f"{', '.join(map(str, seeds))}; last column: seeds on which the method's delivered "
        "model beats the best expert's mean.",
        "",
        "| model | " + " | ".join(columns) + " | > best expert |",
        "|" + "---|" * (len(columns) + 2),
    ]
    for line in lines:
        cells = []
        for column in columns:
            mean, error = line.stats(column)
            cells.append(f"{100 * mean:.1f}" + ("" if np.isnan(error) else f" ± {100 * error:.1f}"))
        beats = "" if line.beats_best_expert is None else f"{line.beats_best_expert}/{len(seeds)}"
        label = line.name if line.kind == "method" else f"*{line.name}*"
        out.append(f"| {label} | " + " | ".join(cells) + f" | {beats} |")
    return "\n".join(out) + "\n"


def plot(tasks: Sequence[str], lines: Sequence[Line], path: Path) -> None:
    """Grouped bars (one group per task and the mean), error bars = standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [*tasks, "mean"]
    width = 0.8 / len(lines)
    figure, axes = plt.subplots(figsize=(min(14, max(6, 0.3 * len(columns) * len(lines))), 4))
    for i, line in enumerate(lines):
        stats = [line.stats(c) for c in columns]
        axes.bar(
            np.arange(len(columns)) + i * width,
            [100 * m for m, _ in stats],
            width,
            yerr=[0 if np.isnan(e) else 100 * e for _, e in stats],
            label=line.name,
            hatch="//" if line.kind != "method" else None,
            capsize=2,
        )
    axes.set_xticks(np.arange(len(columns)) + 0.4 - width / 2, columns)
    axes.set_ylabel("test score x 100")
    axes.legend(fontsize=7, ncols=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def compare(
    recipes: Sequence[Path],
    seeds: Sequence[int],
    out: Path,
    *,
    generations: int | None = None,
    variables: dict[str, str] | None = None,
) -> str:
    """Run (or reuse) every recipe x seed, write OUT/table.md, table.json, table.png."""
    names = {}
    for path in recipes:
        name = load_recipe(path, variables).name
        if name in names:
            raise CommandError(
                f"{path} and {names[name]} both have name {name!r}; give each recipe its own name"
            )
        names[name] = path
    runs: dict[str, list[dict[str, Any]]] = {}
    total, step = len(names) * len(seeds), 0
    for name, path in names.items():
        runs[name] = []
        for seed in seeds:
            step += 1
            run_dir = out / "runs" / name / f"seed{seed}"
            state = (
                "reused"
                if (run_dir / "final" / "results.json").exists()
                else ("resuming" if (run_dir / "ledger.sqlite").exists() else "running")
            )
            print(
                f"[{step}/{total}] {name} seed {seed}: {state} ({run_dir})",
                file=sys.stderr,
                flush=True,
            )
            runs[name].append(
                run_one(path, seed, run_dir, generations=generations, variables=variables)
            )
    tasks, lines = build_lines(runs)
    split = next(iter(runs.values()))[0].get("split", "test")
    text = markdown(tasks, lines, seeds, split)
    (out / "table.md").write_text(text)
    data = {
        "seeds": list(seeds),
        "tasks": tasks,
        "rows": [
            {
                "name": line.name,
                "kind": line.kind,
                "per_seed": line.per_seed,
                "beats_best_expert": line.beats_best_expert,
            }
            for line in lines
        ],
    }
    (out / "table.json").write_text(json.dumps(data, indent=2))
    plot(tasks, lines, out / "table.png")
    return text
