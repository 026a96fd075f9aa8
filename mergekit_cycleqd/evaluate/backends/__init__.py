"""Model backends: a resident model that generates and swaps weights in place.

``load_backend`` is the one place that maps a recipe's backend kind to a class;
the classes are imported lazily so that choosing ``transformers`` never imports
vLLM (a CUDA-only optional extra) and vice versa.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from mergekit_cycleqd.evaluate.base import ModelBackend

BackendKind = Literal["transformers", "vllm"]

BACKEND_KINDS: tuple[str, ...] = ("transformers", "vllm")


def backend_class(kind: BackendKind) -> type:
    """The backend class for ``kind`` (imported lazily; vLLM itself is imported on use)."""
    if kind == "transformers":
        from mergekit_cycleqd.evaluate.backends.transformers_backend import TransformersBackend

        return TransformersBackend
    if kind == "vllm":
        from mergekit_cycleqd.evaluate.backends.vllm_backend import VLLMBackend

        return VLLMBackend
    raise ValueError(f"unknown backend kind {kind!r}; known kinds: {', '.join(BACKEND_KINDS)}")


def load_backend(kind: BackendKind, model_path: str | Path, **options: Any) -> ModelBackend:
    """Start a backend of ``kind`` holding the model at ``model_path``.

    ``options`` go to the backend's constructor (e.g. ``device``, ``dtype``,
    ``batch_size`` for transformers; ``gpu_memory_utilization`` for vLLM); recipes
    check their names against the constructor before anything is loaded.
    """
    return backend_class(kind)(model_path, **options)


__all__ = ["BACKEND_KINDS", "BackendKind", "backend_class", "load_backend"]
