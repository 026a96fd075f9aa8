"""``gaussian``: add N(0, std^2) to every floating tensor (the paper's weaker ablation)."""

from __future__ import annotations

import torch

from mergekit_cycleqd.merge.mutations.common import tensor_generator
from mergekit_cycleqd.merge.mutations.registry import Mutation


def mutate_gaussian(name: str, tensor: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """Add N(0, std^2) noise drawn from the (seed, name) generator."""
    if std == 0 or not tensor.is_floating_point():
        return tensor
    generator = tensor_generator(seed, name)
    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
    return tensor + noise.to(tensor.device) * std


def _apply(name, tensor, *, base, factors, rate, std, seed):
    return mutate_gaussian(name, tensor, std, seed)


MUTATION = Mutation(name="gaussian", apply=_apply, stays_in_genome_space=False)
