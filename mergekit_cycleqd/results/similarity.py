"""Model similarity of experts: the CycleQD paper's mergeability score.

For two experts fine-tuned from one base, the score is the mean, over the shared
2-D weight matrices whose names lack "norm", of the cosine between the singular
value vectors of the two task vectors τ_a(W) = W_a − W_base and τ_b(W). Experts
whose task vectors have similar spectra merge well; the report shows the table so
a user can see why some expert pairs resist merging.

Checkpoints of 8B models are about 16 GB each, so tensors are read lazily from
safetensors, one matrix of each model at a time, and each task vector's singular
values are computed once per matrix however many pairs are compared.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open

__all__ = [
    "SafetensorsModel",
    "mergeability",
    "similarity_command",
    "similarity_matrix",
    "format_table",
]


class SafetensorsModel:
    """Lazy, tensor-by-tensor access to a model folder (single file or sharded)."""

    def __init__(self, folder: str | Path, stack: ExitStack):
        self.folder = Path(folder)
        self._stack = stack
        if not self.folder.is_dir():
            raise FileNotFoundError(f"model folder {self.folder} does not exist")
        self._files: dict[str, object] = {}
        self._where: dict[str, str] = {}
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._where = dict(weight_map)
        else:
            shards = sorted(self.folder.glob("*.safetensors"))
            if not shards:
                raise FileNotFoundError(
                    f"{self.folder} holds no *.safetensors file (only safetensors checkpoints "
                    "can be read lazily)"
                )
            for shard in shards:
                handle = self._open(shard.name)
                for name in handle.keys():
                    self._where[name] = shard.name

    def _open(self, filename: str):
        handle = self._files.get(filename)
        if handle is None:
            handle = self._stack.enter_context(
                safe_open(str(self.folder / filename), framework="pt", device="cpu")
            )
            self._files[filename] = handle
        return handle

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        handle = self._open(self._where[name])
        return tuple(handle.get_slice(name).get_shape())

    def tensor(self, name: str) -> torch.Tensor:
        return self._open(self._where[name]).get_tensor(name)


def _label(path: str | Path) -> str:
    return Path(path).name or str(path)


def _matrix_names(base: SafetensorsModel, models: Sequence[SafetensorsModel]) -> list[str]:
    """Shared 2-D weights without "norm" in their name, with equal shapes everywhere."""
    shared = base.names()
    for model in models:
        shared &= model.names()
    names = []
    for name in sorted(shared):
        if "norm" in name:
            continue
        shape = base.shape(name)
        if len(shape) != 2:
            continue
        if any(model.shape(name) != shape for model in models):
            raise ValueError(
                f"tensor {name!r} has different shapes across models; they do not share one "
                "architecture"
            )
        names.append(name)
    if not names:
        raise ValueError("the models share no 2-D weight matrix; nothing to compare")
    return names


def _singular_values(
    base: SafetensorsModel, models: Sequence[SafetensorsModel], device: str
) -> Iterator[list[torch.Tensor | None]]:
    """Per matrix, each model's task-vector singular values (None where τ is zero)."""
    for name in _matrix_names(base, models):
        base_w = base.tensor(name).to(device=device, dtype=torch.float32)
        values: list[torch.Tensor | None] = []
        for model in models:
            tau = model.tensor(name).to(device=device, dtype=torch.float32) - base_w
            if not torch.any(tau):
                values.append(None)
            else:
                values.append(torch.linalg.svdvals(tau.double() if tau.numel() < 1 << 20 else tau))
            del tau
        del base_w
        yield values


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return float((a64 @ b64) / (a64.norm() * b64.norm()))


def similarity_matrix(
    base: str | Path, models: Sequence[str | Path], device: str | None = None
) -> list[list[float]]:
    """Pairwise mergeability of ``models`` (a symmetric matrix, NaN where undefined).

    An entry is NaN when one of the two models never differs from the base (its task
    vector is zero, so its spectrum has no direction); the diagonal is 1 otherwise.
    """
    if not models:
        raise ValueError("give at least one model to compare")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    n = len(models)
    sums = [[0.0] * n for _ in range(n)]
    counts = [[0] * n for _ in range(n)]
    with ExitStack() as stack:
        base_model = SafetensorsModel(base, stack)
        loaded = [SafetensorsModel(m, stack) for m in models]
        for values in _singular_values(base_model, loaded, device):
            for i in range(n):
                for j in range(i, n):
                    if values[i] is None or values[j] is None:
                        continue
                    sums[i][j] += _cosine(values[i], values[j])
                    counts[i][j] += 1
    matrix = [[math.nan] * n for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            if counts[i][j]:
                matrix[i][j] = matrix[j][i] = sums[i][j] / counts[i][j]
    return matrix


def mergeability(base: str | Path, a: str | Path, b: str | Path) -> float:
    """The paper's mergeability score of experts ``a`` and ``b`` fine-tuned from ``base``.

    Mean over the shared 2-D, non-norm weight matrices of cos(σ(τ_a(W)), σ(τ_b(W))),
    counting only matrices where both task vectors are non-zero. Raises ValueError
    when no matrix qualifies (e.g. one model equals the base).
    """
    value = similarity_matrix(base, [a, b])[0][1]
    if math.isnan(value):
        raise ValueError(
            "mergeability is undefined: one of the models is identical to the base in every "
            "2-D weight matrix"
        )
    return value


def format_table(names: Sequence[str], matrix: Sequence[Sequence[float]]) -> str:
    """A fixed-width text table of a square matrix with row and column labels."""
    width = max(8, *(len(n) for n in names))
    header = " " * width + "".join(f"  {n:>{width}}" for n in names)
    lines = [header]
    for name, row in zip(names, matrix, strict=True):
        cells = "".join(
            f"  {'n/a':>{width}}" if math.isnan(v) else f"  {v:>{width}.4f}" for v in row
        )
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


def _unique_labels(models: Sequence[str | Path]) -> list[str]:
    labels = [_label(m) for m in models]
    if len(set(labels)) != len(labels):
        labels = [str(m) for m in models]
    return labels


def similarity_command(base: str, models: list[str]) -> str:
    """CLI body of ``mergekit-cycleqd similarity BASE A B [...]``: the table to print."""
    if len(models) < 2:
        raise ValueError("give at least two models to compare against the base")
    matrix = similarity_matrix(base, models)
    title = f"Mergeability (cosine of task-vector singular values; base: {_label(base)})"
    return title + "\n" + format_table(_unique_labels(models), matrix)
