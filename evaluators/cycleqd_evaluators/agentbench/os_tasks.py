"""Load AgentBench OS-interaction task files into plain, validated records.

Script references (``{"file": ...}``) are read when loading, so a missing
init or checker script is reported before any model is run. Standard checker
scripts are not needed on disk: ``cycleqd_evaluators.agentbench.os_checks`` implements them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_cycleqd.evaluate import TaskFileError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Script:
    """A script to run in the sandbox, or the name of a built-in checker."""

    code: str = ""
    language: str = "bash"
    builtin: str | None = None
    origin: str = "inline"


@dataclass(frozen=True)
class OSTask:
    """One task; ``checks`` is the check chain (None = the reference ``example``)."""

    source: str
    index: int
    description: str
    image: str
    init: tuple[Script, ...]
    start: str | None
    match: str | None
    match_regex: str | None
    checks: tuple[Script | None, ...]
    example: Script | None
    labels: tuple[str, ...]

    @property
    def task_id(self) -> str:
        return f"{self.source}#{self.index}"


def task_files(path: Path) -> list[Path]:
    """A JSON file, or every ``*.json`` under a folder (sorted)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.json") if p.is_file())
        if not files:
            raise TaskFileError(f"no *.json task files under {path}")
        return files
    raise TaskFileError(f"task data {path} does not exist")


def default_scripts_dir(task_file: Path) -> Path:
    """AgentBench's layout: ``data/<N>/x.json`` and ``data/<N>.json`` use ``scripts/<N>/``."""
    data_root = next((p for p in task_file.parents if p.name == "data"), task_file.parent)
    relative = task_file.relative_to(data_root)
    key = relative.parts[0] if len(relative.parts) > 1 else task_file.stem
    return data_root.parent / "scripts" / key


def load_tasks(
    path: str | Path,
    scripts_dir: str | Path | None = None,
    builtin_checks: Collection[str] = frozenset(),
) -> list[OSTask]:
    """All tasks of a file or folder, in file order.

    ``builtin_checks`` names the checker scripts the judge implements itself; those
    need no file under ``scripts_dir``.
    """
    root = Path(path)
    tasks: list[OSTask] = []
    for file in task_files(root):
        try:
            items = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise TaskFileError(f"{file}: not valid JSON ({error})") from None
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise TaskFileError(f"{file}: expected a list of tasks, got {type(items).__name__}")
        source = str(file.relative_to(root)) if root.is_dir() else file.name
        scripts = Path(scripts_dir) if scripts_dir is not None else default_scripts_dir(file)
        loader = _TaskLoader(file, source, scripts, builtin_checks)
        tasks += [loader.task(index, item) for index, item in enumerate(items)]
    return tasks


class _TaskLoader:
    def __init__(self, file: Path, source: str, scripts: Path, builtin_checks: Collection[str]):
        self.file, self.source, self.scripts, self.builtin_checks = (
            file,
            source,
            scripts,
            builtin_checks,
        )

    def error(self, index: int, field: str, message: str) -> TaskFileError:
        return TaskFileError(f"{self.file}: task {index}, field {field!r}: {message}")

    def script(self, index: int, field: str, value: Any) -> Script:
        if isinstance(value, str):
            return Script(code=value)
        if not isinstance(value, dict):
            raise self.error(index, field, f"expected a script (string or object), got {value!r}")
        language = value.get("language", "bash")
        if language not in ("bash", "python"):
            raise self.error(index, field, f"unknown language {language!r} (bash or python)")
        if "code" in value:
            return Script(code=str(value["code"]), language=language)
        if "file" not in value:
            raise self.error(index, field, f"a script needs 'code' or 'file', got {value!r}")
        name = str(value["file"])
        if field.startswith("evaluation.check") and name in self.builtin_checks:
            return Script(language=language, builtin=name, origin=name)
        path = self.scripts / name
        if not path.is_file():
            raise self.error(
                index,
                field,
                f"script file {str(path)!r} not found (set the option scripts_dir to AgentBench's "
                "data/os_interaction/scripts/<N> folder)",
            )
        return Script(code=path.read_text(), language=language, origin=name)

    def task(self, index: int, item: Any) -> OSTask:
        if not isinstance(item, dict):
            raise self.error(index, "", f"a task must be an object, got {type(item).__name__}")
        description = item.get("description")
        if not isinstance(description, str) or not description.strip():
            raise self.error(index, "description", "missing or empty")
        create = item.get("create") or {}
        if not isinstance(create, dict):
            # dev.json task 10 has a stray list here; upstream runs it with no init either.
            log.warning("%s: task %d: ignoring malformed 'create' %r", self.file, index, create)
            create = {}
        init_value = create.get("init")
        init_list = init_value if isinstance(init_value, list) else [init_value]
        init = tuple(
            self.script(index, f"create.init[{i}]", v)
            for i, v in enumerate(init_list)
            if v is not None
        )
        evaluation = item.get("evaluation")
        if not isinstance(evaluation, dict):
            raise self.error(index, "evaluation", f"missing or not an object: {evaluation!r}")
        match = match_regex = None
        checks: tuple[Script | None, ...] = ()
        if "match" in evaluation:
            value = evaluation["match"]
            if isinstance(value, dict):
                match, match_regex = value.get("answer"), value.get("regex")
                if match is None and match_regex is None:
                    raise self.error(index, "evaluation.match", "needs 'answer' or 'regex'")
            else:
                match = str(value)
        elif "check" in evaluation:
            value = evaluation["check"]
            chain = value if isinstance(value, list) else [value]
            checks = tuple(
                None if v is None else self.script(index, f"evaluation.check[{i}]", v)
                for i, v in enumerate(chain)
            )
        else:
            raise self.error(index, "evaluation", "needs 'match' or 'check'")
        example = None
        if None in checks:
            if "example" not in evaluation:
                raise self.error(
                    index, "evaluation.example", "a null check needs a reference example"
                )
            example = self.script(index, "evaluation.example", evaluation["example"])
        start = item.get("start")
        if start is not None and not isinstance(start, str):
            raise self.error(index, "start", f"expected a bash string, got {start!r}")
        return OSTask(
            source=self.source,
            index=index,
            description=description,
            image=str(create.get("local", "default")),
            init=init,
            start=start,
            match=match,
            match_regex=match_regex,
            checks=checks,
            example=example,
            labels=tuple(item.get("labels", ())),
        )
