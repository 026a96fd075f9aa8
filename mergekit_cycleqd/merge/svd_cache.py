"""SVD factors of each expert's task vector, computed once and cached on disk.

The SVD mutation and the genome representation both need U, S, Vh of
tau_k = theta_k - theta_b for every 2-D weight of every expert. Computing them
costs minutes for an 8B model, so they are stored in ``<cache>/svd-<key>.safetensors``
where the key hashes the *content* of the base and expert files and the rank:
a renamed folder reuses its factors, a re-trained expert does not.

With ``rank`` r the factors keep the top-r directions only (a randomized range
finder with a private seeded generator when r is much smaller than the matrix,
so the result is deterministic). Genomes stay exact for that variant, because
mutation only ever acts along the cached directions.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from mergekit_cycleqd.errors import GenomeError, MissingTensorError
from mergekit_cycleqd.merge.modelset import ModelSet, SafetensorsModel
from mergekit_cycleqd.merge.mutations import is_svd_target, tensor_generator
from mergekit_cycleqd.merge.weights import save_tensors

FORMAT_VERSION = "1"
_HASH_BLOCK = 16 * 1024 * 1024


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(model: SafetensorsModel, cache_dir: Path | None = None) -> str:
    """Hash of a model's safetensors content; memoised per (path, size, mtime) in the cache."""
    memo_path = cache_dir / "fingerprints.json" if cache_dir else None
    memo: dict[str, str] = {}
    if memo_path and memo_path.exists():
        try:
            memo = json.loads(memo_path.read_text())
        except json.JSONDecodeError:
            memo = {}
    digest = hashlib.sha256()
    changed = False
    for file in model.files():
        stat = file.stat()
        memo_key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        file_hash = memo.get(memo_key)
        if file_hash is None:
            file_hash = memo[memo_key] = _file_sha256(file)
            changed = True
        digest.update(file.name.encode() + b"\x00" + file_hash.encode())
    if memo_path and changed:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(memo_path, json.dumps(memo, indent=0))
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def factor_key(base_fingerprint: str, expert_fingerprint: str, rank: int | None) -> str:
    """Cache key of one expert's factors: content of base and expert, rank, format."""
    text = f"v{FORMAT_VERSION}|{base_fingerprint}|{expert_fingerprint}|{rank or 'full'}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _randomized_svd(
    matrix: torch.Tensor, rank: int, generator: torch.Generator, oversample: int = 8, iters: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` SVD by a randomized range finder with power iterations (deterministic)."""
    m, n = matrix.shape
    k = min(rank + oversample, m, n)
    omega = torch.randn(n, k, generator=generator, dtype=torch.float32).to(matrix.device)
    sample = matrix @ omega
    for _ in range(iters):
        q, _ = torch.linalg.qr(sample)
        sample = matrix @ (matrix.T @ q)
    q, _ = torch.linalg.qr(sample)
    u_small, s, vh = torch.linalg.svd(q.T @ matrix, full_matrices=False)
    return (q @ u_small)[:, :rank], s[:rank], vh[:rank]


def task_vector_svd(
    name: str, tau: torch.Tensor, rank: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U [m,r], S [r], Vh [r,n] of one task-vector matrix (fp32, on tau's device)."""
    full = min(tau.shape)
    if rank is None or rank >= full:
        return torch.linalg.svd(tau, full_matrices=False)
    if 4 * rank >= full:
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    return _randomized_svd(tau, rank, tensor_generator(0, name))


@dataclass
class SVDFactors:
    """Factors of one expert's task vector: name -> (U, S, Vh), plus identifying keys."""

    key: str
    rank: int | None
    tensors: dict[str, torch.Tensor]
    path: Path | None = None

    def get(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(U, S, Vh) for a tensor, or None when the tensor is not an SVD target."""
        u = self.tensors.get(f"{name}::U")
        if u is None:
            return None
        return u, self.tensors[f"{name}::S"], self.tensors[f"{name}::Vh"]

    def require(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.get(name)
        if found is None:
            raise MissingTensorError(
                f"SVD factors {self.path or self.key} have no entry for tensor {name!r}"
            )
        return found

    def names(self) -> list[str]:
        return [key[: -len("::U")] for key in self.tensors if key.endswith("::U")]

    @classmethod
    def load(cls, path: Path | str) -> SVDFactors:
        path = Path(path)
        if not path.exists():
            raise GenomeError(f"SVD factor file {path} does not exist (was the cache moved?)")
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            meta = handle.metadata() or {}
        rank = meta.get("rank", "full")
        return cls(
            key=meta.get("key", path.stem),
            rank=None if rank == "full" else int(rank),
            tensors=load_file(path),
            path=path,
        )


class SVDCache:
    """Disk + memory cache of SVD factors for the experts of one ModelSet."""

    def __init__(self, cache_dir: Path | str, models: ModelSet, device: str | None = None):
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.models = models
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._memory: dict[tuple[int, int | None], SVDFactors] = {}
        self._fingerprints: list[str] | None = None

    def fingerprints(self) -> list[str]:
        """[base, expert_0, ..., expert_{K-1}] content hashes."""
        if self._fingerprints is None:
            models = [self.models.base, *self.models.experts]
            self._fingerprints = [model_fingerprint(m, self.cache_dir) for m in models]
        return self._fingerprints

    def key(self, expert: int, rank: int | None) -> str:
        prints = self.fingerprints()
        return factor_key(prints[0], prints[expert + 1], rank)

    def path(self, expert: int, rank: int | None) -> Path:
        return self.cache_dir / f"svd-{self.key(expert, rank)}.safetensors"

    def factors(self, expert: int, rank: int | None = None) -> SVDFactors:
        """Factors of expert ``expert``'s task vector, building the cache file if needed."""
        memo = self._memory.get((expert, rank))
        if memo is not None:
            return memo
        path = self.path(expert, rank)
        if not path.exists():
            self._build(expert, rank, path)
        factors = SVDFactors.load(path)
        self._memory[(expert, rank)] = factors
        return factors

    def _build(self, expert: int, rank: int | None, path: Path) -> None:
        base, model = self.models.base, self.models.experts[expert]
        out: dict[str, torch.Tensor] = {}
        for name in self.models.names:
            if not is_svd_target(name, self.models.shape(name)):
                continue
            b = base.tensor(name).to(self.device, torch.float32)
            tau = model.tensor(name).to(self.device, torch.float32) - b
            u, s, vh = task_vector_svd(name, tau, rank)
            out[f"{name}::U"] = u.contiguous().cpu()
            out[f"{name}::S"] = s.contiguous().cpu()
            out[f"{name}::Vh"] = vh.contiguous().cpu()
        metadata = {
            "key": self.key(expert, rank),
            "rank": str(rank or "full"),
            "expert": str(model.folder),
            "format": FORMAT_VERSION,
        }
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
        os.close(fd)
        save_tensors(out, tmp, metadata=metadata)
        os.replace(tmp, path)

    def clear_memory(self) -> None:
        self._memory.clear()
