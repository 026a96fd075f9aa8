"""What a run would otherwise hit minutes in, checked before any weight is loaded.

A recipe can be valid YAML and still fail after the seeds were scored: an expert
folder with a typo, an expert fine-tuned from another base (different shapes), an
lm-eval task or metric name lm-eval does not know. ``check_recipe`` finds all of
them at once, reading only each model's ``config.json`` and safetensors headers
and what each evaluator checks before a model loads (lm-eval's own task index), and raises one ``RecipeError`` listing every problem
as ``FILE: field: what is wrong (got VALUE)``. ``mergekit-cycleqd check`` and
every run call it before a run folder is created.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_cycleqd.errors import RecipeError
from mergekit_cycleqd.recipe.schema import ModelSpec, Recipe

# config.json keys that decide tensor shapes; a model whose value differs cannot be merged
SHAPE_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)


@dataclass
class CheckReport:
    """What the checks established: each model's folder and how experts map to tasks."""

    folders: dict[str, Path] = field(default_factory=dict)
    mapping: list[str] = field(default_factory=list)


def looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~"))


def _model_fields(recipe: Recipe) -> list[tuple[str, ModelSpec]]:
    fields: list[tuple[str, ModelSpec]] = []
    if recipe.base_model is not None:
        fields.append(("base_model", recipe.base_model))
    fields += [(f"experts[{i}].path", e) for i, e in enumerate(recipe.experts)]
    return fields


def _cached_snapshot(repo_id: str) -> Path | None:
    """The Hub model's folder in the local Hugging Face cache, or None (no network)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (or not a valid id): reported by the caller
        return None


def _remote_config(repo_id: str) -> Path | None:
    """The folder of the model's config.json fetched alone from the Hub, or None when
    offline or unreachable (a run would download the whole model; check needs only this)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, "config.json", etag_timeout=5)).parent
    except Exception:  # no network, unknown or gated id: listed with the fetch command
        return None


def _near(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_models(recipe: Recipe, *, source: str) -> tuple[dict[str, Path], list[str]]:
    """Every model's local folder, and every problem with any of them (all at once)."""
    folders: dict[str, Path] = {}
    problems: list[str] = []
    uncached: list[tuple[str, str]] = []
    for where, spec in _model_fields(recipe):
        local = Path(spec.path).expanduser()
        if local.exists():
            if (local / "config.json").is_file():
                folders[where] = local.resolve()
            else:
                problems.append(
                    f"{source}: {where}: {local} has no config.json; is it a model folder? "
                    f"(got {spec.path!r})"
                )
        elif looks_like_hub_id(spec.path):
            snapshot = _cached_snapshot(spec.path) or _remote_config(spec.path)
            if snapshot is None:
                uncached.append((where, spec.path))
            else:
                folders[where] = snapshot
        else:
            siblings = [p.name for p in local.parent.iterdir()] if local.parent.is_dir() else []
            problems.append(
                f"{source}: {where}: model folder does not exist (got {spec.path!r})"
                + _near(local.name, siblings)
            )
    if uncached:
        names = ", ".join(f"{w} ({p!r})" for w, p in uncached)
        fetch = "\n".join(f"    huggingface-cli download {p}" for _, p in uncached)
        problems.append(
            f"{source}: {names}: not a local folder, not in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the Hub cannot be "
            f"reached (or has no such model); fetch them once with\n{fetch}"
        )
    return folders, problems


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, read from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def check_shapes(folders: dict[str, Path], *, source: str) -> list[str]:
    """Every expert must have the base's architecture and tensor shapes."""
    if "base_model" not in folders:
        return []
    base = folders["base_model"]
    base_config = _config(base)
    base_shapes = tensor_shapes(base)
    problems = []
    for where, folder in folders.items():
        if where == "base_model":
            continue
        config = _config(folder)
        differing = [
            k for k in SHAPE_KEYS if k in base_config and config.get(k) != base_config.get(k)
        ]
        if differing:
            problems += [
                f"{source}: {where}: {folder}/config.json: {key} is {config.get(key)!r} but the "
                f"base model's is {base_config[key]!r} ({base}); an expert must be fine-tuned "
                "from the base (same architecture and shapes)"
                for key in differing
            ]
            continue
        shapes = tensor_shapes(folder)
        bad = [n for n in base_shapes if n in shapes and shapes[n] != base_shapes[n]]
        missing = [n for n in base_shapes if n not in shapes] if shapes else []
        for name in bad[:3]:
            problems.append(
                f"{source}: {where}: {folder}: tensor {name} has shape {list(shapes[name])}, "
                f"the base model's is {list(base_shapes[name])} ({len(bad)} tensors differ)"
            )
        if missing:
            problems.append(
                f"{source}: {where}: {folder}: {len(missing)} tensors of the base model are "
                f"missing, e.g. {missing[0]}"
            )
    return problems


def check_evaluators(recipe: Recipe, *, source: str) -> list[str]:
    """What each task's evaluator can tell before any model loads (``Evaluator.preflight``):
    lm-eval task, metric and filter names, data files, and so on."""
    from mergekit_cycleqd.evaluate import evaluator_class

    cache: dict[str, Any] = {}
    problems = []
    groups = [("tasks", recipe.tasks), ("final.generalisation", recipe.final.generalisation)]
    for group, tasks in groups:
        for index, task in enumerate(tasks):
            try:
                cls = evaluator_class(task.evaluator)
            except ValueError as error:
                problems.append(f"{source}: {group}[{index}].evaluator: {error}")
                continue
            splits = [("opt", "optimisation")] + (
                [("test", "test")] if task.test is not None else []
            )
            for split, split_field in splits:
                options = cls.Options.model_validate(task.split_options(split))
                where = f"{source}: {group}[{index}].options/{split_field}"
                problems += cls.preflight(options, where=where, cache=cache)
    return list(dict.fromkeys(problems))


def check_recipe(recipe: Recipe, *, source: str) -> CheckReport:
    """Run every check; raise one RecipeError listing every problem found.

    With ``assets:`` the assets are built first (as a run does; cached after the
    first time), so paths and task names inside them are checked too.
    """
    if recipe.assets is not None:
        from mergekit_cycleqd.recipe.assets import build_assets

        build_assets(recipe.assets)
    folders, problems = check_models(recipe, source=source)
    if not problems:
        problems += check_shapes(folders, source=source)
    problems += check_evaluators(recipe, source=source)
    if problems:
        raise RecipeError("\n".join(problems))
    mapping = [
        f"{expert.task} <- expert {expert.name!r} ({expert.path})" for expert in recipe.experts
    ]
    return CheckReport(folders=folders, mapping=mapping)
