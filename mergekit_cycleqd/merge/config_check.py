"""Strict checking of parameter names in mergekit configs: ``validate_config``.

mergekit's planner silently ignores unknown parameter names, so a typo such as
``mutation_rte: 0.2`` (or ``densty`` on ``task_arithmetic``) would merge with the
default and nobody would notice. Every method whose parameters mergekit declares
is checked, the plugin's and mergekit's own. ``mergekit-cycleqd-yaml`` and every
config the project writes go through it; Python users who call
``mergekit.merge.run_merge`` themselves should call it first::

    from mergekit_cycleqd import validate_config
    validate_config(config)   # a MergeConfiguration or the YAML's dict
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mergekit.merge_methods import ParameterScope, get

from mergekit_cycleqd.errors import InvalidParameterError, UnknownParameterError
from mergekit_cycleqd.merge.methods import METHODS
from mergekit_cycleqd.merge.mutations import MUTATION_KINDS

PLUGIN_METHODS = {method.spec.name for method in METHODS}


def _parameter_blocks(config: Mapping[str, Any]) -> Iterator[tuple[str, Mapping, bool]]:
    """(location, parameters, per_model) for every parameters block in a config."""

    def models(prefix: str, items: Any) -> Iterator[tuple[str, Mapping, bool]]:
        for i, item in enumerate(items or []):
            if isinstance(item, Mapping) and item.get("parameters"):
                yield f"{prefix}[{i}].parameters", item["parameters"], True

    def slices(prefix: str, items: Any) -> Iterator[tuple[str, Mapping, bool]]:
        for i, item in enumerate(items or []):
            if not isinstance(item, Mapping):
                continue
            if item.get("parameters"):
                yield f"{prefix}[{i}].parameters", item["parameters"], False
            yield from models(f"{prefix}[{i}].sources", item.get("sources"))

    if config.get("parameters"):
        yield "parameters", config["parameters"], False
    yield from models("models", config.get("models"))
    yield from slices("slices", config.get("slices"))
    for name, module in (config.get("modules") or {}).items():
        if not isinstance(module, Mapping):
            continue
        if module.get("parameters"):
            yield f"modules.{name}.parameters", module["parameters"], False
        yield from models(f"modules.{name}.models", module.get("models"))
        yield from slices(f"modules.{name}.slices", module.get("slices"))


def validate_config(config: Any) -> None:
    """Raise UnknownParameterError / InvalidParameterError for a misspelt or misplaced parameter.

    ``config`` is a mergekit ``MergeConfiguration`` or the mapping read from its YAML.
    Methods that declare no parameter list (or unknown method names, which mergekit
    reports itself) pass untouched.
    """
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json", exclude_none=True)
    method_name = config.get("merge_method")
    try:
        spec = get(method_name).spec
    except Exception:  # unknown name or a method without a declared spec: mergekit decides
        return
    shared = {p.name for p in spec.parameters if p.scope == ParameterScope.SHARED}
    per_model = {p.name for p in spec.parameters if p.scope != ParameterScope.SHARED}
    for location, block, is_model in _parameter_blocks(config):
        if not isinstance(block, Mapping):
            raise InvalidParameterError(f"{location} must be a mapping; got {block!r}")
        for key in block:
            if key in (per_model | shared) and not (is_model and key in shared):
                continue
            if is_model and key in shared:
                raise UnknownParameterError(
                    f"{location}.{key}: {key!r} is a global parameter of {method_name}; "
                    "set it under the top-level parameters (mergekit would ignore it here)"
                )
            allowed = sorted(per_model if is_model else shared | per_model)
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownParameterError(
                f"{location}.{key}: unknown parameter {key!r} for merge method "
                f"{method_name} (known: {', '.join(allowed) or 'none'}){hint}"
            )
    if method_name in PLUGIN_METHODS:
        _check_plugin_values(method_name, config.get("parameters") or {})


check_config = validate_config  # the name used before validate_config was public


def _check_plugin_values(method_name: str, top: Mapping[str, Any]) -> None:
    if method_name == "cycleqd_genome" and not top.get("genome"):
        raise InvalidParameterError(
            "parameters.genome: cycleqd_genome needs the genome file to rebuild "
            f"(got {top.get('genome')!r}); e.g. genome: RUN/children/<id>.genome.safetensors"
        )
    mutation = top.get("mutation", "none")
    if isinstance(mutation, str) and mutation not in MUTATION_KINDS:
        raise InvalidParameterError(
            f"parameters.mutation: {mutation!r} is not one of {', '.join(MUTATION_KINDS)}"
        )
    if mutation == "svd" and not top.get("svd_factors"):
        raise InvalidParameterError(
            "parameters.svd_factors is required with mutation: svd "
            "(the SVD cache file of the active task's expert)"
        )


def resolve_relative_paths(value: Any, folder: Path) -> Any:
    """``./`` and ``../`` paths (a run folder's elite YAMLs) are relative to the YAML's folder."""
    if isinstance(value, dict):
        return {k: resolve_relative_paths(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_relative_paths(v, folder) for v in value]
    if isinstance(value, str) and value.startswith(("./", "../")):
        return str((folder / value).resolve())
    return value
