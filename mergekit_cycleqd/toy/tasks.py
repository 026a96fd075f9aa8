"""The toy skills as local lm-eval tasks (JSONL data + task YAMLs).

Each skill gets one data file per split and three tasks, ``toy_<skill>_opt``
(the optimisation split CycleQD climbs on), ``toy_<skill>_val`` (for choosing
settings without touching the test split) and ``toy_<skill>_test`` (held out,
scored at the end). Both are ``generate_until`` tasks cut at the newline and
scored by ``exact_match``, so lm-eval's HFLM scores them on the resident model
with greedy decoding, offline, through ``TaskManager(include_path=task_dir)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import yaml

METRIC = "exact_match"
SPLITS: tuple[str, ...] = ("opt", "val", "test")
MAX_GEN_TOKS = 20
"""Longest toy answer (a doubled 8-letter word) is 16 characters, plus the newline."""


def task_name(skill: str, split: str) -> str:
    return f"toy_{skill}_{split}"


def data_path(task_dir: Path, skill: str, split: str) -> Path:
    return task_dir / f"{skill}_{split}.jsonl"


def write_jsonl(path: Path, rows: Iterable[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def task_config(task_dir: Path, skill: str, split: str) -> dict:
    """One lm-eval task config; data paths are absolute because lm-eval resolves
    relative ``data_files`` against the working directory, not the YAML."""
    return {
        "task": task_name(skill, split),
        "tag": [f"toy_{split}"],
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {s: str(data_path(task_dir.resolve(), skill, s)) for s in SPLITS}
        },
        "test_split": split,
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": MAX_GEN_TOKS, "do_sample": False},
        "metric_list": [{"metric": METRIC, "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def write_task_yamls(task_dir: Path, skills: Iterable[str]) -> dict[str, dict[str, str]]:
    """(Re)write the task YAMLs for the folder's current location; skill -> split -> task.

    Files whose content is unchanged are left alone, so concurrent readers never
    see a half-written YAML after the first build.
    """
    tasks: dict[str, dict[str, str]] = {}
    for skill in skills:
        tasks[skill] = {}
        for split in SPLITS:
            text = yaml.safe_dump(task_config(task_dir, skill, split), sort_keys=False)
            path = task_dir / f"{task_name(skill, split)}.yaml"
            if not path.is_file() or path.read_text() != text:
                staging = path.with_suffix(".yaml.tmp")
                staging.write_text(text)
                staging.replace(path)
            tasks[skill][split] = task_name(skill, split)
    return tasks
