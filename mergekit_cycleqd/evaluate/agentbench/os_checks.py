"""Judging OS-interaction answers: ``match`` strings and ``check`` chains.

The standard AgentBench checker scripts are implemented here from their
documented behaviour (not copied): comparisons of the answer with the
reference solution's output run on the host (they only compare strings), and
checkers that exercise a command the agent built (``calc``, ``count``,
``date-format``) run inside the task's sandbox.

A check chain runs in order; script *i* receives the agent's answer followed
by the output of every earlier step; a ``None`` step runs the task's reference
solution and contributes its output. Any failing step fails the task.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mergekit_cycleqd.evaluate.agentbench.os_tasks import OSTask
    from mergekit_cycleqd.evaluate.isolation import Sandbox


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
    "1 + 2", "7 - 10", "3 * 4 + 5", "2 * (9 / 3)", "(1 + 2) * (3 + 4)", "10 / 4", "100 - 3 * 7",
    "((2 + 3) * 4 - 5) / 3", "1.5 * 4", "-3 + 8 * 2", "9 / 3 / 3", "2 * 1", "6 * (9 / 3) + 7",
    "(8 - 2) * (5 + 1) / 4",
]
_CALC_EXTRA = [
    "12 + 30 / 6", "(7 + 3) * (2 - 5)", "1 / 8", "3 * (4 + (5 - 2) * 2)", "0.25 * 16", "45 - 15 / 3",
    "(100 + 200) / (3 * 5)", "8 * 8 - 8", "2.5 + 2.5 * 2", "(9 - 4) * (9 + 4)", "7 / 2 * 2",
    "1000 / 10 / 10", "(1 + 1) * (1 + 1) * (1 + 1)", "33 - (11 * 2)", "4 / (2 + 2)", "6 + 7 * 8",
]


def _calc_script(expressions: Sequence[str]) -> str:
    lines = "\n".join(expressions)
    return f"""status=0
while IFS= read -r expr; do
  want=$(python3 -c "print(float($expr))")
  got=$(calc "$expr" 2>&1 | tail -n 1)
  if ! python3 -c 'import sys
try:
    sys.exit(0 if abs(float(sys.argv[1]) - float(sys.argv[2])) < 1e-5 else 1)
except ValueError:
    sys.exit(1)' "$want" "$got"; then
    echo "calc $expr printed '$got', expected $want"; status=1
  fi
done <<'CYCLEQD_EXPRESSIONS'
{lines}
CYCLEQD_EXPRESSIONS
exit $status
"""


_COUNT_SCRIPT = """for dir in /usr/local/bin /root /bin /lib /dev /usr/include; do
  want=$(find "$dir" -type f 2>/dev/null | wc -l)
  got=$(count "$dir" 2>/dev/null)
  if [ "$(echo $got)" != "$want" ]; then echo "count $dir printed '$got', expected $want"; exit 1; fi
done
"""

_DATE_FORMAT_SCRIPT = """while IFS='|' read -r day format; do
  want=$(date -d "$day" "+$format")
  got=$(date-format "$day" "$format" 2>/dev/null)
  if [ "$got" != "$want" ]; then echo "date-format $day '$format' printed '$got', expected '$want'"; exit 1; fi
done <<'CYCLEQD_DATES'
2023-5-1|%Y/%m/%d
2021-12-31|%d.%m.%Y
2000-02-29|%A, %B %d
1999-7-4|%y%m%d
2024-01-09|%j
2010-10-10|%Y-%m-%dT00:00
CYCLEQD_DATES
"""

SANDBOX_CHECKS: dict[str, str] = {
    "check/0.sh": _calc_script(_CALC_EXPRESSIONS),
    "checking/0.sh": _calc_script(_CALC_EXPRESSIONS + _CALC_EXTRA),
    "check/1.sh": _COUNT_SCRIPT,
    "checking/1.sh": _COUNT_SCRIPT,
    "checking/2.sh": _DATE_FORMAT_SCRIPT,
}
"""Checkers that test a command the agent had to create, run in the task's sandbox."""

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
            detail = f"{script.builtin}: answer {given.strip()[:200]!r} vs {outputs[0].strip()[:200]!r}"
            if not ok:
                return Verdict(False, detail)
            outputs.append("")
            continue
        code = SANDBOX_CHECKS[script.builtin] if script.builtin else script.code
        result = sandbox.run(code, [given, *outputs], script.language, timeout)
        if result.exit_code != 0:
            why = "timed out" if result.timed_out else f"exit code {result.exit_code}"
            return Verdict(False, f"check step {step} ({script.origin}) {why}: {result.output.strip()[-300:]}")
        outputs.append(result.output)
    return Verdict(True, f"all {len(task.checks)} check steps passed")
