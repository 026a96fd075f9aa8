"""Judging OS-interaction answers: ``match`` strings and ``check`` chains.

The standard AgentBench checker scripts are implemented here from their
documented behaviour (not copied): comparisons of the answer with the
reference solution's output run on the host (they only compare strings);
checkers that exercise a command the agent built (``calc``, ``count``,
``date-format``) run that command in the agent's view of the sandbox and
compute what it should print here or with the judge's tools. The reference
solution and any other checker script run through ``Sandbox.judge``: after the
agent's shell is stopped, in a judge shell whose programs and libraries the
agent cannot have changed (see ``isolation.views``).

A check chain runs in order; script *i* receives the agent's answer followed
by the output of every earlier step; a ``None`` step runs the task's reference
solution and contributes its output. Any failing step fails the task.
"""

from __future__ import annotations

import ast
import operator
import re
import secrets
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from cycleqd_evaluators.agentbench.os_tasks import OSTask
    from cycleqd_evaluators.isolation import CommandResult, Sandbox


def _int_equal(answer: str, reference: str) -> bool:
    """Python ``int()`` on both (whitespace tolerated; "42 files" or "3.0" fail)."""
    try:
        return int(answer) == int(reference)
    except ValueError:
        return False


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _string_equal(answer: str, reference: str) -> bool:
    return _normalise(answer) == _normalise(reference)


_SIZE_UNITS = {"": 0, "B": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([BKMGTP]?)(?:B|BYTES?|IB)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> float | None:
    """Bytes in "4096", "4K", "4.0K", "4KB", "1.5 MiB" (1024-based); None if not a size.

    Deliberately more lenient than upstream's checker, which rejects "4.0K" --
    the very format ``du -sh`` prints for small folders, so its own reference
    solution could fail -- and "4KB".
    """
    match = _SIZE.match(text)
    if not match:
        return None
    return float(match.group(1)) * 1024 ** _SIZE_UNITS[match.group(2).upper()]


def _size_equal(answer: str, reference: str) -> bool:
    a, b = parse_size(answer), parse_size(reference)
    return a is not None and b is not None and a == b


HOST_CHECKS: dict[str, Callable[[str, str], bool]] = {
    "check/integer-match.py": _int_equal,
    "check/string-match.py": _string_equal,
    "check/size-match.py": _size_equal,
    "check/containing.py": lambda answer, reference: _normalise(reference) in _normalise(answer),
    "check/in.py": lambda answer, reference: _normalise(answer) in _normalise(reference),
}
"""Checkers comparing argv[1] (the answer) with argv[2] (the reference output)."""

_CALC_EXPRESSIONS = [
    "1 + 2",
    "7 - 10",
    "3 * 4 + 5",
    "2 * (9 / 3)",
    "(1 + 2) * (3 + 4)",
    "10 / 4",
    "100 - 3 * 7",
    "((2 + 3) * 4 - 5) / 3",
    "1.5 * 4",
    "-3 + 8 * 2",
    "9 / 3 / 3",
    "2 * 1",
    "6 * (9 / 3) + 7",
    "(8 - 2) * (5 + 1) / 4",
]
_CALC_EXTRA = [
    "12 + 30 / 6",
    "(7 + 3) * (2 - 5)",
    "1 / 8",
    "3 * (4 + (5 - 2) * 2)",
    "0.25 * 16",
    "45 - 15 / 3",
    "(100 + 200) / (3 * 5)",
    "8 * 8 - 8",
    "2.5 + 2.5 * 2",
    "(9 - 4) * (9 + 4)",
    "7 / 2 * 2",
    "1000 / 10 / 10",
    "(1 + 1) * (1 + 1) * (1 + 1)",
    "33 - (11 * 2)",
    "4 / (2 + 2)",
    "6 + 7 * 8",
]


_COUNT_DIRS = ("/usr/local/bin", "/root", "/bin", "/lib", "/dev", "/usr/include")
_DATES = (
    ("2023-5-1", "%Y/%m/%d"),
    ("2021-12-31", "%d.%m.%Y"),
    ("2000-02-29", "%A, %B %d"),
    ("1999-7-4", "%y%m%d"),
    ("2024-01-09", "%j"),
    ("2010-10-10", "%Y-%m-%dT00:00"),
)
_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def arithmetic(expression: str) -> float:
    """The value of a + - * / expression of numbers, computed here (never by a sandbox tool)."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not plain arithmetic: {expression!r}")

    return value(ast.parse(expression, mode="eval").body)


def _outputs(run: Callable[[str], CommandResult], lines: Sequence[str]) -> list[str] | None:
    """The last output line of each command, run as one script (None when it did not finish)."""
    separator = f"__CQD_{secrets.token_hex(8)}__"
    result = run(
        "".join(f"{line} 2>/dev/null </dev/null | tail -n 1; echo {separator}\n" for line in lines)
    )
    if result.exit_code is None:
        return None
    parts = result.output.split(separator + "\n")
    return [part.strip() for part in parts[: len(lines)]] if len(parts) > len(lines) else None


def _compare(
    name: str,
    inputs: Sequence[str],
    got: list[str] | None,
    want: list[str] | None,
    same: Callable[[str, str], bool],
) -> Verdict:
    if got is None or want is None:
        return Verdict(False, f"{name}: the commands did not finish")
    for given, g, w in zip(inputs, got, want, strict=True):
        if not same(g, w):
            return Verdict(False, f"{name}: {given} printed {g!r}, expected {w!r}")
    return Verdict(True, f"{name}: all {len(inputs)} cases agree")


def _close(got: str, want: str) -> bool:
    try:
        return abs(float(got) - float(want)) < 1e-5
    except ValueError:
        return False


def _check_calc(expressions: Sequence[str]) -> Callable[[Sandbox, float], Verdict]:
    def check(sandbox: Sandbox, timeout: float) -> Verdict:
        got = _outputs(
            lambda s: sandbox.run(s, timeout=timeout),
            [f"calc {shlex.quote(e)}" for e in expressions],
        )
        want = [repr(arithmetic(e)) for e in expressions]
        return _compare("calc", expressions, got, want, _close)

    return check


def _check_count(sandbox: Sandbox, timeout: float) -> Verdict:
    got = _outputs(lambda s: sandbox.run(s, timeout=timeout), [f"count {d}" for d in _COUNT_DIRS])
    want = _outputs(
        lambda s: sandbox.judge(s, timeout=timeout),
        [f"find {d} -type f | wc -l" for d in _COUNT_DIRS],
    )
    return _compare("count", _COUNT_DIRS, got, want, lambda g, w: g == w)


def _check_date_format(sandbox: Sandbox, timeout: float) -> Verdict:
    cases = [f"{shlex.quote(day)} {shlex.quote(form)}" for day, form in _DATES]
    got = _outputs(lambda s: sandbox.run(s, timeout=timeout), [f"date-format {c}" for c in cases])
    want = _outputs(
        lambda s: sandbox.judge(s, timeout=timeout),
        [f"date -d {shlex.quote(day)} {shlex.quote('+' + form)}" for day, form in _DATES],
    )
    return _compare("date-format", cases, got, want, lambda g, w: g == w)


SANDBOX_CHECKS: dict[str, Callable[[Sandbox, float], Verdict]] = {
    "check/0.sh": _check_calc(_CALC_EXPRESSIONS),
    "checking/0.sh": _check_calc(_CALC_EXPRESSIONS + _CALC_EXTRA),
    "check/1.sh": _check_count,
    "checking/1.sh": _check_count,
    "checking/2.sh": _check_date_format,
}
"""Checkers of a command the agent had to create: the agent's command runs in its own
view of the sandbox; what it should print is computed here or by the judge's tools."""

BUILTIN_CHECKS = frozenset(HOST_CHECKS) | frozenset(SANDBOX_CHECKS)


@dataclass
class Verdict:
    correct: bool
    detail: str


def judge_match(task: OSTask, answer: str | None) -> Verdict:
    """Exact (stripped) string or regex match of the answer."""
    if answer is None:
        return Verdict(False, "no answer")
    if task.match_regex is not None:
        found = re.search(task.match_regex, answer.strip()) is not None
        return Verdict(found, f"regex {task.match_regex!r} {'found' if found else 'not found'}")
    correct = answer.strip() == str(task.match).strip()
    return Verdict(correct, f"answer {answer.strip()!r} vs expected {task.match!r}")


def judge(
    task: OSTask,
    answer: str | None,
    sandbox: Sandbox,
    reference: Callable[[], str | None],
    timeout: float,
) -> Verdict:
    """Run ``match`` or the check chain; ``reference()`` returns the example's output."""
    if not task.checks:
        return judge_match(task, answer)
    given = "" if answer is None else answer
    outputs: list[str] = []
    for step, script in enumerate(task.checks):
        if script is None:
            output = reference()
            if output is None:
                return Verdict(False, "the reference solution failed to run")
            outputs.append(output)
            continue
        if script.builtin in HOST_CHECKS:
            if answer is None or not outputs:
                return Verdict(False, f"{script.builtin}: no answer or no reference output")
            # As the scripts see argv: [1] is the answer, [2] the first earlier output.
            ok = HOST_CHECKS[script.builtin](given, outputs[0])
            detail = (
                f"{script.builtin}: answer {given.strip()[:200]!r} vs {outputs[0].strip()[:200]!r}"
            )
            if not ok:
                return Verdict(False, detail)
            outputs.append("")
            continue
        if script.builtin in SANDBOX_CHECKS:
            verdict = SANDBOX_CHECKS[script.builtin](sandbox, timeout)
            if not verdict.correct:
                return verdict
            outputs.append("")
            continue
        result = sandbox.judge(script.code, [given, *outputs], script.language, timeout)
        if result.exit_code != 0:
            why = "timed out" if result.timed_out else f"exit code {result.exit_code}"
            return Verdict(
                False, f"check step {step} ({script.origin}) {why}: {result.output.strip()[-300:]}"
            )
        outputs.append(result.output)
    return Verdict(True, f"all {len(task.checks)} check steps passed")
