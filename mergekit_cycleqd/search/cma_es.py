"""CMA-ES over the experts' coefficients, maximising the mean optimisation score.

Optuna's ``CmaEsSampler`` (the ``cmaes`` library underneath) with optuna's start: the
centre of ``search.coefficient_range`` (a_k = 0.5 on [0, 1]), sigma0 = (hi - lo) / 6;
``search.population`` sets its population size (default 4 + 3 ln K). Optuna samples the
first trial uniformly, before CMA-ES knows the search space.
"""

from __future__ import annotations

from collections.abc import Mapping

import optuna

from mergekit_cycleqd.search.optuna_search import OptunaSearch


class CmaEsSearch(OptunaSearch):
    def sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.CmaEsSampler(popsize=self.population, seed=self.seed)

    def values(self, scores: Mapping[str, float]) -> list[float]:
        return [self.mean(scores)]
