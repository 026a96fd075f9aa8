"""The paper's pairwise study: CycleQD on every pair of experts, against their similarity.

``python -m mergekit_cycleqd.results.pairs RECIPE --out DIR [--generations N]`` derives
one two-expert recipe per pair from RECIPE (same base, tasks, backend and search), runs
each (finished runs are reused, interrupted ones resumed), and writes ``DIR/pairs.md``,
``DIR/pairs.json`` and ``DIR/pairs.png``: for each pair the delivered model's test score
on both tasks, each as a share of that task's own expert's score ("kept"), and the
pair's mergeability (``results.similarity``). The paper's claim to check: pairs with
more similar task vectors keep more of their scores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from mergekit_cycleqd.recipe import load_recipe
from mergekit_cycleqd.results.compare import run_one
from mergekit_cycleqd.results.similarity import mergeability


@dataclass(frozen=True)
class PairResult:
    task_a: str
    task_b: str
    similarity: float
    score_a: float
    score_b: float
    expert_a: float
    expert_b: float

    @property
    def mean(self) -> float:
        return (self.score_a + self.score_b) / 2

    @property
    def kept(self) -> float:
        """Mean share of each expert's own test score that the merged model keeps."""
        shares = [s / e for s, e in ((self.score_a, self.expert_a), (self.score_b, self.expert_b))]
        return sum(shares) / 2 if all(e > 0 for e in (self.expert_a, self.expert_b)) else math.nan


def pair_recipe(raw: dict, task_a: str, task_b: str, generations: int | None) -> dict:
    """The two-expert recipe for one pair (a copy; ``raw`` is left unchanged)."""
    pair = yaml.safe_load(yaml.safe_dump(raw))
    keep = {task_a, task_b}
    pair["name"] = f"{raw.get('name', 'cycleqd')}-{task_a}-{task_b}"
    pair["experts"] = [e for e in raw["experts"] if e["task"] in keep]
    pair["tasks"] = [t for t in raw["tasks"] if t["name"] in keep]
    if generations is not None:
        pair.setdefault("search", {})["generations"] = generations
    return pair


def run_pairs(recipe_file: Path, out_dir: Path, generations: int | None = None) -> list[PairResult]:
    """Run (or reuse) every pair's search and collect the table rows."""
    recipe = load_recipe(recipe_file)
    raw = yaml.safe_load(Path(recipe_file).read_text())
    raw.setdefault("vars", {})
    raw["vars"] = {**raw["vars"], "recipe_dir": str(Path(recipe_file).resolve().parent)}
    experts = {e.task: e.path for e in recipe.experts}
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for task_a, task_b in itertools.combinations([t.name for t in recipe.tasks], 2):
        path = out_dir / f"{task_a}-{task_b}.yml"
        path.write_text(
            yaml.safe_dump(pair_recipe(raw, task_a, task_b, generations), sort_keys=False)
        )
        seed = recipe.search.seed
        results = run_one(path, seed, out_dir / f"{task_a}-{task_b}")
        delivered = next(r for r in results["rows"] if r["kind"] == "final")
        own = {r["name"]: r["scores"] for r in results["rows"]}
        rows.append(
            PairResult(
                task_a=task_a,
                task_b=task_b,
                similarity=mergeability(recipe.base_model.path, experts[task_a], experts[task_b]),
                score_a=delivered["scores"][task_a],
                score_b=delivered["scores"][task_b],
                expert_a=own[f"expert: {_expert_name(recipe, task_a)}"][task_a],
                expert_b=own[f"expert: {_expert_name(recipe, task_b)}"][task_b],
            )
        )
    write_table(rows, out_dir)
    return rows


def _expert_name(recipe, task: str) -> str:
    expert = next(e for e in recipe.experts if e.task == task)
    return expert.name or Path(expert.path).name


def write_table(rows: list[PairResult], out_dir: Path) -> None:
    """pairs.md (sorted by similarity), pairs.json and the scatter plot pairs.png."""
    ordered = sorted(rows, key=lambda r: -r.similarity)
    lines = [
        "| expert A | expert B | similarity | score A | score B | mean | kept (share of experts' scores) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ordered:
        lines.append(
            f"| {r.task_a} | {r.task_b} | {r.similarity:.4f} | {100 * r.score_a:.1f} | "
            f"{100 * r.score_b:.1f} | {100 * r.mean:.1f} | {r.kept:.2f} |"
        )
    (out_dir / "pairs.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    payload = [{**asdict(r), "mean": r.mean, "kept": r.kept} for r in ordered]
    (out_dir / "pairs.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    _plot(ordered, out_dir / "pairs.png")


def _plot(rows: list[PairResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 4))
    for r in rows:
        axis.scatter(r.similarity, r.kept, color="tab:blue")
        axis.annotate(
            f"{r.task_a}+{r.task_b}",
            (r.similarity, r.kept),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    axis.set_xlabel("mergeability of the pair (cosine of task-vector singular values)")
    axis.set_ylabel("share of the experts' scores kept")
    axis.set_title("CycleQD on every pair of experts")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mergekit_cycleqd.results.pairs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--generations", type=int, default=None)
    args = parser.parse_args(argv)
    run_pairs(args.recipe, args.out, args.generations)
    print((args.out / "pairs.md").read_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
