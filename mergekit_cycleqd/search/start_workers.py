"""The executor a recipe's ``workers`` section asks for."""

from __future__ import annotations

from pathlib import Path

from mergekit_cycleqd.recipe import Recipe
from mergekit_cycleqd.search.executor import Executor, InGenerationOrder, InProcessExecutor
from mergekit_cycleqd.search.worker import Worker


def make_executor(
    recipe: Recipe,
    run_dir: Path,
    base: Path,
    experts: list[Path],
    recipe_text: str,
    lag: int | None,
) -> Executor:
    """One worker in this process, ``count`` local worker processes, or ``count`` Ray actors.

    ``lag`` (``workers.order: generation``): results come back in submission order.
    """
    workers = recipe.workers
    if workers.executor == "ray":
        from mergekit_cycleqd.search.ray_executor import RayExecutor

        executor: Executor = RayExecutor(recipe, run_dir, base, experts, recipe_text)
    elif workers.count > 1:
        from mergekit_cycleqd.search.process_executor import ProcessExecutor

        executor = ProcessExecutor(run_dir, base, experts, recipe_text, workers.count)
    else:
        return InProcessExecutor(lambda: Worker(recipe, run_dir, base, experts))
    return executor if lag is None else InGenerationOrder(executor)
