"""MBPP evaluator: data, prompts, code extraction, how asserts are split, pass@1, hostile code.

Every test writes its own problems in MBPP's format (tests/mbpp_fixtures.py); the tests
marked ``real data`` also run every canonical solution of the public file when the
benchmark data is present (``CYCLEQD_TEST_DATA``).
"""

from __future__ import annotations

import json
import os
import socket

import pytest
from pydantic import ValidationError

from cycleqd_evaluators.code.data import load_problems
from cycleqd_evaluators.code.judge import split_assert
from cycleqd_evaluators.code.protocols import default_prompt, extract_code
from cycleqd_evaluators.isolation.process import isolation_mode
from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend
from mergekit_cycleqd.evaluate.base import build_evaluator
from tests.mbpp_fixtures import MBPP_PROBLEMS, write_mbpp


@pytest.fixture
def fixture_path(tmp_path):
    return write_mbpp(tmp_path)


def canonical_backend(problems) -> ScriptedBackend:
    """Replies with each problem's reference code in a fenced block."""
    by_prompt = {
        default_prompt(p)[-1]["content"]: f"Here it is:\n```python\n{p.canonical}\n```\n"
        for p in problems.values()
    }
    return ScriptedBackend(by_prompt, default="no idea")


def test_prompt_is_a_chat_with_problem_and_first_test(fixture_path):
    problem = load_problems(fixture_path)[1]
    assert default_prompt(problem) == [
        {
            "role": "user",
            "content": (
                "Solve the following Python programming problem.\n\n"
                "Write a function to add two numbers.\n\n"
                "Your function must have the name and signature used in this test, which it "
                "has to pass:\nassert add(1, 2) == 3\n\n"
                "Answer with the complete Python code (imports included) in one ```python "
                "code block."
            ),
        }
    ]
    with_system = default_prompt(problem, system_prompt="Be concise.")
    assert with_system[0] == {"role": "system", "content": "Be concise."}


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("Sure:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
        ("```\ndef f(): pass\n```", "def f(): pass\n"),
        ("```text\nnote\n```\n```py\nx = 1\n```", "x = 1\n"),
        ("def f(x):\n    return x", "def f(x):\n    return x"),
        ("```python\ndef f(x):\n    return x", "def f(x):\n    return x"),  # cut by max tokens
    ],
)
def test_extract_code(reply, code):
    assert extract_code(reply) == code


@pytest.mark.parametrize(
    ("test", "calls", "check"),
    [
        # the candidate's call goes to the sandbox; the expected value stays with the judge
        ("assert add(1, 2) == 3", ("add(1, 2)",), "assert _strict_equal(_v[0], 3)"),
        # builtins around the call stay in the judge; == on two non-literals is plain ==
        (
            "assert set(common([1], [2])) == set([3])",
            ("common([1], [2])",),
            "assert set(_v[0]) == set([3])",
        ),
        # nested candidate calls are one call; module functions stay in the judge
        (
            "assert math.isclose(f(g(1)), 2.0, rel_tol=0.1)",
            ("f(g(1))",),
            "assert math.isclose(_v[0], 2.0, rel_tol=0.1)",
        ),
        # two calls in one assert
        ("assert f(1) == f(2)", ("f(1)", "f(2)"), "assert _v[0] == _v[1]"),
        # a literal on the left is compared strictly too
        ("assert (1, 2) == f()", ("f()",), "assert _strict_equal((1, 2), _v[0])"),
    ],
)
def test_split_assert(test, calls, check):
    split = split_assert(test)
    assert split.calls == calls
    assert split.check == check


def test_builtin_name_defined_by_the_reference_is_the_candidates():
    split = split_assert("assert sum(10, 15) == 6", defined=frozenset({"sum"}))
    assert split.calls == ("sum(10, 15)",)
    assert split_assert("assert sum([1]) == f(1)").calls == ("f(1)",)


def test_not_an_assert_is_refused(tmp_path):
    bad = dict(MBPP_PROBLEMS[0], test_list=["print(add(1, 2))"])
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"task 1: test is not a single assert statement"):
        build_evaluator("mbpp", {"path": str(path), "task_ids": [1]})


def test_canonical_solutions_score_100_and_wrong_code_0(fixture_path):
    problems = load_problems(fixture_path)
    evaluator = build_evaluator("mbpp", {"path": str(fixture_path), "task_ids": ["1-4"]})
    result = evaluator.evaluate(canonical_backend(problems))
    assert [s["error"] for s in result.samples] == [None] * 4
    assert result.score == 1.0
    assert result.metrics == {"pass@1": 1.0, "passed": 4.0, "total": 4.0}
    assert result.samples[0] == {
        "task_id": 1,
        "reply": f"Here it is:\n```python\n{problems[1].canonical}\n```\n",
        "passed": True,
        "error": None,
    }

    wrong = evaluator.evaluate(ScriptedBackend(lambda p: "```python\ndef nothing(): pass\n```"))
    assert wrong.score == 0.0
    assert wrong.metrics["passed"] == 0.0
    # problem 3 calls `sum`, which is the builtin when the candidate does not define it
    assert [s["error"].split(":")[0] for s in wrong.samples] == [
        "NameError",
        "NameError",
        "TypeError",
        "NameError",
    ]


def test_one_wrong_assert_fails_the_problem(fixture_path):
    evaluator = build_evaluator("mbpp", {"path": str(fixture_path), "task_ids": [1]})
    almost = "```python\ndef add(a, b):\n    return a + b if b != 22 else 0\n```"
    result = evaluator.score_replies([almost])
    assert result.score == 0.0
    assert result.samples[0]["error"] == "AssertionError: assert _strict_equal(_v[2], 42)"


@pytest.mark.slow
def test_all_test_split_canonical_solutions_pass(shared_data):
    """real data: every canonical solution of MBPP's test split (11-510) passes; none excluded."""
    path = shared_data / "mbpp" / "mbpp.jsonl"
    # a generous limit: the point is correctness, not speed (task 123 takes seconds on a busy host)
    evaluator = build_evaluator("mbpp", {"path": str(path), "timeout_s": 120})
    assert len(evaluator.problems) == 500
    result = evaluator.evaluate(canonical_backend(load_problems(path)))
    failed = {s["task_id"]: s["error"] for s in result.samples if not s["passed"]}
    assert failed == {}
    assert result.metrics["total"] == 500.0


HOSTILE = {
    "infinite loop": "def add(a, b):\n    while True:\n        pass\n",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "50 GB": "hog = bytearray(50 * 2**30)\n",
    "network": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
    "write outside": "open({victim!r}, 'w').write('overwritten')\n",
    "delete outside": "import os\nos.remove({victim!r})\n",
}


def test_hostile_code_is_contained_and_fails(tmp_path):
    if isolation_mode() != "namespaces":
        message = "sandbox isolation (root + unshare) is not available here"
        if os.environ.get("CYCLEQD_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    (tmp_path / "data").mkdir()
    mbpp_path = tmp_path / "data" / "mbpp.jsonl"
    copies = [dict(MBPP_PROBLEMS[0], task_id=i) for i in range(1, len(HOSTILE) + 1)]
    mbpp_path.write_text("".join(json.dumps(p) + "\n" for p in copies))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        codes = [
            code.format(port=server.getsockname()[1], victim=str(victim))
            for code in HOSTILE.values()
        ]
        evaluator = build_evaluator(
            "mbpp",
            {"path": str(mbpp_path), "task_ids": ["1-6"], "timeout_s": 2, "concurrency": 2},
        )
        replies = iter(f"```python\n{code}```" for code in codes)
        result = evaluator.evaluate(ScriptedBackend(lambda prompt: next(replies)))
        with pytest.raises(BlockingIOError):
            server.accept()
    assert result.score == 0.0
    assert [s["passed"] for s in result.samples] == [False] * len(HOSTILE)
    errors = dict(zip(HOSTILE, (s["error"] for s in result.samples), strict=True))
    assert errors["infinite loop"] == "timeout"
    assert errors["50 GB"] == "MemoryError"
    assert errors["network"].startswith(
        ("OSError", "ConnectionRefusedError")
    )  # no host behind loopback
    assert errors["write outside"].startswith("FileNotFoundError")
    assert errors["delete outside"].startswith("FileNotFoundError")
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "victim.txt"]


def test_bad_path_is_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ValidationError) as error:
        build_evaluator("mbpp", {"path": str(missing)})
    text = str(error.value)
    assert "path" in text and f"MBPP file {str(missing)!r} does not exist" in text


def test_unknown_option_is_named(fixture_path):
    with pytest.raises(ValidationError) as error:
        build_evaluator("mbpp", {"path": str(fixture_path), "max_new_token": 5})
    assert "max_new_token" in str(error.value)
    assert "Extra inputs are not permitted" in str(error.value)


def test_bad_task_ids_are_named(fixture_path):
    with pytest.raises(ValidationError, match="task_ids: 'x-3' is not an id"):
        build_evaluator("mbpp", {"path": str(fixture_path), "task_ids": ["x-3"]})
    with pytest.raises(ValueError, match="task_ids: id\\(s\\) not in .*: 5, 2000"):
        build_evaluator("mbpp", {"path": str(fixture_path), "task_ids": [4, 5, 2000]})
    # the default is MBPP's test split, which this four-problem file does not have
    with pytest.raises(ValueError, match="task_ids: id\\(s\\) not in .*: 11, 12"):
        build_evaluator("mbpp", {"path": str(fixture_path)})


def test_malformed_file_names_the_line(tmp_path):
    bad = tmp_path / "mbpp.jsonl"
    bad.write_text('{"task_id": 1, "text": "t", "test_list": ["assert True"]}\n{"task_id": 2}\n')
    with pytest.raises(ValueError, match=f"{bad}:2: missing field\\(s\\) text, test_list"):
        build_evaluator("mbpp", {"path": str(bad), "task_ids": [1]})
