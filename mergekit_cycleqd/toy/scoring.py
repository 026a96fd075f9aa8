"""Score toy models on the toy tasks: the reference table for a CycleQD run.

One resident TransformersBackend (loaded from the base) takes every model's
weights in place and is scored through the lm-eval adapter, exactly as the
CycleQD loop scores its children.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from mergekit_cycleqd.merge.weights import StateDictWeights, WeightSource
from mergekit_cycleqd.toy.build import ToyAssets


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of a single-shard safetensors model folder (the toy models are one shard)."""
    return load_file(str(Path(model_dir) / "model.safetensors"))


def average_weights(model_dirs: list[Path]) -> StateDictWeights:
    """The plain average of several models (the naive merge CycleQD is compared with)."""
    states = [load_state_dict(d) for d in model_dirs]
    return StateDictWeights({k: sum(s[k] for s in states) / len(states) for k in states[0]})


def task_vector_sum(base_dir: Path, model_dirs: list[Path]) -> StateDictWeights:
    """θ_b + Σ_k (θ_k − θ_b): task arithmetic with weight 1 per expert."""
    base = load_state_dict(base_dir)
    states = [load_state_dict(d) for d in model_dirs]
    return StateDictWeights({k: base[k] + sum(s[k] - base[k] for s in states) for k in base})


def reference_models(assets: ToyAssets) -> dict[str, WeightSource]:
    """Base, each expert, the average of the experts (task arithmetic with weights 1/K)
    and the sum of their task vectors (weights 1), by row label."""
    models: dict[str, WeightSource] = {"base": StateDictWeights(load_state_dict(assets.base))}
    for skill, path in assets.experts.items():
        models[f"expert:{skill}"] = StateDictWeights(load_state_dict(path))
    models["average"] = average_weights(list(assets.experts.values()))
    models["task_sum"] = task_vector_sum(assets.base, list(assets.experts.values()))
    return models


def score_table(
    assets: ToyAssets,
    models: Mapping[str, WeightSource],
    split: str = "test",
    device: str | None = None,
) -> dict[str, dict[str, float]]:
    """row label -> skill -> exact-match score on ``split`` ("opt", "val" or "test")."""
    from mergekit_cycleqd.evaluate import build_evaluator
    from mergekit_cycleqd.evaluate.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(assets.base, device=device, batch_size=128)
    evaluators = {
        skill: build_evaluator(
            "lm_eval",
            {
                "task": names[split],
                "include_path": str(assets.task_dir),
                "metric": assets.metric,
                "log_samples": False,
            },
        )
        for skill, names in assets.tasks.items()
    }
    table: dict[str, dict[str, float]] = {}
    try:
        for label, weights in models.items():
            backend.load_child(weights)
            table[label] = {s: e.evaluate(backend).score for s, e in evaluators.items()}
    finally:
        backend.close()
    return table


def format_table(table: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table, one row per model, one column per skill, plus the mean."""
    skills = list(next(iter(table.values())))
    lines = [
        "| model | " + " | ".join(skills) + " | mean |",
        "|---|" + "---:|" * (len(skills) + 1),
    ]
    for label, scores in table.items():
        values = [scores[s] for s in skills]
        cells = " | ".join(f"{v:.2f}" for v in [*values, sum(values) / len(values)])
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)
