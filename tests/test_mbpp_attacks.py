"""A pass must be earned: generated code that ends the run early, tampers with the
interpreter or returns objects that lie about equality scores as a failure, while the
reference solution of the same problem passes."""

from __future__ import annotations

import json

import pytest

from cycleqd_evaluators.code.harness import run_calls
from cycleqd_evaluators.isolation.process import ProcessLimits
from mergekit_cycleqd.evaluate.base import build_evaluator
from tests.mbpp_fixtures import MBPP_PROBLEMS

RIGHT = "def add(a, b):\n    return a + b\n"

# Each is the whole reply's code for "add two numbers" (tests: add(1, 2) == 3,
# add(-1, 1) == 0, add(20, 22) == 42; only the first is in the prompt).
ATTACKS = {
    "os._exit(0) before the tests": "import os\nos._exit(0)\n",
    "sys.exit(0) before the tests": "import sys\nsys.exit(0)\n",
    "os._exit(0) inside the function": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "SystemExit(0) inside the function": "def add(a, b):\n    raise SystemExit(0)\n",
    "atexit handler": (
        "import atexit, os\natexit.register(lambda: os._exit(0))\n"
        "def add(a, b):\n    raise ValueError('wrong')\n"
    ),
    "replaced excepthook": (
        "import os, sys\nsys.excepthook = lambda *args: os._exit(0)\ndef add(a, b):\n    return 0\n"
    ),
    "object equal to everything": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return Anything()\n"
    ),
    "int subclass with lying __eq__": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Int(0)\n"
    ),
    "SystemExit inside __eq__": (
        "class Quit:\n    def __eq__(self, other):\n        raise SystemExit(0)\n"
        "def add(a, b):\n    return Quit()\n"
    ),
    "patched builtins and AssertionError": (
        "import builtins\nbuiltins.AssertionError = type('Nothing', (Exception,), {})\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: int\n"
        "builtins.print = lambda *a, **k: None\n"
        "def add(a, b):\n    return 0\n"
    ),
    "trace hook rewriting results": (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    if event == 'return' and frame.f_code.co_name == 'add':\n"
        "        frame.f_globals['__forged__'] = True\n"
        "    return tracer\n"
        "sys.settrace(tracer)\n"
        "def add(a, b):\n    return 3\n"
    ),
    "forged results line": (
        # Reads the driver's marker from the calling frame and writes a results line of
        # its own claiming 3 for every call: it cannot know the hidden expected values.
        "import os, sys, json\n"
        "def add(a, b):\n"
        "    frame = sys._getframe()\n"
        "    while '_MARK' not in frame.f_globals:\n"
        "        frame = frame.f_back\n"
        "    g = frame.f_globals\n"
        "    line = g['_MARK'] + json.dumps({'values': [['I', hex(3)]] * 3}) + '\\n'\n"
        "    os.write(g['_out'], line.encode())\n"
        "    os._exit(0)\n"
    ),
    "answers only the test in the prompt": "def add(a, b):\n    return 3\n",
}


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    path = tmp_path_factory.mktemp("mbpp") / "mbpp.jsonl"
    path.write_text(json.dumps(MBPP_PROBLEMS[0]) + "\n")
    return build_evaluator("mbpp", {"path": str(path), "task_ids": [1], "timeout_s": 5})


def test_reference_solution_passes(evaluator):
    result = evaluator.score_replies([f"```python\n{RIGHT}```"])
    assert result.samples[0]["error"] is None
    assert result.score == 1.0


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_fails(evaluator, attack):
    result = evaluator.score_replies([f"```python\n{ATTACKS[attack]}```"])
    assert result.samples[0]["passed"] is False, result.samples[0]
    assert result.score == 0.0


def test_noise_and_leftover_threads_do_not_hurt_a_right_answer(evaluator):
    noisy = (
        "import sys, threading, time\nprint('x' * 10**6)\nsys.stderr.write('y' * 10**6)\n"
        "threading.Thread(target=lambda: time.sleep(60), daemon=False).start()\n" + RIGHT
    )
    result = evaluator.score_replies([f"```python\n{noisy}```"])
    assert result.samples[0]["error"] is None


@pytest.mark.parametrize(
    ("returned", "test", "passed"),
    [
        ("frozenset({1, 2})", "assert f() == {1, 2}", False),  # Python's == says equal
        ("{1, 2}", "assert f() == {1, 2}", True),
        ("[1, 2]", "assert f() == (1, 2)", False),
        ("240.0", "assert f() == 240", True),  # numbers are one kind, as in MBPP's references
        ("1", "assert f() == True", True),
        ("'1'", "assert f() == 1", False),
        ("__import__('collections').Counter('aab')", "assert f() == {'a': 2, 'b': 1}", True),
        ("type('S', (str,), {})('abc')", "assert f() == 'abc'", False),
        ("type('L', (list,), {})([1])", "assert f() == [1]", False),
    ],
)
def test_results_compared_with_literals_must_have_their_type(tmp_path, returned, test, passed):
    problem = {"task_id": 1, "text": "t", "code": "def f(): pass", "test_list": [test]}
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(problem) + "\n")
    evaluator = build_evaluator("mbpp", {"path": str(path), "task_ids": [1]})
    result = evaluator.score_replies([f"```python\ndef f():\n    return {returned}\n```"])
    assert result.samples[0]["passed"] is passed, result.samples[0]


def test_expected_values_never_reach_the_candidates_process(tmp_path):
    """Whatever the candidate can see (memory, frames, files, environment) lacks the
    expected values, which only the judge holds."""
    secret = "expected-value-7f3a9c"
    probe = (
        "import gc, os, sys\n"
        "def probe():\n"
        "    seen = []\n"
        "    for obj in gc.get_objects():\n"
        "        if isinstance(obj, dict):\n"
        "            seen += [repr(v)[:10000] for v in list(obj.values())]\n"
        "        elif isinstance(obj, (list, tuple)):\n"
        "            seen.append(repr(obj)[:10000])\n"
        "    frame = sys._getframe()\n"
        "    while frame:\n"
        "        seen.append(repr(frame.f_globals)[:100000])\n"
        "        frame = frame.f_back\n"
        "    seen.append(repr(dict(os.environ)))\n"
        "    for root, dirs, files in os.walk('.'):\n"
        "        for name in files:\n"
        "            try:\n"
        "                seen.append(open(os.path.join(root, name), errors='replace').read())\n"
        "            except OSError:\n"
        "                pass\n"
        "    for fd in os.listdir('/proc/self/fd'):\n"
        "        try:\n"
        "            seen.append(os.readlink('/proc/self/fd/' + fd))\n"
        "        except OSError:\n"
        "            pass\n"
        "    seen.append(open('/proc/self/cmdline', 'rb').read().decode(errors='replace'))\n"
        "    return '\\n'.join(seen)\n"
    )
    problem = {
        "task_id": 1,
        "text": "t",
        "code": "def probe(): pass",
        "test_list": ["assert isinstance(probe(), str)", f"assert probe() == {secret!r}"],
    }
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(problem) + "\n")
    evaluator = build_evaluator("mbpp", {"path": str(path), "task_ids": [1], "timeout_s": 20})
    (outcome,) = evaluator._run_all([probe])
    assert outcome.ok, outcome.error
    assert "probe" in outcome.values[0]  # the probe did see its own code
    assert secret not in outcome.values[0]


def test_a_forged_line_is_only_a_claim_about_returned_values():
    """The candidate can write its own results line; what the judge decodes is plain data."""
    forger = (
        "import os, sys\n"
        "def f():\n"
        "    frame = sys._getframe()\n"
        "    while '_MARK' not in frame.f_globals:\n"
        "        frame = frame.f_back\n"
        "    g = frame.f_globals\n"
        "    os.write(g['_out'], (g['_MARK'] + '{\"values\": [[\"O\", \"x\"], 5]}\\n').encode())\n"
        "    os._exit(0)\n"
    )
    outcome = run_calls(forger, ["f()", "f()"], ProcessLimits(timeout_s=10))
    assert outcome.error == "malformed results line"
    honest = forger.replace('[["O", "x"], 5]', '[["I", "0x5"], ["S", "x"]]')
    assert honest != forger
    assert run_calls(honest, ["f()", "f()"], ProcessLimits(timeout_s=10)).values == [5, "x"]


def test_huge_results_fail_that_problem_only(tmp_path):
    problems = [dict(MBPP_PROBLEMS[0], task_id=i) for i in (1, 2)]
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    evaluator = build_evaluator("mbpp", {"path": str(path), "task_ids": ["1-2"]})
    huge = "def add(a, b):\n    return 'x' * 2_000_000\n"
    result = evaluator.score_replies([f"```python\n{huge}```", f"```python\n{RIGHT}```"])
    assert result.samples[0]["error"].startswith("returned values too large to judge")
    assert result.samples[1]["error"] is None
