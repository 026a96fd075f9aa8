"""MBPP (Austin et al., 2021): pass@1 of greedy code generation.

Each problem is posed as a chat conversation (the problem statement and its
first test, which fixes the function name and signature); the code is taken
from the reply, run with the problem's setup code and all its asserts in the
sandbox (mergekit_cycleqd.evaluate.isolation.process), and passes when the program exits cleanly.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from mergekit_cycleqd.evaluate.base import (
    Evaluator,
    EvaluatorOptions,
    GenerationConfig,
    Message,
    ModelBackend,
    TaskResult,
)
from mergekit_cycleqd.evaluate.id_selection import IdSpec, expand_ids
from mergekit_cycleqd.evaluate.isolation.process import ProcessLimits, run_python

INSTRUCTION = (
    "Solve the following Python programming problem.\n\n"
    "{text}\n\n"
    "Your function must have the name and signature used in this test, which it has to pass:\n"
    "{test}\n\n"
    "Answer with the complete Python code (imports included) in one ```python code block."
)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


class MBPPOptions(EvaluatorOptions):
    """Recipe options of the ``mbpp`` evaluator."""

    path: Path = Field(description="MBPP JSONL file (mbpp.jsonl, one problem per line)")
    task_ids: list[IdSpec] = Field(
        default_factory=lambda: ["11-510"],
        description="problem ids and inclusive 'a-b' ranges; default: the test split",
    )
    max_new_tokens: int = Field(512, gt=0)
    system_prompt: str | None = None
    timeout_s: float = Field(10.0, gt=0, description="wall-clock limit per program")
    memory_mb: int = Field(1024, gt=0, description="address-space limit per program")
    concurrency: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        gt=0,
        description="programs run at the same time",
    )

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"MBPP file {str(value)!r} does not exist or is not a file")
        return value

    @field_validator("task_ids")
    @classmethod
    def _ids_parse(cls, value: list[IdSpec]) -> list[IdSpec]:
        if not expand_ids(value, "task_ids"):
            raise ValueError("task_ids selects no problem")
        return value


def load_mbpp(path: Path) -> dict[int, dict[str, Any]]:
    """Problems by task id; a malformed line is reported with its file and line."""
    required = ("task_id", "text", "test_list")
    problems: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            missing = [key for key in required if key not in row]
            if missing:
                raise ValueError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
            if not row["test_list"]:
                raise ValueError(f"{path}:{number}: field test_list is empty")
            problems[int(row["task_id"])] = row
    return problems


def build_prompt(problem: dict[str, Any], system_prompt: str | None = None) -> list[Message]:
    """The chat conversation for one problem (the backend applies the chat template)."""
    user = INSTRUCTION.format(text=problem["text"].strip(), test=problem["test_list"][0])
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user})
    return messages


def extract_code(reply: str) -> str:
    """The code in a reply: the first Python (or untagged) fenced block, else the reply.

    An unterminated fence (generation cut by the token limit) counts up to the end.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(reply)]
    for lang, body in blocks:
        if lang in ("python", "py", "python3", ""):
            return body
    if blocks:
        return blocks[0][1]
    return reply


def build_program(code: str, problem: dict[str, Any]) -> str:
    """Candidate code, the problem's setup code, then every test assert."""
    parts = [code, problem.get("test_setup_code") or "", "\n".join(problem["test_list"])]
    return "\n\n".join(parts) + "\n"


class MBPPEvaluator(Evaluator):
    """pass@1 on the chosen MBPP problems; ``score`` is pass@1."""

    Options = MBPPOptions

    def __init__(self, options: MBPPOptions):
        super().__init__(options)
        self.options: MBPPOptions = options
        problems = load_mbpp(options.path)
        ids = expand_ids(options.task_ids, "task_ids")
        unknown = [i for i in ids if i not in problems]
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise ValueError(f"task_ids: id(s) not in {options.path}: {shown}")
        self.problems = [problems[i] for i in ids]
        self.limits = ProcessLimits(timeout_s=options.timeout_s, memory_mb=options.memory_mb)

    def prompts(self) -> list[list[Message]]:
        return [build_prompt(p, self.options.system_prompt) for p in self.problems]

    def evaluate(self, backend: ModelBackend) -> TaskResult:
        config = GenerationConfig(max_new_tokens=self.options.max_new_tokens)
        replies = backend.generate(self.prompts(), config)
        return self.score_replies(replies)

    def score_replies(self, replies: list[str]) -> TaskResult:
        """Run every reply's code against its problem's tests (concurrently, bounded)."""
        if len(replies) != len(self.problems):
            raise ValueError(f"expected {len(self.problems)} replies, got {len(replies)}")
        programs = [
            build_program(extract_code(reply), problem)
            for reply, problem in zip(replies, self.problems, strict=True)
        ]
        with ThreadPoolExecutor(max_workers=self.options.concurrency) as pool:
            results = list(pool.map(lambda source: run_python(source, self.limits), programs))
        samples = [
            {
                "task_id": problem["task_id"],
                "reply": reply,
                "passed": result.ok,
                "error": result.error_summary(),
            }
            for problem, reply, result in zip(self.problems, replies, results, strict=True)
        ]
        passed = sum(sample["passed"] for sample in samples)
        pass_at_1 = passed / len(samples)
        return TaskResult(
            score=pass_at_1,
            metrics={"pass@1": pass_at_1, "passed": float(passed), "total": float(len(samples))},
            samples=samples,
        )
