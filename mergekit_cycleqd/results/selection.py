"""Which model a run delivers (``final.select``), chosen without looking at the test split.

* ``aggregate``: the paper's softmax aggregation of the archives' bests (final.py).
* ``best_mean``: the evaluated model (seed or child) with the best mean optimisation
  score. Every evaluated model counts, not only archive elites, so the incumbent of a
  CMA-ES or NSGA-II run is found even where an archive cell kept another model; for
  NSGA-II this is the best mean on the final front (a best-mean model is never dominated).
* ``validated``: re-score on the validation split the aggregate, the best-mean model,
  each archive's best and the top ``final.validate_top`` models by mean optimisation
  score; deliver the best validation mean (ties: the earlier in that order). This
  corrects the optimism of picking the best of hundreds of children on the same items.

The delivered model is the results row of kind ``final``; the aggregate stays a row
(kind ``aggregate``) and every validated candidate is a row (kind ``candidate``). The
ledger's meta ``delivered`` names the chosen model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mergekit_cycleqd.filing.archive import Archive
from mergekit_cycleqd.filing.ledger import ChildRecord
from mergekit_cycleqd.search.worker import build_split_evaluators, score_model

Row = tuple[str, str, ChildRecord]


def mean_score(scores: dict[str, float], tasks: Sequence[str]) -> float:
    return float(np.mean([scores[t] for t in tasks]))


def evaluated_models(run: Any) -> list[ChildRecord]:
    """Every seed and child scored on all tasks of the optimisation split."""
    return [
        r
        for r in run.ledger.children()
        if r.role in ("seed", "child") and all(t in r.scores for t in run.tasks)
    ]


def top_by_mean(records: Sequence[ChildRecord], tasks: Sequence[str], k: int) -> list[ChildRecord]:
    """The k best mean optimisation scores; ties go to the older model (smaller id)."""
    return sorted(records, key=lambda r: (-mean_score(r.scores, tasks), r.id))[:k]


def candidates(
    run: Any, archives: dict[str, Archive], aggregate: ChildRecord | None, top: int
) -> list[tuple[str, ChildRecord]]:
    """The validated selection's candidates, in tie-break order, each model once."""
    models = evaluated_models(run)
    found: list[tuple[str, ChildRecord]] = []
    if aggregate is not None:
        found.append(("aggregate", aggregate))
    found += [("best mean", r) for r in top_by_mean(models, run.tasks, 1)]
    for task in run.tasks:
        best = archives[task].best() if task in archives else None
        if best is not None:
            found.append((f"best {task}", run.ledger.child(best.child_id)))
    found += [
        (f"top {i + 1} by mean", r) for i, r in enumerate(top_by_mean(models, run.tasks, top))
    ]
    seen: set[int] = set()
    unique = []
    for label, record in found:
        if record.id not in seen:
            seen.add(record.id)
            unique.append((label, record))
    return unique


def deliver(
    run: Any, rows: list[Row], *, archives: dict[str, Archive], breeder: Any, backend: Any
) -> list[Row]:
    """The results rows with the delivered model as the row of kind ``final``."""
    select = run.recipe.final_select
    aggregate = next((r for _, kind, r in rows if kind == "final"), None)
    if select == "aggregate":
        if aggregate is not None:
            run.ledger.set_meta(delivered={"select": select, "child_id": aggregate.id})
        return rows
    rows = [
        (("CycleQD aggregate", "aggregate", r) if kind == "final" else (n, kind, r))
        for n, kind, r in rows
    ]
    if select == "best_mean":
        chosen = top_by_mean(evaluated_models(run), run.tasks, 1)[0]
        label = "best mean"
    else:
        scored = _validate(
            run,
            candidates(run, archives, aggregate, run.recipe.final.validate_top),
            breeder,
            backend,
        )
        rows += [(f"candidate: {name} ({r.id})", "candidate", r) for name, r in scored]
        label, chosen = max(
            scored, key=lambda item: mean_score(item[1].validation_scores, run.tasks)
        )
    run.ledger.set_meta(delivered={"select": select, "child_id": chosen.id, "label": label})
    rows.append((f"delivered: {label} ({chosen.id})", "final", chosen))
    if run.recipe.final.materialize:
        out = run.folder.final_dir / "delivered"
        if not (out / "config.json").exists():
            breeder.materialize(breeder.load(run.folder.root / chosen.model_path), out)
    return rows


def _validate(
    run: Any, found: list[tuple[str, ChildRecord]], breeder: Any, backend: Any
) -> list[tuple[str, ChildRecord]]:
    """Score each candidate on the validation split once (scores in the ledger are reused)."""
    evaluators = build_split_evaluators(run.recipe, "validation")
    try:
        scored = []
        for label, record in found:
            missing = {t: e for t, e in evaluators.items() if t not in record.validation_scores}
            if missing:
                backend.load_child(
                    breeder.weights(breeder.load(run.folder.root / record.model_path))
                )
                stem = f"{record.id}-validation"
                run.ledger.add_scores(
                    record.id, score_model(backend, missing, "validation", run.folder.root, stem)
                )
                record = run.ledger.child(record.id)
            scored.append((label, record))
        return scored
    finally:
        for evaluator in evaluators.values():
            evaluator.close()
