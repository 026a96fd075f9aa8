"""Random search: a ~ U[lo, hi]^K, drawn from ``default_rng([seed, g])``.

Stateless: child g's coefficients depend only on the seed and g, so replay has
nothing to rebuild and any number of workers gives the same children.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mergekit_cycleqd.search.coefficients import CoefficientSearch


class RandomSearch(CoefficientSearch):
    def ask(self, generation: int, *, fixed: Sequence[float] | None = None) -> list[float]:
        if fixed is not None:
            return [float(a) for a in fixed]
        rng = np.random.default_rng([self.seed, generation])
        return [float(a) for a in rng.uniform(self.low, self.high, size=len(self.tasks))]

    def tell(self, generation: int, scores: Mapping[str, float] | None) -> None:
        """Nothing to learn."""
