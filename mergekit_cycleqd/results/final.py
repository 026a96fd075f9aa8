"""Final models and the results table (CYCLEQD.md "Final model", the paper's Table 1).

* CycleQD final: theta_b + sum_k beta_k tau_(best elite of archive k), beta = softmax of
  those elites' qualities / temperature.
* Best-mean elite: the archived model with the highest mean optimisation score.
* Baselines: mergekit's task_arithmetic (weights 1/K: the plain average of task
  vectors) and TIES (weight 1, density 0.5) of the experts, run through mergekit.
Every row is scored on the held-out test split; extra generalisation tasks are
reported normalised to the base model (the paper's Table 3 form).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mergekit_cycleqd.evaluate.base import build_evaluator
from mergekit_cycleqd.filing.archive import Archive, archives_from_ledger
from mergekit_cycleqd.filing.atomic import atomic_path, write_text_atomic
from mergekit_cycleqd.filing.ledger import ChildRecord, ScoreRow
from mergekit_cycleqd.results.baselines import (
    baseline_config,
    complete_model_folder,
    run_baseline_merge,
)
from mergekit_cycleqd.search.progress import StepProgress
from mergekit_cycleqd.search.worker import (
    build_split_evaluators,
    make_backend,
    make_breeder,
    save_atomically,
    score_model,
)

log = logging.getLogger(__name__)

FINAL_NAME = "cycleqd-final"


def softmax_weights(qualities: list[float], temperature: float = 1.0) -> np.ndarray:
    """beta = softmax(q / T), computed stably."""
    scaled = np.asarray(qualities, dtype=float) / temperature
    scaled -= scaled.max()
    weights = np.exp(scaled)
    return weights / weights.sum()


@dataclass
class ResultRow:
    name: str
    kind: str
    child_id: int | None
    scores: dict[str, float]

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.scores.values()))) if self.scores else float("nan")


@dataclass
class Results:
    tasks: list[str]
    rows: list[ResultRow]
    generalisation_tasks: list[str] = field(default_factory=list)
    generalisation: list[ResultRow] = field(default_factory=list)
    split: str = "test"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "split": self.split,
            "tasks": self.tasks,
            "rows": [
                {
                    "name": r.name,
                    "kind": r.kind,
                    "child_id": r.child_id,
                    "scores": r.scores,
                    "mean": r.mean,
                }
                for r in self.rows
            ],
        }
        if self.generalisation_tasks:
            data["generalisation"] = {
                "tasks": self.generalisation_tasks,
                "rows": [{"name": r.name, "scores": r.scores} for r in self.generalisation],
            }
        return data

    def markdown(self) -> str:
        header = "| model | " + " | ".join(self.tasks) + " | mean |"
        lines = [
            f"Results on the {self.split} split (score x 100)",
            "",
            header,
            "|" + "---|" * (len(self.tasks) + 2),
        ]
        for row in self.rows:
            cells = [f"{100 * row.scores.get(t, float('nan')):.1f}" for t in self.tasks]
            lines.append(f"| {row.name} | " + " | ".join(cells) + f" | {100 * row.mean:.1f} |")
        if self.generalisation_tasks:
            lines += [
                "",
                "Generalisation tasks, normalised to the base model (base = 1.00)",
                "",
                "| model | " + " | ".join(self.generalisation_tasks) + " |",
                "|" + "---|" * (len(self.generalisation_tasks) + 1),
            ]
            for row in self.generalisation:
                cells = [
                    f"{row.scores.get(t, float('nan')):.2f}" for t in self.generalisation_tasks
                ]
                lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def best_mean_elite(run, archives: dict[str, Archive]) -> ChildRecord | None:
    """The archived model with the highest mean optimisation score."""
    members = {e.child_id for a in archives.values() for e in a.elites.values()}
    records = [run.ledger.child(i) for i in sorted(members)]
    if not records:
        return None
    return max(records, key=lambda r: (np.mean([r.scores[t] for t in run.tasks]), -r.id))


def aggregation_parents(
    run, archives: dict[str, Archive], temperature: float
) -> tuple[list[ChildRecord], np.ndarray]:
    """The best elite of each archive and their softmax weights."""
    bests = [archives[t].best() for t in run.tasks]
    records = [run.ledger.child(e.child_id) for e in bests if e is not None]
    qualities = [e.quality for e in bests if e is not None]
    return records, softmax_weights(qualities, temperature)


def finish_run(run) -> Results:
    """Build the final models, score every row on the test split, write results."""
    recipe = run.recipe
    folder = run.folder
    breeder = make_breeder(recipe, run.base, run.experts)
    backend = make_backend(recipe, run.base)
    test_evaluators = build_split_evaluators(recipe, "test") if recipe.final.evaluate_test else {}
    general_evaluators = {
        t.name: build_evaluator(t.evaluator, t.split_options("test"))
        for t in recipe.final.generalisation
    }
    progress = StepProgress("final", 2 + len(recipe.final.baselines))
    try:
        rows: list[tuple[str, str, ChildRecord]] = []
        seeds = {r.name: r for r in run.ledger.children(role="seed")}
        progress.step("base model")
        base_record = _ensure_model(
            run, breeder, "base", "baseline", lambda: breeder.base(), "children/base"
        )
        progress.done()
        rows.append(("base", "base", base_record))
        for expert in recipe.experts:
            record = seeds.get(f"seed:{expert.name}")
            if record is not None:
                rows.append((f"expert: {expert.name}", "expert", record))
        for method in recipe.final.baselines:
            progress.step(f"{method} baseline (mergekit)")
            out = folder.final_dir / "baselines" / method
            record = _ensure_model(
                run,
                breeder,
                method,
                "baseline",
                lambda m=method, o=out: breeder.load(
                    run_baseline_merge(baseline_config(m, run.base, run.experts), o)
                ),
                None,
                model_path=str(out.relative_to(folder.root)),
            )
            if not complete_model_folder(out):  # filed, but its folder was damaged since
                run_baseline_merge(baseline_config(method, run.base, run.experts), out)
            rows.append((f"{method} (mergekit)", "baseline", record))
            progress.done()
        archives = archives_from_ledger(run.ledger)
        best = best_mean_elite(run, archives)
        if best is not None:
            rows.append((f"best-mean elite ({best.id})", "elite", best))
        progress.step("CycleQD final model")
        parents, betas = aggregation_parents(run, archives, recipe.final.temperature)
        if parents:
            final = _ensure_model(
                run,
                breeder,
                FINAL_NAME,
                "final",
                lambda: breeder.combine(
                    [breeder.load(folder.root / p.model_path) for p in parents], betas
                ),
                "children/final",
                parents=[p.id for p in parents],
                weights=[float(b) for b in betas],
            )
            rows.append(("CycleQD final", "final", final))
            folder.write_elite_config(breeder, final)
            if recipe.final.materialize:
                out = folder.final_dir / "aggregated"
                if not complete_model_folder(out):
                    with atomic_path(out) as temporary:
                        breeder.materialize(breeder.load(folder.root / final.model_path), temporary)
        progress.done()
        from mergekit_cycleqd.results.selection import deliver

        rows = deliver(run, rows, archives=archives, breeder=breeder, backend=backend)
        progress.add(len(rows))
        results = _score_rows(
            run, breeder, backend, rows, test_evaluators, general_evaluators, progress=progress
        )
    finally:
        progress.close()
        for evaluator in [*test_evaluators.values(), *general_evaluators.values()]:
            evaluator.close()
        backend.close()
        breeder.close()
    if recipe.final.similarity and "similarity" not in run.ledger.meta():
        from mergekit_cycleqd.results.similarity import similarity_matrix

        run.ledger.set_meta(
            similarity={
                "models": [e.name for e in recipe.experts],
                "matrix": similarity_matrix(run.base, run.experts),
            }
        )
    write_text_atomic(folder.final_dir / "results.json", json.dumps(results.to_json(), indent=2))
    write_text_atomic(folder.final_dir / "results.md", results.markdown() + "\n")
    return results


def _ensure_model(
    run: Any,
    breeder: Any,
    name: str,
    role: str,
    build: Callable[[], Any],
    stem: str | None,
    model_path: str | None = None,
    parents: Sequence[int] = (),
    weights: Sequence[float] = (),
) -> ChildRecord:
    """The ledger row of a final/baseline model, building and filing it once (resumable)."""
    existing = [r for r in run.ledger.children(role=role) if r.name == name]
    if existing:
        return existing[-1]
    child = build()
    if model_path is None:
        model_path = save_atomically(breeder, child, run.folder.root, stem)
    child_id = run.ledger.add_child(
        generation=run.ledger.max_generation(),
        role=role,
        name=name,
        status="ok",
        parents=parents,
        weights=weights,
        model_path=model_path,
    )
    return run.ledger.child(child_id)


def _score_rows(
    run: Any,
    breeder: Any,
    backend: Any,
    rows: list[tuple[str, str, ChildRecord]],
    test_evaluators: dict[str, Any],
    general_evaluators: dict[str, Any],
    *,
    progress: StepProgress | None = None,
) -> Results:
    """Score every row on the test split once (scores already in the ledger are reused)."""
    tasks = run.tasks
    scored: list[ResultRow] = []
    general: list[ResultRow] = []
    for label, kind, record in rows:
        if progress is not None:
            progress.step(f"scoring {label}")
        needs_test = [t for t in test_evaluators if t not in record.test_scores]
        needs_general = [t for t in general_evaluators if f"general:{t}" not in record.test_scores]
        if needs_test or needs_general:
            backend.load_child(breeder.weights(breeder.load(run.folder.root / record.model_path)))
            stem = f"{record.id}-test"
            new_rows: list[ScoreRow] = []
            if needs_test:
                new_rows += score_model(
                    backend,
                    {t: test_evaluators[t] for t in needs_test},
                    "test",
                    run.folder.root,
                    stem,
                )
            if needs_general:
                for row in score_model(
                    backend,
                    {t: general_evaluators[t] for t in needs_general},
                    "test",
                    run.folder.root,
                    stem,
                ):
                    row.task = f"general:{row.task}"
                    new_rows.append(row)
            run.ledger.add_scores(record.id, new_rows)
            record = run.ledger.child(record.id)
        source = record.test_scores if test_evaluators else record.scores
        scored.append(
            ResultRow(label, kind, record.id, {t: source[t] for t in tasks if t in source})
        )
        if general_evaluators:
            general.append(
                ResultRow(
                    label,
                    kind,
                    record.id,
                    {t: record.test_scores[f"general:{t}"] for t in general_evaluators},
                )
            )
        if progress is not None:
            progress.done()
    if general:
        base_scores = general[0].scores
        for row in general:
            row.scores = {
                t: (v / base_scores[t] if base_scores[t] > 0 else float("nan"))
                for t, v in row.scores.items()
            }
    return Results(
        tasks,
        scored,
        list(general_evaluators),
        general,
        split="test" if test_evaluators else "opt",
    )
