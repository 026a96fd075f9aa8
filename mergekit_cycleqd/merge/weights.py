"""The one interface through which a child's weights reach a model backend.

Genome children and weight-stored children both implement it, so backends never
need to know which kind of child they were handed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class WeightSource(Protocol):
    """Weights of one model, keyed by Hugging Face tensor names."""

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield every tensor, for engines that load weights themselves (vLLM)."""
        ...

    def copy_into(self, module: torch.nn.Module) -> None:
        """Overwrite the module's existing parameters in place (no reallocation)."""
        ...


class StateDictWeights:
    """A plain in-memory state dict as a WeightSource."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        self.state_dict = state_dict

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.state_dict.items()

    def copy_into(self, module: torch.nn.Module) -> None:
        copy_named_tensors_into(module, self.named_tensors())


def copy_named_tensors_into(
    module: torch.nn.Module, tensors: Iterator[tuple[str, torch.Tensor]]
) -> None:
    """Copy tensors into a module's parameters/buffers by name, in place.

    Tied weights (e.g. lm_head tied to embed_tokens) appear once in the module's
    state dict; a name the module does not have is an error, since it means the
    weights belong to another architecture.
    """
    targets = module.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in tensors:
            target = targets.get(name)
            if target is None:
                raise KeyError(
                    f"tensor {name!r} does not exist in the resident model "
                    f"({type(module).__name__}); the child was built for another architecture"
                )
            if target.shape != tensor.shape:
                raise ValueError(
                    f"tensor {name!r}: child has shape {tuple(tensor.shape)}, "
                    f"resident model has {tuple(target.shape)}"
                )
            target.copy_(tensor)


def _umask() -> int:
    """The process umask, read without changing it (Linux), else by a set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, **kwargs: Any) -> None:
    """``safetensors.torch.save_file``, with the file mode any other output gets.

    safetensors creates its files with mode 0600; a model folder should be as readable
    as the config.json beside it (0644 under the usual umask 022).
    """
    from safetensors.torch import save_file

    save_file(tensors, str(path), **kwargs)
    os.chmod(path, 0o666 & ~_umask())
