"""Memory-mapped, zero-copy access to the tensors of base and expert model folders.

A driver builds hundreds of children from the same base and experts: their
tensors are mapped once (copy-on-write pages, read lazily by the OS) and never
copied per child. Loading also validates that base and experts really are one
architecture with identical tensor names and shapes, before any merge starts.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mergekit_cycleqd.errors import (
    ArchitectureMismatchError,
    MissingTensorError,
    ShapeMismatchError,
)

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

# config.json fields that must agree between base and experts (shape-defining ones).
_ARCH_FIELDS = (
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "tie_word_embeddings",
)


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return header, 8 + length


class SafetensorsModel:
    """One model folder's safetensors shards, mapped lazily and read without copying."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"model folder {self.folder} does not exist")
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise MissingTensorError(
                f"model {self.folder} has no *.safetensors file "
                "(convert it with transformers' save_pretrained(safe_serialization=True))"
            )
        self.entries: dict[str, _Entry] = {}
        for file in files:
            header, data_start = _read_header(file)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                dtype = _DTYPES.get(info["dtype"])
                if dtype is None:
                    raise ShapeMismatchError(
                        f"model {self.folder}: tensor {name!r} has unsupported dtype {info['dtype']}"
                    )
                begin, end = info["data_offsets"]
                self.entries[name] = _Entry(
                    file, dtype, tuple(info["shape"]), data_start + begin, data_start + end
                )
        self._maps: dict[Path, mmap.mmap] = {}

    @property
    def config(self) -> dict:
        path = self.folder / "config.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def files(self) -> list[Path]:
        return sorted({entry.file for entry in self.entries.values()})

    def tensor(self, name: str) -> torch.Tensor:
        """The stored tensor, viewing the mapped file (treat it as read-only)."""
        entry = self.entries.get(name)
        if entry is None:
            raise MissingTensorError(f"tensor {name!r} is missing from model {self.folder}")
        mapped = self._maps.get(entry.file)
        if mapped is None:
            with open(entry.file, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            self._maps[entry.file] = mapped
        count = 1
        for size in entry.shape:
            count *= size
        if count == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        flat = torch.frombuffer(mapped, dtype=entry.dtype, count=count, offset=entry.start)
        return flat.view(entry.shape)

    def close(self) -> None:
        """Unmap the files (tensors handed out earlier must no longer be used)."""
        for mapped in self._maps.values():
            try:
                mapped.close()
            except BufferError:  # a tensor still views it; the GC unmaps later
                pass
        self._maps.clear()


class ModelSet:
    """A base model and K experts fine-tuned from it, validated as one family."""

    def __init__(self, base: Path | str, experts: Sequence[Path | str]):
        if not experts:
            raise ArchitectureMismatchError("CycleQD needs at least one expert model; got none")
        self.base = SafetensorsModel(base)
        self.experts = [SafetensorsModel(path) for path in experts]
        self._validate()

    @property
    def names(self) -> list[str]:
        return self.base.names

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.entries[name].shape

    def dtype(self, name: str) -> torch.dtype:
        return self.base.entries[name].dtype

    def _validate(self) -> None:
        base_cfg = self.base.config
        for expert in self.experts:
            cfg = expert.config
            for key in _ARCH_FIELDS:
                if key in base_cfg and key in cfg and base_cfg[key] != cfg[key]:
                    raise ArchitectureMismatchError(
                        f"expert {expert.folder} differs from base {self.base.folder} in "
                        f"config field {key!r}: {cfg[key]!r} vs {base_cfg[key]!r}"
                    )
            missing = [n for n in self.base.entries if n not in expert.entries]
            if missing:
                raise MissingTensorError(
                    f"tensor {missing[0]!r} of base {self.base.folder} is missing from "
                    f"expert {expert.folder} ({len(missing)} missing in all)"
                )
            extra = [n for n in expert.entries if n not in self.base.entries]
            if extra:
                raise MissingTensorError(
                    f"tensor {extra[0]!r} of expert {expert.folder} is missing from "
                    f"base {self.base.folder} ({len(extra)} missing in all)"
                )
            for name, entry in self.base.entries.items():
                other = expert.entries[name].shape
                if other != entry.shape:
                    raise ShapeMismatchError(
                        f"tensor {name!r} has shape {list(other)} in expert {expert.folder} "
                        f"but {list(entry.shape)} in base {self.base.folder}"
                    )

    def task_vector_rms(self) -> float:
        """sqrt(mean of tau_k^2) over every float element of every expert's task vector."""
        total, count = 0.0, 0
        for name in self.names:
            base = self.base.tensor(name)
            if not base.is_floating_point():
                continue
            for expert in self.experts:
                tau = expert.tensor(name).double() - base.double()
                total += float((tau * tau).sum())
                count += tau.numel()
        return (total / count) ** 0.5 if count else 0.0

    def close(self) -> None:
        self.base.close()
        for expert in self.experts:
            expert.close()
