"""Run generated code on test inputs in the sandbox and bring back only plain values.

Why the sandbox never says "passed": the generated code runs in the same interpreter
as anything the sandbox would use to judge it, so it can end the process early
(``os._exit(0)``, ``sys.exit``), hook ``atexit``/``sys.excepthook``, replace builtins,
walk frames to read a secret, or return an object whose ``__eq__`` always says True.
So the sandbox program only *calls* the candidate: for each test it evaluates the call
expressions (never the expected values, which stay with the judge) and writes the
results, encoded as plain data (``_runtime.encode``), on one line of its standard
output. Everything the candidate can forge is a claim about what its function returned;
the judge (``judge.py`` for MBPP asserts, ``plus.py`` for MBPP+) compares those claims,
decoded into builtins, with expectations the sandbox never saw. A program that exits
early, stalls or prints no results line fails.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycleqd_evaluators.code import _runtime
from cycleqd_evaluators.isolation.process import ProcessLimits, SandboxResult, run_python

_RUNTIME_SOURCE = Path(_runtime.__file__).read_text(encoding="utf-8")

_DRIVER = """
import os as _os, sys as _sys
_MARK, _CODE, _SETUP, _ENTRY, _CALLS = {payload}
_out = _os.dup(1)
try:
    _null = _os.open(_os.devnull, _os.O_WRONLY)
    _os.dup2(_null, 1)
    _os.dup2(_null, 2)
except OSError:
    pass
_env = {{"__name__": "solution", "__builtins__": __builtins__}}


def _emit(payload):
    data = (_MARK + dumps(payload) + "\\n").encode()
    while data:
        data = data[_os.write(_out, data):]
    _os._exit(0)


def _reason(error):
    text = str(error)[:300]
    return type(error).__name__ + (": " + text if text else "")


try:
    exec(compile(_CODE, "solution.py", "exec"), _env)
    exec(compile(_SETUP, "test_setup.py", "exec"), _env)
    _fn = _env[_ENTRY] if _ENTRY else None
except BaseException as _error:
    _emit({{"load_error": _reason(_error)}})
_values = []
for _call in _CALLS:
    try:
        if isinstance(_call, str):
            _value = eval(compile(_call, "test.py", "eval"), _env)
        else:
            _value = _fn(*decode(_call))
        _values.append(encode(_value))
    except BaseException as _error:
        _values.append(["X", _reason(_error)])
_emit({{"values": _values}})
"""


@dataclass
class CallOutcome:
    """What the sandbox reported for one program: decoded values, or why there are none."""

    values: list[Any] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def call_program(
    code: str,
    calls: list[str | list[Any]],
    *,
    setup: str = "",
    entry_point: str | None = None,
    mark: str,
) -> str:
    """The sandbox program: the candidate's code, then each call, then one results line.

    A call is an expression (MBPP: the calls inside an assert) or the encoded argument
    list of ``entry_point`` (MBPP+ inputs).
    """
    payload = json.dumps([mark, code, setup, entry_point, calls])
    return _RUNTIME_SOURCE + _DRIVER.format(payload=f"__import__('json').loads({payload!r})")


def run_calls(
    code: str,
    calls: list[str | list[Any]],
    limits: ProcessLimits,
    *,
    setup: str = "",
    entry_point: str | None = None,
) -> CallOutcome:
    """Run the calls in a fresh sandbox and decode what came back."""
    mark = f"@@results-{secrets.token_hex(8)}@@"
    program = call_program(code, calls, setup=setup, entry_point=entry_point, mark=mark)
    return parse_outcome(run_python(program, limits), mark, len(calls))


def parse_outcome(result: SandboxResult, mark: str, n_calls: int) -> CallOutcome:
    """Decode the results line; no line (early exit, kill, timeout) is a failure."""
    if result.timed_out:
        return CallOutcome(error="timeout")
    lines = [line for line in result.stdout.splitlines() if line.startswith(mark)]
    if not lines:
        return CallOutcome(error=result.error_summary() or "the program ended before the tests ran")
    try:
        report = json.loads(lines[-1][len(mark) :])
        if "load_error" in report:
            return CallOutcome(error=str(report["load_error"]))
        values = [_runtime.decode(item) for item in report["values"]]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, OverflowError):
        return CallOutcome(error="malformed results line")
    if len(values) != n_calls:
        return CallOutcome(error=f"{len(values)} results for {n_calls} calls")
    return CallOutcome(values=values)
