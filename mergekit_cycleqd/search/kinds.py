"""The search kinds (``search.kind``): one module each, one line here.

``cycleqd`` is the loop's own ask (archives, crossover, mutation); the others pick the
experts' merge coefficients (``coefficients.CoefficientSearch``). Adding a kind: write
``search/<kind>.py`` with a ``CoefficientSearch`` subclass, add one line below and the
name to ``SearchConfig.kind`` in the recipe schema (a test checks the two agree).
"""

from __future__ import annotations

import importlib

from mergekit_cycleqd.recipe import Recipe
from mergekit_cycleqd.search.coefficients import CoefficientSearch

SEARCHES: dict[str, str | None] = {
    "cycleqd": None,
    "cma_es": "mergekit_cycleqd.search.cma_es:CmaEsSearch",
    "nsga2": "mergekit_cycleqd.search.nsga2:NSGA2Search",
    "random": "mergekit_cycleqd.search.random_search:RandomSearch",
}


def make_search(recipe: Recipe) -> CoefficientSearch | None:
    """The recipe's coefficient search, or None for CycleQD itself."""
    target = SEARCHES[recipe.search.kind]
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(recipe)
