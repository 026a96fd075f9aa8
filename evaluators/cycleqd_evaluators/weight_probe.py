"""A deterministic evaluator that reads weights instead of generating text.

Score = the child's task vector projected on a reference expert's task vector,
<tau_child, tau_ref> / <tau_ref, tau_ref>, clamped to [0, 1]: 1 for the
reference expert, ~0 for the base or an unrelated expert, ~0.5 for an even
merge. It costs milliseconds on tiny models, which lets the driver's loop,
archive and resume tests run hundreds of generations in seconds. Not a
benchmark of anything: a test and smoke-test instrument.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file

from mergekit_cycleqd.evaluate import Evaluator, EvaluatorOptions, ModelBackend, TaskResult


class WeightProbeOptions(EvaluatorOptions):
    base: str
    reference: str
    power: float = 1.0


def _load_folder(path: str) -> dict[str, torch.Tensor]:
    folder = Path(path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else [folder]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"weight_probe: no safetensors weights in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(file))
    return tensors


def backend_tensors(backend: ModelBackend) -> dict[str, torch.Tensor]:
    """The weights the backend currently holds."""
    model = getattr(backend, "model", None)
    if isinstance(model, torch.nn.Module):
        return dict(model.state_dict())
    weights = getattr(backend, "weights", None)
    if weights is None:
        raise RuntimeError("weight_probe: the backend holds no weights yet")
    return dict(weights.named_tensors())


class WeightProbeEvaluator(Evaluator):
    Options = WeightProbeOptions
    options: WeightProbeOptions

    @cached_property
    def _reference(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
        base = _load_folder(self.options.base)
        reference = _load_folder(self.options.reference)
        directions = {
            name: reference[name].double() - base[name].double()
            for name in base
            if name in reference and base[name].is_floating_point()
        }
        norm = sum(float((d * d).sum()) for d in directions.values())
        return base, directions, norm

    def evaluate(self, backend: ModelBackend) -> TaskResult:
        base, directions, norm = self._reference
        child = backend_tensors(backend)
        dot = sum(
            float(((child[name].double() - base[name].double()) * d).sum())
            for name, d in directions.items()
            if name in child
        )
        projection = dot / norm if norm > 0 else 0.0
        score = min(1.0, max(0.0, projection)) ** self.options.power
        return TaskResult(score, {"projection": projection, "score": score}, [])
