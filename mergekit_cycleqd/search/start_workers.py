"""The executor a recipe's ``workers`` section asks for."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_cycleqd.recipe import Recipe
from mergekit_cycleqd.search.executor import Executor, InGenerationOrder, InProcessExecutor
from mergekit_cycleqd.search.worker import Worker

if TYPE_CHECKING:
    from mergekit_cycleqd.search.process_executor import EarlyWorkers


def make_executor(
    recipe: Recipe,
    run_dir: Path,
    base: Path,
    experts: list[Path],
    recipe_text: str,
    lag: int | None,
    early: EarlyWorkers | None = None,
) -> Executor:
    """One worker in this process, ``count`` local worker processes, or ``count`` Ray actors.

    ``lag`` (``workers.order: generation``): results come back in submission order.
    ``early``: local worker processes already started (see ``start_early``).
    """
    workers = recipe.workers
    if workers.executor == "ray":
        from mergekit_cycleqd.search.ray_executor import RayExecutor

        executor: Executor = RayExecutor(recipe, run_dir, base, experts, recipe_text)
    elif workers.count > 1:
        from mergekit_cycleqd.search.process_executor import ProcessExecutor

        executor = ProcessExecutor(
            run_dir, base, experts, recipe_text, workers.count, early, workers.gpus_per_worker
        )
    else:
        return InProcessExecutor(lambda: Worker(recipe, run_dir, base, experts))
    return executor if lag is None else InGenerationOrder(executor)


def start_early(recipe: Recipe) -> EarlyWorkers | None:
    """Start the local worker processes now, if the recipe has any, so that their imports
    overlap what the driver does before the run (checks, building assets)."""
    workers = recipe.workers
    if workers.executor != "local" or workers.count < 2:
        return None
    from mergekit_cycleqd.search.process_executor import EarlyWorkers

    return EarlyWorkers(workers.count, workers.gpus_per_worker)
