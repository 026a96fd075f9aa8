"""The seeds of a run: the experts (and optionally the base), scored before any child.

A failed seed is not part of the search's history (no child descends from it), so it
is retried on resume, and its failure is usually transient (disk full, an evaluator's
server down); the run says so.
"""

from __future__ import annotations

import logging

from mergekit_cycleqd.errors import RunError
from mergekit_cycleqd.filing.ledger import Ledger
from mergekit_cycleqd.recipe import Recipe
from mergekit_cycleqd.search.jobs import Job

log = logging.getLogger(__name__)


def seed_jobs(recipe: Recipe, ledger: Ledger) -> list[Job]:
    """The seeds still to score: never scored, or failed before (said in the log)."""
    seeds = ledger.children(role="seed", status=None)
    done = {r.name for r in seeds if r.ok}
    failed_before = {r.name: r.error for r in seeds if not r.ok}
    jobs = [
        Job(
            generation=0,
            role="seed",
            name=f"seed:{expert.name}",
            model_stem=f"children/seed-{i}",
            expert_index=i,
        )
        for i, expert in enumerate(recipe.experts)
    ]
    if recipe.search.seed_base:
        jobs.append(
            Job(
                generation=0,
                role="seed",
                name="seed:base",
                model_stem="children/seed-base",
                expert_index=None,
            )
        )
    pending = [job for job in jobs if job.name not in done]
    for job in pending:
        if job.name in failed_before:
            log.warning(
                "%s failed to score before (%s); trying it again", job.name, failed_before[job.name]
            )
    return pending


def check_some_seed_scored(ledger: Ledger) -> None:
    """Refuse to evolve when every seed's latest attempt failed, naming each error."""
    latest = {r.name: r for r in ledger.children(role="seed", status=None)}
    if not any(s.ok for s in latest.values()):
        errors = "; ".join(f"{s.name}: {s.error}" for s in latest.values())
        raise RunError(
            f"every seed model failed to score, nothing to evolve from: {errors}. "
            f"Fix the cause, then continue with --resume (failed seeds are retried)."
        )
