"""``svd_child`` (paper form): scale the singular values of the child's own task vector.

We read the paper's "replace tau by U diag(w * S) Vh" as scaling each singular value
by (1 + w), w ~ U[0, rate], i.e. add U diag(w * S) Vh: rate 0 leaves the child
unchanged, like every other kind (a literal replacement would collapse the child to
the base at rate 0). One SVD per matrix per child; children are stored as weights.
"""

from __future__ import annotations

import torch

from mergekit_cycleqd.merge.mutations.common import is_svd_target, low_rank, svd_coefficients
from mergekit_cycleqd.merge.mutations.registry import Mutation


def mutate_svd_child(
    name: str, tensor: torch.Tensor, base: torch.Tensor, rate: float, seed: int
) -> torch.Tensor:
    """Paper-form SVD mutation on the child's own task vector (one SVD per matrix)."""
    if rate == 0 or not is_svd_target(name, tensor.shape):
        return tensor
    tau = tensor - base
    u, s, vh = torch.linalg.svd(tau, full_matrices=False)
    w = svd_coefficients(name, s.shape[0], rate, seed)
    return tensor + low_rank(u, w * s, vh)


def _apply(name, tensor, *, base, factors, rate, std, seed):
    return mutate_svd_child(name, tensor, base, rate, seed)


MUTATION = Mutation(name="svd_child", apply=_apply, stays_in_genome_space=False)
