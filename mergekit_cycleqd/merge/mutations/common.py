"""What every mutation shares: per-tensor generators, the SVD target rule, low-rank products.

Every random draw comes from a generator seeded by (mutation seed, tensor name),
never from torch's global state, so a merge gives the same child whatever order
tensors are processed in, and whatever else seeded the global RNG (mergekit's
``random_seed`` reseeds it at every call).
"""

from __future__ import annotations

import hashlib

import torch


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from (seed, tensor name), stable across processes."""
    digest = hashlib.sha256(f"{int(seed)}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator private to one (seed, tensor) pair."""
    return torch.Generator(device="cpu").manual_seed(tensor_seed(seed, name))


def is_svd_target(name: str, shape: tuple[int, ...] | torch.Size) -> bool:
    """SVD mutation acts on 2-D weights whose name has no "norm"."""
    return len(shape) == 2 and "norm" not in name


def svd_coefficients(name: str, rank: int, rate: float, seed: int) -> torch.Tensor:
    """w ~ U[0, rate]^rank for one tensor (fp32), the draw shared by weight and genome space."""
    generator = tensor_generator(seed, name)
    return torch.rand(rank, generator=generator, dtype=torch.float32) * rate


def low_rank(u: torch.Tensor, coefficients: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """U diag(c) Vh, computed as (U * c) @ Vh."""
    return (u * coefficients.to(u.dtype)) @ vh
