"""Genomes: an exact, compact representation of every model a linear CycleQD run makes.

theta = theta_b + sum_k [ a_k tau_k + U_k diag(d_k) Vh_k ]  (per 2-D matrix; other tensors
only the a_k term), with U_k, Vh_k the cached SVD factors of expert k's task vector.
Linear crossover is the same weighted sum on (a, d); the reference-code SVD mutation on
task q adds w * S_q to d_q. A genome therefore stores K scalars plus, per matrix, a [K, r]
block of coefficients: kilobytes to a few MB instead of the full weights.

Coefficients are kept in float64 so that genome arithmetic adds no error of its own;
``d`` is sparse: a matrix absent from ``d`` has all-zero coefficients.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from mergekit_cycleqd.errors import GenomeError
from mergekit_cycleqd.merge.mutations import svd_coefficients
from mergekit_cycleqd.merge.svd_cache import SVDFactors
from mergekit_cycleqd.merge.weights import save_tensors

GENOME_SUFFIX = ".genome.safetensors"
_FORMAT = "cycleqd-genome/1"


@dataclass(frozen=True)
class Genome:
    """Coefficients of one model; ``factor_keys[k]`` names expert k's SVD cache entry."""

    a: torch.Tensor  # [K] float64
    factor_keys: tuple[str, ...]
    rank: int | None = None
    d: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [K, r] float64

    @property
    def num_experts(self) -> int:
        return len(self.factor_keys)

    @classmethod
    def unit(cls, k: int | None, factor_keys: Sequence[str], rank: int | None) -> Genome:
        """Expert k (a = e_k) or, with k None, the base model (a = 0); d = 0."""
        a = torch.zeros(len(factor_keys), dtype=torch.float64)
        if k is not None:
            a[k] = 1.0
        return cls(a=a, factor_keys=tuple(factor_keys), rank=rank)

    def _check_compatible(self, other: Genome) -> None:
        if other.factor_keys != self.factor_keys or other.rank != self.rank:
            raise GenomeError(
                "genomes come from different base/experts or SVD ranks "
                f"(rank {self.rank} vs {other.rank}; experts {self.factor_keys} vs {other.factor_keys})"
            )

    @staticmethod
    def weighted_sum(
        genomes: Sequence[Genome], weights: Sequence[float], normalize: bool
    ) -> Genome:
        """sum_i w_i g_i (divided by sum_i w_i when normalize): crossover and final aggregation."""
        if not genomes or len(genomes) != len(weights):
            raise GenomeError(
                f"need one weight per genome; got {len(genomes)} genomes, {len(weights)} weights"
            )
        first = genomes[0]
        for other in genomes[1:]:
            first._check_compatible(other)
        scale = 1.0
        if normalize:
            total = math.fsum(float(w) for w in weights)
            if total == 0:
                raise GenomeError(
                    f"crossover weights {list(weights)} sum to zero; cannot normalise"
                )
            scale = 1.0 / total
        coefficients = [float(w) * scale for w in weights]
        a = sum(
            (g.a * c for g, c in zip(genomes, coefficients, strict=True)), torch.zeros_like(first.a)
        )
        d: dict[str, torch.Tensor] = {}
        for g, c in zip(genomes, coefficients, strict=True):
            for name, block in g.d.items():
                d[name] = d[name] + block * c if name in d else block * c
        return Genome(a=a, factor_keys=first.factor_keys, rank=first.rank, d=d)

    def mutate_svd(self, task: int, factors: SVDFactors, rate: float, seed: int) -> Genome:
        """Reference-code SVD mutation on task ``task``: d_task += w * S_task per matrix."""
        if not 0 <= task < self.num_experts:
            raise GenomeError(
                f"mutation task {task} is out of range for {self.num_experts} experts"
            )
        if factors.key != self.factor_keys[task]:
            raise GenomeError(
                f"SVD factors {factors.key} are not those of expert {task} ({self.factor_keys[task]})"
            )
        if rate == 0:
            return self
        d = dict(self.d)
        for name in factors.names():
            _, s, _ = factors.require(name)
            w = svd_coefficients(name, s.shape[0], rate, seed)
            block = d.get(name)
            block = (
                torch.zeros(self.num_experts, s.shape[0], dtype=torch.float64)
                if block is None
                else block.clone()
            )
            block[task] += w.double() * s.double()
            d[name] = block
        return Genome(a=self.a.clone(), factor_keys=self.factor_keys, rank=self.rank, d=d)

    def save(self, path: Path | str) -> Path:
        """Write a small safetensors file (``*.genome.safetensors`` recommended)."""
        path = Path(path)
        tensors = {"a": self.a.contiguous()}
        tensors.update({f"d::{name}": block.contiguous() for name, block in self.d.items()})
        metadata = {
            "format": _FORMAT,
            "factor_keys": json.dumps(list(self.factor_keys)),
            "rank": "full" if self.rank is None else str(self.rank),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(tensors, str(path), metadata=metadata)
        _sort_metadata(path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> Genome:
        path = Path(path)
        if not path.is_file():
            raise GenomeError(f"genome file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as error:  # safetensors raises its own opaque types
            raise GenomeError(
                f"genome file {path} is not a readable safetensors file: {error}"
            ) from None
        if metadata.get("format") != _FORMAT or "a" not in tensors:
            raise GenomeError(
                f"file {path} is not a CycleQD genome (format {metadata.get('format')!r})"
            )
        keys = tuple(json.loads(metadata["factor_keys"]))
        rank = None if metadata["rank"] == "full" else int(metadata["rank"])
        d = {key[3:]: value for key, value in tensors.items() if key.startswith("d::")}
        return cls(a=tensors["a"], factor_keys=keys, rank=rank, d=d)


def _sort_metadata(path: Path) -> None:
    """Rewrite the header's metadata keys in sorted order, in place.

    safetensors writes metadata from a hash map, so the same genome saved twice
    differs in bytes; a resumed run must write files identical to an uninterrupted
    one. Only the order changes, so the header keeps its length and the data its offsets.
    """
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        ordered = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items()))}
        ordered.update(header)
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length:  # never: same keys and values, another order
            raise GenomeError(f"{path}: unexpected safetensors header layout")
        handle.seek(8)
        handle.write(text.ljust(length, b" "))
