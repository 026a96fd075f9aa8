"""MBPP (Austin et al., 2021) and MBPP+ / HumanEval+ (evalplus): pass@1 of greedy code generation.

The data is the original MBPP JSONL or an evalplus release file (``data.py``); the prompt
and code extraction follow a named protocol (``protocols.py``). The code runs in the
sandbox (``cycleqd_evaluators.isolation``), which only reports what the candidate's
functions returned (``harness.py``); the verdict is given outside the candidate's process
(``judge.py`` for MBPP's asserts, ``plus.py`` for evalplus's inputs), so an early exit or a
tampered interpreter is a failure, never a pass.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from cycleqd_evaluators.code import _runtime
from cycleqd_evaluators.code.data import Problem, load_problems, require_evalplus
from cycleqd_evaluators.code.harness import CallOutcome, run_calls
from cycleqd_evaluators.code.judge import SplitAssert, judge, split_tests
from cycleqd_evaluators.code.plus import expected_outputs, output_matches
from cycleqd_evaluators.code.protocols import Protocol, ProtocolName
from cycleqd_evaluators.id_selection import IdSpec, expand_ids
from cycleqd_evaluators.isolation.process import ProcessLimits
from mergekit_cycleqd.evaluate import (
    Evaluator,
    EvaluatorOptions,
    GenerationConfig,
    ModelBackend,
    Prompt,
    TaskFileError,
    TaskResult,
)

MBPP_TEST_SPLIT = ["11-510"]


class MBPPOptions(EvaluatorOptions):
    """Recipe options of the ``mbpp`` evaluator."""

    path: Path = Field(
        description="MBPP JSONL (mbpp.jsonl) or an evalplus release file (MbppPlus*.jsonl[.gz])"
    )
    task_ids: list[IdSpec] | None = Field(
        None,
        description="problem numbers and inclusive 'a-b' ranges (MBPP+: the N of 'Mbpp/N'); "
        "default: MBPP's test split 11-510, or every problem of an evalplus file",
    )
    tests: Literal["base", "plus"] = Field(
        "base", description="evalplus files: base tests only, or base + plus tests"
    )
    protocol: ProtocolName = Field(
        "default", description="prompt and post-processing: default, or cycleqd (reference code)"
    )
    max_new_tokens: int = Field(512, gt=0)
    system_prompt: str | None = None
    timeout_s: float = Field(10.0, gt=0, description="wall-clock limit per program")
    memory_mb: int = Field(1024, gt=0, description="memory limit per program")
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
    def _ids_parse(cls, value: list[IdSpec] | None) -> list[IdSpec] | None:
        if value is not None and not expand_ids(value, "task_ids"):
            raise ValueError("task_ids selects no problem")
        return value


def select(problems: dict[int, Problem], spec: list[IdSpec] | None, path: Path) -> list[Problem]:
    """The chosen problems in order. MBPP ids must all exist; evalplus files have gaps, so a
    range there selects the problems it covers (and must cover at least one)."""
    plus = any(p.is_plus for p in problems.values())
    if spec is None:
        return list(problems.values()) if plus else select(problems, MBPP_TEST_SPLIT, path)
    ids = expand_ids(spec, "task_ids")
    if plus:
        chosen = [problems[i] for i in ids if i in problems]
        if not chosen:
            raise TaskFileError(f"task_ids: {spec} selects no problem of {path}")
        return chosen
    unknown = [i for i in ids if i not in problems]
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
        raise TaskFileError(f"task_ids: id(s) not in {path}: {shown}")
    return [problems[i] for i in ids]


class MBPPEvaluator(Evaluator):
    """pass@1 on the chosen problems; ``score`` is pass@1 (base, or base + plus, tests)."""

    Options = MBPPOptions

    def __init__(self, options: MBPPOptions):
        super().__init__(options)
        self.options: MBPPOptions = options
        self.problems = select(load_problems(options.path), options.task_ids, options.path)
        self.plus = self.problems[0].is_plus
        if options.tests == "plus" and not self.plus:
            raise TaskFileError(
                f"tests: plus needs an evalplus (MBPP+) file; {options.path} is original MBPP "
                "(use tests: base, or point path at MbppPlus.jsonl)"
            )
        self.splits: list[list[SplitAssert]] = []
        if not self.plus:
            for problem in self.problems:
                try:
                    self.splits.append(split_tests(problem.tests, reference=problem.canonical))
                except ValueError as error:
                    raise TaskFileError(
                        f"{options.path}: task {problem.task_id}: {error}"
                    ) from None
        self.protocol = Protocol(options.protocol, system_prompt=options.system_prompt)
        if options.protocol == "cycleqd":
            require_evalplus("protocol: cycleqd sanitises code with evalplus")
        self.limits = ProcessLimits(
            timeout_s=options.timeout_s, memory_mb=options.memory_mb, max_output_chars=8_000_000
        )
        self._expected: list[list[Any]] | None = None

    def prompts(self) -> list[Prompt]:
        return [self.protocol.prompt(p) for p in self.problems]

    def evaluate(self, backend: ModelBackend) -> TaskResult:
        config = GenerationConfig(
            max_new_tokens=self.options.max_new_tokens, stop=self.protocol.stop
        )
        replies = backend.generate(self.prompts(), config)
        return self.score_replies(replies)

    def _inputs(self, problem: Problem) -> list[Any]:
        plus = problem.plus_inputs if self.options.tests == "plus" else []
        return [*problem.base_inputs, *plus]

    def _run_all(self, codes: list[str], limits: ProcessLimits | None = None) -> list[CallOutcome]:
        limits = limits or self.limits

        def run(pair: tuple[str, int]) -> CallOutcome:
            code, index = pair
            problem = self.problems[index]
            if self.plus:
                calls = [_runtime.encode(list(i)) for i in self._inputs(problem)]
                return run_calls(code, calls, limits, entry_point=problem.entry_point)
            calls = [c for part in self.splits[index] for c in part.calls]
            return run_calls(code, calls, limits, setup=problem.setup)

        with ThreadPoolExecutor(max_workers=self.options.concurrency) as pool:
            return list(pool.map(run, zip(codes, range(len(codes)))))

    def expected(self) -> list[list[Any]]:
        """The canonical solutions' outputs (evalplus files), computed once in the sandbox."""
        if self._expected is None:
            # a one-off cost per evaluator: give the reference solutions room
            limits = replace(self.limits, timeout_s=max(60.0, self.options.timeout_s))
            outcomes = self._run_all([p.canonical for p in self.problems], limits)
            broken = [(p.task_id, o.error) for p, o in zip(self.problems, outcomes) if not o.ok]
            if broken:
                raise TaskFileError(
                    f"{self.options.path}: the canonical solution of {broken[0][0]} failed in the "
                    f"sandbox ({broken[0][1]}); raise timeout_s/memory_mb or drop the task "
                    f"({len(broken)} task(s) affected)"
                )
            self._expected = [
                expected_outputs(p, o.values) for p, o in zip(self.problems, outcomes)
            ]
        return self._expected

    def score_replies(self, replies: list[str]) -> TaskResult:
        """Run every reply's code on its problem's tests (concurrently, bounded)."""
        if len(replies) != len(self.problems):
            raise ValueError(f"expected {len(self.problems)} replies, got {len(replies)}")
        codes = [self.protocol.code(r, p) for r, p in zip(replies, self.problems, strict=True)]
        outcomes = self._run_all(codes)
        if self.plus:
            verdicts, base = self._plus_verdicts(outcomes)
        else:
            judge_limits = ProcessLimits(
                timeout_s=max(60.0, self.options.timeout_s),
                memory_mb=2048,
                max_output_chars=8_000_000,
            )
            verdicts = judge(outcomes, self.splits, judge_limits)
            base = verdicts
        samples = [
            {"task_id": p.task_id, "reply": r, "passed": v is None, "error": v}
            for p, r, v in zip(self.problems, replies, verdicts, strict=True)
        ]
        passed = sum(s["passed"] for s in samples)
        total = len(samples)
        metrics = {"pass@1": passed / total, "passed": float(passed), "total": float(total)}
        if self.plus:
            metrics["base_pass@1"] = sum(v is None for v in base) / total
            if self.options.tests == "plus":
                metrics["plus_pass@1"] = passed / total
        return TaskResult(score=passed / total, metrics=metrics, samples=samples)

    def _plus_verdicts(
        self, outcomes: list[CallOutcome]
    ) -> tuple[list[str | None], list[str | None]]:
        """(verdict on the chosen tests, verdict on base tests) per problem; None = passed."""
        all_verdicts, base_verdicts = [], []
        for problem, outcome, expected in zip(
            self.problems, outcomes, self.expected(), strict=True
        ):
            if not outcome.ok:
                all_verdicts.append(outcome.error)
                base_verdicts.append(outcome.error)
                continue
            inputs = self._inputs(problem)
            failed = [
                i
                for i, (inp, out, exp) in enumerate(
                    zip(inputs, outcome.values, expected, strict=True)
                )
                if not output_matches(problem, inp, out, exp)
            ]
            n_base = len(problem.base_inputs)
            base_failed = [i for i in failed if i < n_base]
            all_verdicts.append(_describe(failed, n_base, outcome.values))
            base_verdicts.append(_describe(base_failed, n_base, outcome.values))
        return all_verdicts, base_verdicts


def _describe(failed: list[int], n_base: int, values: list[Any]) -> str | None:
    if not failed:
        return None
    first = failed[0]
    which = f"base input {first}" if first < n_base else f"plus input {first - n_base}"
    value = values[first]
    got = value.name if isinstance(value, _runtime.Raised) else f"got {value!r}"[:200]
    return f"{len(failed)} failed test input(s); first: {which} ({got})"
