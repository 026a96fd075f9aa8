"""MBPP asserts split into the candidate's calls and a judge that never runs candidate code.

``assert similar_elements((3, 4), (4, 5)) == (4,)`` becomes the call
``similar_elements((3, 4), (4, 5))`` (run in the sandbox by ``harness``) and the check
``assert _strict_equal(_v[0], (4,))``, run by a separate judge program over the decoded,
plain values. A call is every call of a name that is not a builtin (the candidate's
functions and classes); the judge keeps what surrounds it (``set(...)``,
``math.isclose(...)``). Where a side of ``==`` is a literal of builtin types, the other
side must have exactly its type (``True`` is not ``1``; a ``str`` subclass is not a
``str``), which a lying ``__eq__`` cannot pass because only builtins reach the judge.
"""

from __future__ import annotations

import ast
import builtins
import json
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cycleqd_evaluators.code import _runtime
from cycleqd_evaluators.code.harness import CallOutcome
from cycleqd_evaluators.isolation.process import ProcessLimits, run_python

_BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True)
class SplitAssert:
    """One assert: the call expressions the sandbox evaluates, and the judge's check."""

    calls: tuple[str, ...]
    check: str
    modules: tuple[str, ...]


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


class _Splitter(ast.NodeTransformer):
    def __init__(self, first_index: int, defined: frozenset[str]):
        self.calls: list[str] = []
        self.defined = defined
        self.first_index = first_index
        self.free: set[str] = set()

    def visit_Call(self, node: ast.Call) -> ast.AST:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name is not None and (name not in _BUILTINS or name in self.defined):
            self.calls.append(ast.unparse(node))
            index = self.first_index + len(self.calls) - 1
            return ast.Subscript(
                value=ast.Name(id="_v", ctx=ast.Load()),
                slice=ast.Constant(value=index),
                ctx=ast.Load(),
            )
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id not in _BUILTINS or node.id in self.defined:
            self.free.add(node.id)
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        literal = len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)
        literal = literal and (_is_literal(node.left) or _is_literal(node.comparators[0]))
        node = self.generic_visit(node)
        if not literal:
            return node
        return ast.Call(
            func=ast.Name(id="_strict_equal", ctx=ast.Load()),
            args=[node.left, node.comparators[0]],
            keywords=[],
        )


def defined_names(code: str) -> frozenset[str]:
    """Functions and classes the reference solution defines (``sum`` may be the candidate's)."""
    try:
        with warnings.catch_warnings():  # old reference code has invalid escapes like '\w'
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
    except SyntaxError:
        return frozenset()
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return frozenset(node.name for node in tree.body if isinstance(node, kinds))


def split_assert(
    source: str, *, first_index: int = 0, defined: frozenset[str] = frozenset()
) -> SplitAssert:
    """Split one MBPP test line; ValueError when it is not a single assert.

    A call of a name in ``defined`` is the candidate's even when a builtin has that name.
    """
    try:
        tree = ast.parse(source.strip())
    except SyntaxError as error:
        raise ValueError(f"test is not valid Python ({error.msg}): {source!r}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise ValueError(f"test is not a single assert statement: {source!r}")
    splitter = _Splitter(first_index, defined)
    statement = splitter.visit(tree.body[0])
    check = ast.unparse(ast.fix_missing_locations(statement))
    return SplitAssert(tuple(splitter.calls), check, tuple(sorted(splitter.free)))


def split_tests(tests: list[str], *, reference: str = "") -> list[SplitAssert]:
    """Split every assert, numbering calls across them (``_v`` is one list per problem)."""
    defined = defined_names(reference)
    out: list[SplitAssert] = []
    for test in tests:
        first = sum(len(s.calls) for s in out)
        out.append(split_assert(test, first_index=first, defined=defined))
    return out


_JUDGE = """
import json as _json
_MARK, _CASES = _json.loads({payload!r})
_verdicts = []
for _case in _CASES:
    _reason = None
    _values = [decode(item) for item in _case["values"]]
    _env = {{"_v": _values, "_strict_equal": strict_equal}}
    for _name in _case["modules"]:
        try:
            _env[_name] = __import__(_name)
        except ImportError:
            pass
    for _check, _indices in _case["checks"]:
        _raised = [_values[i] for i in _indices if isinstance(_values[i], Raised)]
        if _raised:
            _reason = _raised[0].name
            break
        try:
            exec(_check, _env)
        except AssertionError:
            _reason = "AssertionError: " + _check
            break
        except Exception as _error:
            _reason = "%s: %s" % (type(_error).__name__, _error)
            break
    _verdicts.append(_reason)
print(_MARK + _json.dumps(_verdicts))
"""


MAX_VALUES_CHARS = 1_000_000
"""A problem whose returned values encode to more than this fails without being judged."""
BATCH_CHARS = 8_000_000


def judge(
    outcomes: list[CallOutcome], splits: list[list[SplitAssert]], limits: ProcessLimits
) -> list[str | None]:
    """Check every problem's decoded values in judge programs; None = passed, else why.

    A judge program holds no candidate code, only plain values and the dataset's asserts;
    it still runs in the sandbox because the asserts are data from a file. Problems are
    judged in batches of bounded size, so huge results cannot stall the others.
    """
    verdicts: list[str | None] = [o.error for o in outcomes]
    batch: list[tuple[int, dict[str, Any]]] = []
    size = 0
    for index, (outcome, split) in enumerate(zip(outcomes, splits, strict=True)):
        if not outcome.ok:
            continue
        values = [_encode_decoded(v) for v in outcome.values]
        chars = len(json.dumps(values))
        if chars > MAX_VALUES_CHARS:
            verdicts[index] = f"returned values too large to judge ({chars} > {MAX_VALUES_CHARS})"
            continue
        checks, start = [], 0
        for part in split:
            checks.append([part.check, list(range(start, start + len(part.calls)))])
            start += len(part.calls)
        modules = sorted({m for part in split for m in part.modules})
        batch.append((index, {"values": values, "checks": checks, "modules": modules}))
        size += chars
        if size > BATCH_CHARS:
            _judge_batch(batch, verdicts, limits)
            batch, size = [], 0
    if batch:
        _judge_batch(batch, verdicts, limits)
    return verdicts


def _judge_batch(
    batch: list[tuple[int, dict[str, Any]]], verdicts: list[str | None], limits: ProcessLimits
) -> None:
    results = _run_judge([case for _, case in batch], limits)
    for (index, _), verdict in zip(batch, results, strict=True):
        verdicts[index] = verdict


def _encode_decoded(value: Any) -> Any:
    if isinstance(value, _runtime.Raised):
        return ["X", value.name]
    return _runtime.encode(value)


def _run_judge(cases: list[dict[str, Any]], limits: ProcessLimits) -> list[str | None]:
    mark = f"@@verdicts-{secrets.token_hex(8)}@@"
    program = Path(_runtime.__file__).read_text(encoding="utf-8") + _JUDGE.format(
        payload=json.dumps([mark, cases])
    )
    result = run_python(program, limits)
    lines = [line for line in result.stdout.splitlines() if line.startswith(mark)]
    if not lines:
        raise RuntimeError(f"the MBPP judge program failed: {result.error_summary()}")
    verdicts = json.loads(lines[-1][len(mark) :])
    if len(verdicts) != len(cases):
        raise RuntimeError(f"the MBPP judge returned {len(verdicts)} verdicts for {len(cases)}")
    return verdicts
