"""Baseline searches over the experts' merge coefficients (the paper's Table 1 rows).

A child of these searches is theta_b + sum_k a_k tau_k with the coefficients a chosen
by an optimiser (no crossover of archived parents, no mutation). It is filed like any
CycleQD child: one ledger row (parents = the expert seeds, weights = a), offered to every
archive, so the report and the final step work unchanged.

Resume: an optimiser's state is never stored. ``replay`` re-asks and re-tells every
child of the ledger in filing order, pinning each ask to the stored coefficients, so the
optimiser ends in the state the uninterrupted run had (bit for bit with one worker).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from mergekit_cycleqd.filing.ledger import ChildRecord
from mergekit_cycleqd.recipe import Recipe


class CoefficientSearch(ABC):
    """Ask/tell over K coefficients in ``search.coefficient_range``.

    Args:
        recipe: the run's recipe (tasks, ``search.seed``, range, population).
    """

    def __init__(self, recipe: Recipe):
        self.tasks = recipe.task_names
        self.seed = recipe.search.seed
        self.low, self.high = recipe.search.coefficient_range
        self.population = recipe.search.population

    @abstractmethod
    def ask(self, generation: int, *, fixed: Sequence[float] | None = None) -> list[float]:
        """The K coefficients of child ``generation``; ``fixed`` pins them (replay).

        Asking again for a generation not yet told returns the same coefficients.
        """

    @abstractmethod
    def tell(self, generation: int, scores: Mapping[str, float] | None) -> None:
        """The optimisation scores of child ``generation`` (None: it failed)."""

    def replay(self, records: Sequence[ChildRecord]) -> None:
        """Rebuild the optimiser from the ledger's children, in filing order."""
        for record in records:
            self.ask(record.generation, fixed=record.weights)
            self.tell(record.generation, record.scores if record.ok else None)

    def mean(self, scores: Mapping[str, float]) -> float:
        return float(np.mean([scores[t] for t in self.tasks]))
