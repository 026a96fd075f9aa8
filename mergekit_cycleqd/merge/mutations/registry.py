"""The mutation contract: one operator signature and the flag the breeder reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(U, S, Vh) of one expert's task vector for one tensor."""

Apply = Callable[..., torch.Tensor]
"""``apply(name, tensor, *, base, factors, rate, std, seed) -> tensor``: fp32 in, fp32 out.

``factors()`` returns the active expert's (U, S, Vh) for this tensor, or None; it is
called only by operators that declare ``needs_factors``."""


@dataclass(frozen=True)
class Mutation:
    """A mutation kind as the merge method and the breeder see it."""

    name: str
    apply: Apply
    stays_in_genome_space: bool
    """True when a mutated genome child is still a genome (the breeder then stores
    kilobytes instead of weights); False makes the run store children as weights."""
    needs_factors: bool = False
    """True when the operator reads the active expert's cached SVD factors."""


def _identity(name, tensor, *, base, factors, rate, std, seed):
    return tensor


NONE = Mutation(name="none", apply=_identity, stays_in_genome_space=True)
