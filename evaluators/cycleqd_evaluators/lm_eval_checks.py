"""What an lm-eval task option can get wrong, found in lm-eval's own task index before
any model loads: an unknown task, metric or filter name, a data file that is not there."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any


def _near(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_lm_eval_task(options: Any, *, where: str, managers: dict) -> list[str]:
    """Task, metric and filter names looked up in lm-eval's own task index; missing data files."""
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY

    include = options.include_path
    if include is not None and not Path(include).is_dir():
        return [f"{where}.include_path: not a folder (got {include!r})"]
    defaults = options.include_defaults if options.include_defaults is not None else include is None
    key = (include, defaults)
    if key not in managers:
        from lm_eval.tasks import TaskManager

        managers[key] = TaskManager(include_path=include, include_defaults=defaults)
    manager = managers[key]
    known = list(manager.all_tasks)
    if options.task not in known:
        place = include or "lm-eval's built-in tasks"
        return [
            f"{where}.task: no lm-eval task of that name in {place} (got {options.task!r})"
            + _near(options.task, known)
        ]
    config = _task_config(manager, options.task)
    if config is None:
        return []  # a group or a Python-defined task: its metrics are known only when it runs
    metrics = [m["metric"] for m in config.get("metric_list") or [] if isinstance(m, dict)]
    metrics = metrics or DEFAULT_METRIC_REGISTRY.get(config.get("output_type", ""), [])
    problems = []
    if metrics and options.metric not in metrics:
        problems.append(
            f"{where}.metric: task {options.task!r} reports no metric of that name "
            f"(got {options.metric!r}); it reports: {', '.join(metrics)}"
            + _near(options.metric, metrics)
        )
    problems += _missing_data_files(config, where=where, task=options.task)
    filters = [f.get("name") for f in config.get("filter_list") or [] if isinstance(f, dict)]
    filters = filters or ["none"]
    if options.filter not in filters:
        problems.append(
            f"{where}.filter: task {options.task!r} has no filter of that name "
            f"(got {options.filter!r}); its filters: {', '.join(map(str, filters))}"
        )
    return problems


def _missing_data_files(config: dict[str, Any], *, where: str, task: str) -> list[str]:
    """Local data files a task YAML names (``dataset_kwargs.data_files``) that do not exist."""
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        files = list(files.values())
    paths = [f for f in (files if isinstance(files, list) else [files]) if isinstance(f, str)]
    return [
        f"{where}.task: task {task!r} reads data file {path!r}, which does not exist"
        for path in paths
        if "://" not in path and not any(c in path for c in "*?[") and not Path(path).exists()
    ]


def _task_config(manager: Any, name: str) -> dict[str, Any] | None:
    """A single task's YAML config as lm-eval resolves it, or None when it is not one."""
    entry = manager.task_index.get(name) if hasattr(manager, "task_index") else None
    if entry is None or getattr(getattr(entry, "kind", None), "name", "") != "TASK":
        return None
    try:
        return manager._factory._load_full_config(entry)
    except Exception:  # an lm-eval version with another layout: the run reports it instead
        return None
