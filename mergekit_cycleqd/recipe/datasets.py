"""Every dataset a recipe reads, where it is expected and the command that fetches it.

``mergekit-cycleqd check`` prints this list, so a user preparing a machine (often one
without network at run time) knows what to download before the first child is scored.
Sources are known by evaluator option (``mbpp.path``, ``dbbench.path``,
``os_interaction.data`` / ``scripts_dir``, ``lm_eval.task``); any other option is left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mergekit_cycleqd.recipe.schema import Recipe, TaskSpec

MBPP_URL = (
    "https://raw.githubusercontent.com/google-research/google-research/master/mbpp/mbpp.jsonl"
)
EVALPLUS_RELEASES = {
    "mbppplus": ("MBPP+", "https://github.com/evalplus/mbppplus_release/releases/download"),
    "humanevalplus": (
        "HumanEval+",
        "https://github.com/evalplus/humanevalplus_release/releases/download",
    ),
}
EVALPLUS_DEFAULT_VERSION = {"mbppplus": "v0.1.0", "humanevalplus": "v0.1.10"}
AGENTBENCH_GIT = "https://github.com/THUDM/AgentBench"


@dataclass(frozen=True)
class DatasetNeed:
    """One dataset: what it is, who reads it, where, whether it is there, how to get it."""

    what: str
    used_by: str
    location: str
    present: bool | None
    fetch: str

    def line(self) -> str:
        state = {True: "found", False: "MISSING", None: "fetched on first use"}[self.present]
        return f"- {self.what} [{state}] for {self.used_by}\n    at:    {self.location}\n    fetch: {self.fetch}"


def dataset_needs(recipe: Recipe) -> list[DatasetNeed]:
    """Every dataset of every task split and generalisation task, each location once."""
    groups = [("tasks", t) for t in recipe.tasks] + [
        ("final.generalisation", t) for t in recipe.final.generalisation
    ]
    needs: dict[str, DatasetNeed] = {}
    for group, task in groups:
        for split in _splits(group, task):
            options = task.split_options(split)
            used_by = f"{group}: {task.name} ({'test' if split == 'test' else 'optimisation'})"
            for need in _needs_of(task.evaluator, options, used_by):
                if need.location in needs:
                    old = needs[need.location]
                    needs[need.location] = DatasetNeed(
                        old.what, f"{old.used_by}; {used_by}", old.location, old.present, old.fetch
                    )
                else:
                    needs[need.location] = need
    return list(needs.values())


def _splits(group: str, task: TaskSpec) -> list[str]:
    if group != "tasks":
        return ["test"]
    return ["opt"] + (["test"] if task.test is not None else [])


def _path(value: str) -> Path:
    """Absolute, with ``..`` folded, so each location is listed once and reads plainly."""
    return Path(os.path.normpath(os.path.abspath(os.path.expanduser(str(value)))))


def _needs_of(kind: str, options: dict, used_by: str) -> list[DatasetNeed]:
    if kind == "mbpp" and "path" in options:
        return [_code_file(_path(options["path"]), used_by)]
    if kind == "dbbench" and "path" in options:
        return [_agentbench(_path(options["path"]), "AgentBench DBBench tasks", used_by)]
    if kind == "os_interaction":
        found = []
        if "data" in options:
            found.append(_agentbench(_path(options["data"]), "AgentBench OS tasks", used_by))
        if options.get("scripts_dir"):
            path = _path(options["scripts_dir"])
            found.append(_agentbench(path, "AgentBench OS check scripts", used_by))
        return found
    if kind == "lm_eval" and "task" in options:
        return [_lm_eval(options, used_by)]
    return []


def _code_file(path: Path, used_by: str) -> DatasetNeed:
    name = path.name.lower().replace("-", "").replace("_", "")
    for key, (label, base) in EVALPLUS_RELEASES.items():
        if name.startswith(key):
            version = EVALPLUS_DEFAULT_VERSION[key]
            stem = path.name.split(".")[0]
            url = f"{base}/{version}/{stem}.jsonl.gz"
            get = (
                f"curl -L -o {path} {url}"
                if path.suffix == ".gz"
                else (f"curl -L {url} | gunzip > {path}")
            )
            return DatasetNeed(
                f"{label} (evalplus release {version})",
                used_by,
                str(path),
                path.is_file(),
                f"mkdir -p {path.parent} && {get}",
            )
    return DatasetNeed(
        "MBPP (google-research mbpp.jsonl)",
        used_by,
        str(path),
        path.is_file(),
        f"mkdir -p {path.parent} && curl -L -o {path} {MBPP_URL}",
    )


def _agentbench(path: Path, what: str, used_by: str) -> DatasetNeed:
    parts = path.parts
    root = Path(*parts[: parts.index("data")]) if "data" in parts else None
    fetch = (
        f"git clone {AGENTBENCH_GIT} {root}"
        if root is not None
        else f"git clone {AGENTBENCH_GIT} and point the path at its data/ folder"
    )
    return DatasetNeed(what, used_by, str(path), path.exists(), fetch)


def _lm_eval(options: dict, used_by: str) -> DatasetNeed:
    task = options["task"]
    include = options.get("include_path")
    where = f"lm-eval task {task!r}" + (f" (task files in {include})" if include else "")
    manager = f"TaskManager(include_path={str(include)!r})" if include else "TaskManager()"
    fetch = (
        'python -c "from lm_eval.tasks import TaskManager, get_task_dict; '
        f'get_task_dict([{task!r}], {manager})"  (downloads into the Hugging Face datasets '
        "cache; then run with HF_DATASETS_OFFLINE=1)"
    )
    return DatasetNeed(f"lm-eval dataset of {task}", used_by, where, None, fetch)


def describe(needs: list[DatasetNeed]) -> str:
    """The text ``check`` prints."""
    if not needs:
        return "Datasets: none named by the recipe's evaluators."
    return "Datasets this recipe reads:\n" + "\n".join(n.line() for n in needs)
