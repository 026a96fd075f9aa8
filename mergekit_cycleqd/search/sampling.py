"""Parent selection from the active archive (elite sampling or uniform)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from mergekit_cycleqd.filing.archive import Archive, Elite
from mergekit_cycleqd.recipe import SamplingConfig


def _minmax(values: np.ndarray) -> np.ndarray:
    """Min-max normalisation; 1 everywhere when all values are equal."""
    low, high = values.min(), values.max()
    if high == low:
        return np.ones_like(values)
    return (values - low) / (high - low)


def _elite_weights(archive: Archive, members: list[Elite], spec: SamplingConfig) -> np.ndarray:
    """prod_i (a_lo + norm_i(j) * (a_hi - a_lo)) over quality and each BC (paper).

    The reference code's variant uses ``a_lo + norm * a_hi`` and the BCs' bin
    indices instead of raw scores.
    """
    columns = [np.array([e.quality for e in members])]
    for index, task in enumerate(archive.bc_tasks):
        if spec.variant == "reference":
            cells = [archive.cell({**e.bcs, archive.task: e.quality}) for e in members]
            columns.append(np.array([c[index] for c in cells], dtype=float))
        else:
            columns.append(np.array([e.bcs[task] for e in members]))
    span = spec.alpha_high - spec.alpha_low if spec.variant == "paper" else spec.alpha_high
    weights = np.ones(len(members))
    for column in columns:
        weights *= spec.alpha_low + _minmax(column) * span
    return weights


def _uniform_weights(archive: Archive, members: list[Elite], spec: SamplingConfig) -> np.ndarray:
    return np.ones(len(members))


WEIGHTINGS: dict[str, Callable[[Archive, list[Elite], SamplingConfig], np.ndarray]] = {
    "elite": _elite_weights,
    "random": _uniform_weights,
}
"""``search.sampling.kind`` -> unnormalised weight of each elite of the active archive."""


def selection_probabilities(
    archive: Archive, spec: SamplingConfig
) -> tuple[list[Elite], np.ndarray]:
    """Each elite's probability of being drawn first from ``archive``."""
    members = archive.members()
    if not members:
        return members, np.zeros(0)
    weights = WEIGHTINGS[spec.kind](archive, members, spec)
    return members, weights / weights.sum()


def sample_parents(
    archives: Mapping[str, Archive],
    active_task: str,
    spec: SamplingConfig,
    rng: np.random.Generator,
) -> tuple[int, int]:
    """Two distinct parent ids from the active archive.

    When the active archive holds fewer than two elites (early in a run, or when
    the seeds share a cell), the missing parents are drawn uniformly from the
    elites of all archives, so the cycle never stalls.
    """
    members, probabilities = selection_probabilities(archives[active_task], spec)
    if len(members) >= 2:
        first, second = rng.choice(len(members), size=2, replace=False, p=probabilities)
        return members[first].child_id, members[second].child_id
    chosen = [members[0].child_id] if members else []
    pool = sorted({e.child_id for a in archives.values() for e in a.elites.values()} - set(chosen))
    missing = 2 - len(chosen)
    if len(pool) < missing:
        raise RuntimeError(
            "cannot sample two distinct parents: fewer than two models have been scored "
            "successfully so far"
        )
    chosen += [pool[i] for i in rng.choice(len(pool), size=missing, replace=False)]
    return chosen[0], chosen[1]
