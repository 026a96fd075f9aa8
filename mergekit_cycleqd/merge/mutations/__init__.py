"""CycleQD mutation operators on single tensors (fp32 math), one module per kind.

Kinds (see CYCLEQD.md): ``svd`` (reference-code form, default), ``svd_child`` (paper
form), ``gaussian`` (ablation), ``none``. SVD kinds never touch 1-D tensors or tensors
whose name contains "norm". Randomness: see ``common``.

Adding a kind: write ``mutations/<kind>.py`` defining ``MUTATION = Mutation(...)`` and
add one line to ``MUTATIONS`` below. The recipe schema, the merge method's parameter
check and the breeder all read this table.
"""

from __future__ import annotations

from mergekit_cycleqd.errors import InvalidParameterError
from mergekit_cycleqd.merge.mutations import gaussian, svd, svd_child
from mergekit_cycleqd.merge.mutations.common import (
    is_svd_target,
    low_rank,
    svd_coefficients,
    tensor_generator,
    tensor_seed,
)
from mergekit_cycleqd.merge.mutations.gaussian import mutate_gaussian
from mergekit_cycleqd.merge.mutations.registry import NONE, Mutation
from mergekit_cycleqd.merge.mutations.svd import mutate_svd
from mergekit_cycleqd.merge.mutations.svd_child import mutate_svd_child

MUTATIONS: dict[str, Mutation] = {
    NONE.name: NONE,
    svd.MUTATION.name: svd.MUTATION,
    svd_child.MUTATION.name: svd_child.MUTATION,
    gaussian.MUTATION.name: gaussian.MUTATION,
}
MUTATION_KINDS = tuple(MUTATIONS)


def check_mutation(kind: str, rate: float, std: float = 0.0) -> Mutation:
    """The operator for ``kind``; unknown kinds and negative rates name the offending value."""
    if kind not in MUTATIONS:
        raise InvalidParameterError(f"mutation {kind!r} is not one of {', '.join(MUTATIONS)}")
    if not rate >= 0:
        raise InvalidParameterError(f"mutation_rate must be >= 0; got {rate!r}")
    if not std >= 0:
        raise InvalidParameterError(f"gaussian_std must be >= 0; got {std!r}")
    return MUTATIONS[kind]


__all__ = [
    "MUTATIONS",
    "MUTATION_KINDS",
    "Mutation",
    "check_mutation",
    "is_svd_target",
    "low_rank",
    "mutate_gaussian",
    "mutate_svd",
    "mutate_svd_child",
    "svd_coefficients",
    "tensor_generator",
    "tensor_seed",
]
