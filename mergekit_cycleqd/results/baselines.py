"""The fixed merges a run is compared with (mergekit's own task arithmetic, TIES...), built once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mergekit_cycleqd.filing.atomic import atomic_path


def baseline_config(method: str, base: Path, experts: list[Path]) -> dict[str, Any]:
    k = len(experts)
    if method in ("ties", "dare_ties"):
        parameters = {"weight": 1.0, "density": 0.5}
        global_parameters = {"normalize": True}
    else:  # task_arithmetic, linear: the average of the experts
        parameters = {"weight": 1.0 / k}
        global_parameters = {"normalize": False} if method == "task_arithmetic" else {}
    config: dict[str, Any] = {
        "merge_method": method,
        "models": [{"model": str(e), "parameters": dict(parameters)} for e in experts],
        "dtype": "float32",
    }
    if method != "linear":
        config["base_model"] = str(base)
        config["parameters"] = global_parameters
    else:
        config["models"].append({"model": str(base), "parameters": {"weight": 0.0}})
    return config


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def complete_model_folder(folder: Path) -> bool:
    """A config and every weight file it needs: what resume checks before reusing a folder.

    New folders appear whole (``atomic_path``); this also catches folders left half
    written by older versions, which are then rebuilt.
    """
    if not (folder / "config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        return all((folder / shard).is_file() for shard in shards)
    return (folder / "model.safetensors").is_file()


def run_baseline_merge(config: dict[str, Any], out_dir: Path) -> Path:
    """Merge with mergekit's own planner into a fresh folder."""
    import copy

    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    if complete_model_folder(out_dir):
        return out_dir
    from mergekit_cycleqd.merge.config_check import validate_config

    validate_config(config)
    text = yaml.safe_dump(config, sort_keys=False)
    # Vision models have no tokenizer; mergekit's default copy would fail on them.
    first = config.get("base_model") or config["models"][0]["model"]
    tokenizer = any((Path(first) / n).exists() for n in TOKENIZER_FILES)
    with atomic_path(out_dir) as temporary:
        run_merge(
            MergeConfiguration.model_validate(copy.deepcopy(config)),
            str(temporary),
            options=MergeOptions(
                copy_tokenizer=tokenizer, write_model_card=False, lazy_unpickle=True, quiet=True
            ),  # the final step shows its own progress
            config_source=text,
        )
        (temporary / "mergekit_config.yml").write_text(text, encoding="utf-8")
    return out_dir
