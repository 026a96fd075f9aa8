"""MBPP+ / HumanEval+ verdicts: the candidate's outputs against the canonical solution's.

Expected outputs come from running the problem's canonical solution on the same inputs
in the sandbox, as evalplus does; the comparison happens here, outside the sandbox, on
decoded plain values (``_runtime``), so nothing the candidate returns can run code in the
judge. The rules are evalplus 0.3.1's (``evalplus.eval.unsafe_execute``): exact equality;
its special oracles for a few MBPP problems (set comparison, "output is not None",
``surface_Area``, ``digit_distance_nums``, ``sum_div``, ``are_equivalent``); and, when that
fails and the problem has a tolerance (``atol``, or 1e-6 for float outputs),
the same type, the same length and ``numpy.allclose(rtol=1e-7, atol=atol)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cycleqd_evaluators.code._runtime import Opaque, Raised
from cycleqd_evaluators.code.data import Problem


def _oracles() -> Any:
    from evalplus.eval import _special_oracle

    return _special_oracle


def expected_outputs(problem: Problem, values: list[Any]) -> list[Any]:
    """The canonical solution's outputs as evalplus stores them (None-ness for some tasks)."""
    if problem.task_id.startswith("Mbpp/") and problem.entry_point in (
        _oracles().MBPP_OUTPUT_NOT_NONE_TASKS
    ):
        return [value is not None for value in values]
    return values


def _is_floats(value: Any) -> bool:
    if type(value) is float:
        return True
    return type(value) in (list, tuple) and bool(value) and all(type(v) is float for v in value)


def output_matches(problem: Problem, inputs: Any, out: Any, exp: Any) -> bool:
    """evalplus's verdict for one input (see the module docstring)."""
    if isinstance(out, Raised):
        return False
    if isinstance(out, Opaque) and not _not_none_task(problem):
        return False
    exact = _safe_equal(out, exp)
    entry = problem.entry_point
    if problem.task_id.startswith("Mbpp/"):
        oracles = _oracles()
        if entry == "are_equivalent":
            exact = True
        elif entry == "sum_div":
            exact = exact or _safe_equal(out, 0)
        elif entry == "surface_Area":
            exact = exact or _close(out, oracles._surface_Area(*inputs), problem.atol)
        elif entry == "digit_distance_nums":
            exact = exact or _safe_equal(out, oracles._digit_distance_nums(*inputs))
        elif entry in oracles.MBPP_OUTPUT_SET_EQ_TASKS:
            exact = _set_equal(out, exp)
        elif entry in oracles.MBPP_OUTPUT_NOT_NONE_TASKS:
            exact = out == exp if type(out) is bool else exp == (out is not None)
    if entry == "find_zero" and str(problem.task_id).startswith("HumanEval/"):
        try:
            return abs(_oracles()._poly(*inputs, out)) <= problem.atol
        except (TypeError, ValueError, OverflowError):
            return False
    atol = problem.atol
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if exact:
        return True
    if atol == 0 or type(out) is not type(exp):
        return False
    if isinstance(exp, (list, tuple)) and len(out) != len(exp):
        return False
    return _allclose(out, exp, atol)


def _not_none_task(problem: Problem) -> bool:
    return problem.task_id.startswith("Mbpp/") and problem.entry_point in (
        _oracles().MBPP_OUTPUT_NOT_NONE_TASKS
    )


def _safe_equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # plain values; e.g. a numpy-like truth error cannot occur, but stay safe
        return False


def _set_equal(a: Any, b: Any) -> bool:
    try:
        return set(a) == set(b)
    except TypeError:
        return False


def _close(a: Any, b: Any, atol: float) -> bool:
    try:
        return abs(a - b) <= atol
    except TypeError:
        return False


def _allclose(out: Any, exp: Any, atol: float) -> bool:
    try:
        return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))
    except (TypeError, ValueError):
        return False
