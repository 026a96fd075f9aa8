"""NSGA-II over the experts' coefficients, one objective per task's optimisation score.

Optuna's ``NSGAIISampler``; ``search.population`` sets its population size (optuna's
default is 50, more than a short run's whole budget: set it in the recipe). The
delivered model is the best mean on the final front, which is the best mean of every
evaluated model (a model with the best mean is never dominated): final.select best_mean.
"""

from __future__ import annotations

from collections.abc import Mapping

import optuna

from mergekit_cycleqd.search.optuna_search import OptunaSearch


class NSGA2Search(OptunaSearch):
    @property
    def objectives(self) -> int:  # type: ignore[override]
        return len(self.tasks)

    def sampler(self) -> optuna.samplers.BaseSampler:
        options = {} if self.population is None else {"population_size": self.population}
        return optuna.samplers.NSGAIISampler(seed=self.seed, **options)

    def values(self, scores: Mapping[str, float]) -> list[float]:
        return [scores[t] for t in self.tasks]
