"""The shared ask/tell bridge to an optuna sampler (CMA-ES, NSGA-II).

Optuna keeps the optimiser state in an in-memory study; trials are asked in
generation order and told as children are filed. On replay each stored child is asked
again and must come out with the stored coefficients (it does with one worker, whose
asks and tells alternate). Where it does not (several workers interleave asks and
tells differently), the asked trial is dropped as failed and the stored child is added
as a finished trial: the optimiser has seen every evaluation, but may then propose
other points than the uninterrupted run would have.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence

import optuna

from mergekit_cycleqd.recipe import Recipe
from mergekit_cycleqd.search.coefficients import CoefficientSearch

optuna.logging.set_verbosity(optuna.logging.WARNING)


class OptunaSearch(CoefficientSearch):
    """A study whose parameters ``a0..a{K-1}`` are the experts' coefficients."""

    def __init__(self, recipe: Recipe):
        super().__init__(recipe)
        self.study = optuna.create_study(
            sampler=self.sampler(), directions=["maximize"] * self.objectives
        )
        self._pending: dict[int, optuna.trial.Trial] = {}

    objectives = 1

    @abstractmethod
    def sampler(self) -> optuna.samplers.BaseSampler:
        """The optuna sampler, seeded with ``search.seed``."""

    @abstractmethod
    def values(self, scores: Mapping[str, float]) -> list[float]:
        """The objective values told for a child's optimisation scores."""

    def ask(self, generation: int, *, fixed: Sequence[float] | None = None) -> list[float]:
        trial = self._pending.get(generation)
        if trial is None:
            trial = self._pending[generation] = self.study.ask()
        asked = [trial.suggest_float(name, self.low, self.high) for name in self._names]
        if fixed is not None and list(fixed) != asked:
            self._pending[generation] = list(fixed)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return list(fixed)
        return asked

    def tell(self, generation: int, scores: Mapping[str, float] | None) -> None:
        trial = self._pending.pop(generation)
        values = None if scores is None else self.values(scores)
        if isinstance(trial, list):  # a replayed child this optimiser did not propose
            distribution = optuna.distributions.FloatDistribution(self.low, self.high)
            self.study.add_trial(
                optuna.trial.create_trial(
                    params=dict(zip(self._names, trial)),
                    distributions=dict.fromkeys(self._names, distribution),
                    values=values,
                    state=optuna.trial.TrialState.COMPLETE
                    if values
                    else optuna.trial.TrialState.FAIL,
                )
            )
        elif values is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, values)

    @property
    def _names(self) -> list[str]:
        return [f"a{k}" for k in range(len(self.tasks))]
