"""MBPP evaluator: prompts, code extraction, pass@1 on real problems, hostile code."""

from __future__ import annotations

import os
import socket

import pytest
from pydantic import ValidationError

from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend
from mergekit_cycleqd.evaluate.base import build_evaluator
from mergekit_cycleqd.evaluate.code.mbpp import build_program, build_prompt, extract_code, load_mbpp
from mergekit_cycleqd.evaluate.isolation.process import isolation_mode

# Every canonical solution of the test split (11-510) passes its asserts; none is excluded.
CANONICAL_FAILURES: dict[int, str] = {}


@pytest.fixture(scope="module")
def mbpp_path(shared_data):
    return shared_data / "mbpp" / "mbpp.jsonl"


@pytest.fixture(scope="module")
def problems(mbpp_path):
    return load_mbpp(mbpp_path)


def canonical_backend(problems) -> ScriptedBackend:
    """Replies with each problem's reference code in a fenced block."""
    by_prompt = {
        build_prompt(p)[-1]["content"]: f"Here it is:\n```python\n{p['code']}\n```\n"
        for p in problems.values()
    }
    return ScriptedBackend(by_prompt, default="no idea")


def test_prompt_is_a_chat_with_problem_and_first_test(problems):
    problem = problems[11]
    messages = build_prompt(problem)
    assert [m["role"] for m in messages] == ["user"]
    assert problem["text"] in messages[0]["content"]
    assert problem["test_list"][0] in messages[0]["content"]
    assert problem["test_list"][1] not in messages[0]["content"]
    with_system = build_prompt(problem, system_prompt="Be brief.")
    assert with_system[0] == {"role": "system", "content": "Be brief."}


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


def test_program_has_code_setup_and_every_assert(problems):
    problem = dict(problems[11], test_setup_code="import math")
    program = build_program("def f(): pass", problem)
    assert program.startswith("def f(): pass\n\nimport math\n\n")
    for test in problem["test_list"]:
        assert test in program


def test_canonical_solutions_score_100_and_wrong_code_0(mbpp_path, problems):
    options = {"path": str(mbpp_path), "task_ids": ["11-40", 100], "concurrency": 2}
    evaluator = build_evaluator("mbpp", options)
    result = evaluator.evaluate(canonical_backend(problems))
    assert result.score == 1.0
    assert result.metrics == {"pass@1": 1.0, "passed": 31.0, "total": 31.0}
    assert [s["task_id"] for s in result.samples] == [*range(11, 41), 100]
    first = result.samples[0]
    assert first == {
        "task_id": 11,
        "reply": f"Here it is:\n```python\n{problems[11]['code']}\n```\n",
        "passed": True,
        "error": None,
    }

    wrong = evaluator.evaluate(ScriptedBackend(lambda p: "```python\ndef nothing(): pass\n```"))
    assert wrong.score == 0.0
    assert wrong.metrics["passed"] == 0.0
    assert {s["error"].split(":")[0] for s in wrong.samples} == {"NameError"}


@pytest.mark.slow
def test_all_test_split_canonical_solutions_pass(mbpp_path, problems):
    evaluator = build_evaluator("mbpp", {"path": str(mbpp_path)})
    assert len(evaluator.problems) == 500
    result = evaluator.evaluate(canonical_backend(problems))
    failed = {s["task_id"]: s["error"] for s in result.samples if not s["passed"]}
    assert failed == CANONICAL_FAILURES
    assert result.metrics["total"] == 500.0


HOSTILE = {
    "infinite loop": "def remove_Occ(s, ch):\n    while True:\n        pass\n",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "50 GB": "hog = bytearray(50 * 2**30)\n",
    "network": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
    "write outside": "open({victim!r}, 'w').write('overwritten')\n",
    "delete outside": "import os\nos.remove({victim!r})\n",
}


def test_hostile_code_is_contained_and_fails(mbpp_path, tmp_path):
    if isolation_mode() != "namespaces":
        message = "sandbox isolation (root + unshare) is not available here"
        if os.environ.get("CYCLEQD_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)
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
            {"path": str(mbpp_path), "task_ids": ["11-16"], "timeout_s": 2, "concurrency": 2},
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
    assert errors["network"].startswith(("OSError", "ConnectionRefusedError"))  # no host behind loopback
    assert errors["write outside"].startswith("FileNotFoundError")
    assert errors["delete outside"].startswith("FileNotFoundError")
    assert victim.read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["victim.txt"]


def test_bad_path_is_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ValidationError) as error:
        build_evaluator("mbpp", {"path": str(missing)})
    text = str(error.value)
    assert "path" in text and f"MBPP file {str(missing)!r} does not exist" in text


def test_unknown_option_is_named(mbpp_path):
    with pytest.raises(ValidationError) as error:
        build_evaluator("mbpp", {"path": str(mbpp_path), "max_new_token": 5})
    assert "max_new_token" in str(error.value)
    assert "Extra inputs are not permitted" in str(error.value)


def test_bad_task_ids_are_named(mbpp_path):
    with pytest.raises(ValidationError, match="task_ids: 'x-3' is not an id"):
        build_evaluator("mbpp", {"path": str(mbpp_path), "task_ids": ["x-3"]})
    with pytest.raises(ValueError, match="task_ids: id\\(s\\) not in .*: 975, 2000"):
        build_evaluator("mbpp", {"path": str(mbpp_path), "task_ids": [974, 975, 2000]})


def test_malformed_file_names_the_line(tmp_path):
    bad = tmp_path / "mbpp.jsonl"
    bad.write_text('{"task_id": 1, "text": "t", "test_list": ["assert True"]}\n{"task_id": 2}\n')
    with pytest.raises(ValueError, match=f"{bad}:2: missing field\\(s\\) text, test_list"):
        build_evaluator("mbpp", {"path": str(bad), "task_ids": [1]})
