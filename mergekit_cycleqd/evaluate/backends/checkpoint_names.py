"""The resident model's tensors under the names its checkpoint files use.

Children are stored and merged under the tensor names of the safetensors files.
transformers 5 renames some architectures' tensors on load (SegFormer's
``decode_head.linear_c`` becomes ``decode_head.linear_projections``), so an in-place
swap by name needs the same renaming. It is taken from transformers' own conversion
table; a checkpoint whose tensors are merged or split on load (not a 1:1 renaming)
cannot be swapped in place, and the backend says so when it starts.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch


def checkpoint_tensor_names(model_path: Path) -> list[str]:
    """Tensor names in the model folder's safetensors headers (no tensor is read)."""
    names: list[str] = []
    for file in sorted(Path(model_path).glob("*.safetensors")):
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        names += [n for n in header if n != "__metadata__"]
    return names


def load_renaming(model: torch.nn.Module, names: list[str]) -> dict[str, str]:
    """checkpoint name -> module state-dict name, for every checkpoint tensor.

    Raises ValueError when transformers converts (merges or splits) any of them.
    """
    own = model.state_dict()
    if all(n in own for n in names):
        return {n: n for n in names}
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key
    except ImportError:  # an older or newer transformers without this table
        return {n: n for n in names}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", None)
    mapping: dict[str, str] = {}
    for name in names:
        target, converter = rename_source_key(
            name, renamings, converters, base_model_prefix=prefix, meta_state_dict=own
        )
        if converter is not None:
            raise ValueError(
                f"{type(model).__name__}: transformers converts checkpoint tensor {name!r} on "
                "load (merged or split, not renamed), so children cannot be swapped into the "
                "resident model in place; use backend kind 'none' with an evaluator that "
                "loads each child itself"
            )
        mapping[name] = target
    return mapping


class CheckpointNamedView:
    """Looks like the model to ``WeightSource.copy_into``, under checkpoint names."""

    def __init__(self, model: torch.nn.Module, renaming: dict[str, str]):
        self.model = model
        self.renaming = renaming

    def state_dict(self, keep_vars: bool = False) -> dict[str, Any]:
        own = self.model.state_dict(keep_vars=keep_vars)
        return {ckpt: own[name] for ckpt, name in self.renaming.items() if name in own}
