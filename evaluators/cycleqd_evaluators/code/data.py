"""MBPP problems from the original JSONL or from evalplus's MBPP+ / HumanEval+ release files.

Both become one ``Problem``. The format is told by the records: evalplus's have a string
``task_id`` such as ``"Mbpp/2"`` with ``prompt``, ``canonical_solution``, ``entry_point``,
``base_input``, ``plus_input`` and ``atol``; the original's have an integer ``task_id`` with
``text``, ``code`` and ``test_list``. evalplus's inputs are JSON, so evalplus converts the
inputs of some problems back into tuples, sets or complex numbers
(``evalplus.data.mbpp.mbpp_deserialize_inputs``); that table is evalplus's, used as is.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_cycleqd.evaluate import TaskFileError

EVALPLUS_INSTALL = (
    "pip install --no-deps 'evalplus==0.3.1' && "
    "pip install wget tempdir appdirs termcolor tree-sitter tree-sitter-python"
)

_PLUS_FIELDS = ("task_id", "prompt", "canonical_solution", "entry_point", "base_input")
_MBPP_FIELDS = ("task_id", "text", "test_list")
_ASSERT = re.compile(r"^\s*assert\b", re.MULTILINE)


@dataclass
class Problem:
    """One coding problem, in whichever format it came."""

    task_id: int | str
    number: int
    text: str
    first_test: str
    canonical: str
    tests: list[str] = field(default_factory=list)
    setup: str = ""
    entry_point: str | None = None
    base_inputs: list[Any] = field(default_factory=list)
    plus_inputs: list[Any] = field(default_factory=list)
    atol: float = 0.0
    prompt: str = ""

    @property
    def is_plus(self) -> bool:
        return isinstance(self.task_id, str)

    @property
    def is_humaneval(self) -> bool:
        """HumanEval+ prompts are a function stub to complete, not a task text and a test."""
        return self.is_plus and str(self.task_id).startswith("HumanEval/")


def _records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise TaskFileError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise TaskFileError(f"{path}:{number}: a record must be a JSON object")
            rows.append((number, row))
    return rows


def load_problems(path: Path) -> dict[int, Problem]:
    """Problems by number (MBPP's task id; the N of evalplus's ``Mbpp/N``)."""
    rows = _records(path)
    plus = bool(rows) and isinstance(rows[0][1].get("task_id"), str)
    problems: dict[int, Problem] = {}
    for number, row in rows:
        required = _PLUS_FIELDS if plus else _MBPP_FIELDS
        missing = [key for key in required if key not in row]
        if missing:
            kind = "evalplus (MBPP+)" if plus else "MBPP"
            raise TaskFileError(
                f"{path}:{number}: missing field(s) {', '.join(missing)} of the {kind} format"
            )
        problem = _plus_problem(path, number, row) if plus else _mbpp_problem(path, number, row)
        problems[problem.number] = problem
    return problems


def _mbpp_problem(path: Path, line: int, row: dict[str, Any]) -> Problem:
    if not row["test_list"]:
        raise TaskFileError(f"{path}:{line}: field test_list is empty")
    return Problem(
        task_id=int(row["task_id"]),
        number=int(row["task_id"]),
        text=row["text"].strip(),
        first_test=row["test_list"][0],
        canonical=row.get("code", ""),
        tests=list(row["test_list"]),
        setup=row.get("test_setup_code") or "",
    )


def _plus_problem(path: Path, line: int, row: dict[str, Any]) -> Problem:
    task_id = row["task_id"]
    try:
        number = int(task_id.rsplit("/", 1)[-1])
    except ValueError:
        raise TaskFileError(f"{path}:{line}: task_id {task_id!r} is not like 'Mbpp/2'") from None
    text, first_test = split_plus_prompt(row["prompt"])
    return Problem(
        task_id=task_id,
        number=number,
        text=text,
        first_test=first_test,
        canonical=row["prompt"] + row["canonical_solution"],
        entry_point=row["entry_point"],
        base_inputs=_deserialize(task_id, row["base_input"]),
        plus_inputs=_deserialize(task_id, row.get("plus_input") or []),
        atol=float(row.get("atol") or 0.0),
        prompt=row["prompt"],
    )


def split_plus_prompt(prompt: str) -> tuple[str, str]:
    """The description and the assertion in an MBPP+ prompt's docstring.

    MBPP+ prompts are a docstring holding the task text followed by one ``assert`` line.
    """
    start, end = prompt.find('"""'), prompt.rfind('"""')
    body = prompt[start + 3 : end] if 0 <= start < end else prompt
    match = _ASSERT.search(body)
    if match is None:
        return body.strip(), ""
    return body[: match.start()].strip(), body[match.start() :].strip()


def require_evalplus(why: str) -> None:
    """Fail early, with the install command, where evalplus is needed but missing."""
    try:
        import evalplus.data.mbpp  # noqa: F401
        import evalplus.sanitize  # noqa: F401
    except ImportError as error:
        raise TaskFileError(f"{why} ({error}); install it with `{EVALPLUS_INSTALL}`") from None


def _deserialize(task_id: str, inputs: list[Any]) -> list[Any]:
    if not task_id.startswith("Mbpp/"):
        return inputs
    require_evalplus(f"MBPP+ data ({task_id}) needs evalplus's input conversion")
    from evalplus.data.mbpp import mbpp_deserialize_inputs

    return mbpp_deserialize_inputs(task_id, inputs)
