"""``svd`` (reference-code form, the default): add U diag(w * S) Vh of the active expert's task vector.

U S Vh is the cached (possibly top-r) SVD of the active task's expert task vector;
w ~ U[0, rate]^r. Children stay in genome space: the term adds w * S to the genome's
coefficients of that expert.
"""

from __future__ import annotations

import torch

from mergekit_cycleqd.merge.mutations.common import is_svd_target, low_rank, svd_coefficients
from mergekit_cycleqd.merge.mutations.registry import Mutation


def mutate_svd(
    name: str,
    tensor: torch.Tensor,
    factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    rate: float,
    seed: int,
) -> torch.Tensor:
    """Reference-code SVD mutation with the active expert's cached factors (U, S, Vh)."""
    if rate == 0 or factors is None or not is_svd_target(name, tensor.shape):
        return tensor
    u, s, vh = factors
    w = svd_coefficients(name, s.shape[0], rate, seed)
    return tensor + low_rank(u.to(tensor.device), w * s.float(), vh.to(tensor.device))


def _apply(name, tensor, *, base, factors, rate, std, seed):
    return mutate_svd(name, tensor, factors(), rate, seed)


MUTATION = Mutation(name="svd", apply=_apply, stays_in_genome_space=True, needs_factors=True)
