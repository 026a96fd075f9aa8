"""MBPP+ / HumanEval+ in evalplus's release format, and the CycleQD reference protocol.

The files are written by the tests in evalplus's format (tests/mbpp_fixtures.py). evalplus
itself is needed for its input conversion table and sanitiser; CI installs it (README)."""

from __future__ import annotations

import json
import os

import pytest

from cycleqd_evaluators.code.data import load_problems, split_plus_prompt
from cycleqd_evaluators.code.protocols import CYCLEQD_STOP, cycleqd_code, cycleqd_prompt
from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend
from mergekit_cycleqd.evaluate.base import build_evaluator
from tests.mbpp_fixtures import (
    HUMANEVAL_PROBLEMS,
    MBPP_PROBLEMS,
    NOT_PRIME_BASE_ONLY,
    PLUS_PROBLEMS,
    write_mbpp,
    write_plus,
)

try:
    import evalplus  # noqa: F401
except ImportError:
    message = "evalplus is not installed (see README: MBPP+)"
    if os.environ.get("CYCLEQD_REQUIRE_ALL") == "1":
        raise
    pytest.skip(message, allow_module_level=True)


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def test_records_load_with_evalplus_input_conversion(tmp_path):
    problems = load_problems(write_plus(tmp_path))
    assert sorted(problems) == [2, 3, 14]
    similar = problems[2]
    assert similar.task_id == "Mbpp/2" and similar.entry_point == "similar_elements"
    assert similar.text == "Write a function to find the shared elements from the given two lists."
    assert similar.first_test == (
        "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"
    )
    # evalplus's table turns Mbpp/2's JSON lists back into tuples
    assert similar.base_inputs[0] == [(3, 4, 5, 6), (5, 7, 4, 10)]
    assert problems[3].base_inputs == [[2], [10], [35], [37]]
    assert problems[3].plus_inputs == [[1], [4], [49], [97]]


def test_gzipped_release_file_loads(tmp_path):
    assert sorted(load_problems(write_plus(tmp_path, name="MbppPlus.jsonl.gz"))) == [2, 3, 14]


def test_prompt_split_into_text_and_assertion():
    prompt = '"""\nWrite a function.\nIt has two lines.\nassert f(1) == 2\n"""\n'
    assert split_plus_prompt(prompt) == ("Write a function.\nIt has two lines.", "assert f(1) == 2")


def test_canonical_passes_wrong_fails_and_plus_counts_only_when_asked(tmp_path):
    path = write_plus(tmp_path)
    problems = load_problems(path)
    canonical = {p.number: fenced(p.canonical) for p in problems.values()}

    base = build_evaluator("mbpp", {"path": str(path), "concurrency": 2})
    assert [p.task_id for p in base.problems] == ["Mbpp/2", "Mbpp/3", "Mbpp/14"]
    result = base.score_replies([canonical[2], canonical[3], canonical[14]])
    assert [s["error"] for s in result.samples] == [None, None, None]
    assert result.metrics == {"pass@1": 1.0, "passed": 3.0, "total": 3.0, "base_pass@1": 1.0}

    wrong = base.score_replies([fenced("def similar_elements(a, b):\n    return ()"), "", ""])
    assert [s["passed"] for s in wrong.samples] == [False, False, False]

    # right on the base inputs only: passes base tests, fails base + plus
    replies = [canonical[2], fenced(NOT_PRIME_BASE_ONLY), canonical[14]]
    assert base.score_replies(replies).score == 1.0
    plus = build_evaluator("mbpp", {"path": str(path), "tests": "plus", "concurrency": 2})
    result = plus.score_replies(replies)
    assert result.metrics == {
        "pass@1": 2 / 3,
        "passed": 2.0,
        "total": 3.0,
        "base_pass@1": 1.0,
        "plus_pass@1": 2 / 3,
    }
    assert result.samples[1]["error"] == "3 failed test input(s); first: plus input 0 (got False)"


def test_evalplus_oracles_set_comparison_and_float_tolerance(tmp_path):
    path = write_plus(tmp_path)
    evaluator = build_evaluator("mbpp", {"path": str(path), "tests": "plus", "task_ids": [2, 14]})
    replies = [
        # a list in another order: Mbpp/2 is compared as a set (evalplus's oracle)
        fenced("def similar_elements(a, b):\n    return sorted(set(a) & set(b), reverse=True)"),
        # off by 1e-9: within evalplus's float tolerance (1e-6 when atol is 0)
        fenced("def find_Volume(l, b, h):\n    return l * b * h / 2 + 1e-9"),
    ]
    assert [s["error"] for s in evaluator.score_replies(replies).samples] == [None, None]
    off = fenced("def find_Volume(l, b, h):\n    return l * b * h / 2 + 1e-3")
    assert evaluator.score_replies([replies[0], off]).samples[1]["passed"] is False


def test_plus_on_original_mbpp_is_refused(tmp_path):
    path = write_mbpp(tmp_path)
    with pytest.raises(ValueError, match="tests: plus needs an evalplus"):
        build_evaluator("mbpp", {"path": str(path), "tests": "plus", "task_ids": [1]})


def test_task_ids_select_from_a_file_with_gaps(tmp_path):
    path = write_plus(tmp_path)
    chosen = build_evaluator("mbpp", {"path": str(path), "task_ids": ["1-10"]})
    assert [p.task_id for p in chosen.problems] == ["Mbpp/2", "Mbpp/3"]
    with pytest.raises(ValueError, match="selects no problem"):
        build_evaluator("mbpp", {"path": str(path), "task_ids": ["100-200"]})


CYCLEQD_PROMPT_MBPP2 = (
    "You are an exceptionally intelligent coding assistant that consistently delivers accurate "
    "and reliable responses to user instructions.\n"
    "\n"
    "@@ Instruction:\n"
    "Write a function to find the shared elements from the given two lists. Your code should "
    "satisfy the following assertion:\n"
    "```python\n"
    "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"
    "```\n"
    "\n"
    "@@ Response:\n"
    "```python\n"
)


def test_cycleqd_prompt_is_rendered_exactly(tmp_path):
    problems = load_problems(write_plus(tmp_path))
    assert cycleqd_prompt(problems[2]) == CYCLEQD_PROMPT_MBPP2
    # a description without a final full stop gets one, as in the reference code
    problems[2].text = "Find the shared elements"
    assert "\nFind the shared elements. Your code should" in cycleqd_prompt(problems[2])


def test_cycleqd_humaneval_prompt_prefills_the_stub(tmp_path):
    path = write_plus(tmp_path, name="HumanEvalPlus.jsonl", problems=HUMANEVAL_PROBLEMS)
    problem = load_problems(path)[0]
    stub = HUMANEVAL_PROBLEMS[0]["prompt"].strip()
    assert cycleqd_prompt(problem).endswith(
        "@@ Instruction:\nWrite a solution to the following problem:\n```python\n"
        f"{stub}\n```\n\n@@ Response:\n```python\n{stub}\n"
    )
    code = cycleqd_code("    return [x + 1 for x in xs]\n```\nDone.", problem)
    assert code == stub + "\n    return [x + 1 for x in xs]"


def test_cycleqd_completion_cut_at_fence_and_sanitised():
    problem = load_problems_inline()
    completion = (
        "import math\n\ndef similar_elements(a, b):\n    return tuple(set(a) & set(b))\n\n"
        "print(similar_elements((1,), (1,)))\n```\n\nThis function returns ```the``` set."
    )
    assert cycleqd_code(completion, problem) == (
        "import math\ndef similar_elements(a, b):\n    return tuple(set(a) & set(b))"
    )


def load_problems_inline():
    from cycleqd_evaluators.code.data import _plus_problem

    return _plus_problem(None, 1, dict(PLUS_PROBLEMS[0]))


def test_cycleqd_protocol_end_to_end_with_stop_strings(tmp_path):
    path = write_plus(tmp_path)
    problems = load_problems(path)
    seen = []

    def model(prompt):
        seen.append(prompt)
        number = next(p.number for p in problems.values() if cycleqd_prompt(p) == prompt)
        body = problems[number].canonical.strip("\n")
        # the text after the closing fence would be cut by the stop strings
        return f"{body}\n```\n\n@@ Instruction:\nmore text"

    evaluator = build_evaluator("mbpp", {"path": str(path), "protocol": "cycleqd"})
    result = evaluator.evaluate(ScriptedBackend(model))
    assert seen == [cycleqd_prompt(p) for p in problems.values()]
    assert result.score == 1.0
    assert all("Instruction" not in s["reply"] for s in result.samples)
    assert evaluator.protocol.stop == CYCLEQD_STOP


def test_humaneval_plus_scores_through_the_same_evaluator(tmp_path):
    path = write_plus(tmp_path, name="HumanEvalPlus.jsonl", problems=HUMANEVAL_PROBLEMS)
    evaluator = build_evaluator("mbpp", {"path": str(path), "tests": "plus"})
    right = fenced("def add_one(xs):\n    return [x + 1 for x in xs]")
    assert evaluator.score_replies([right]).score == 1.0
    wrong = fenced("def add_one(xs):\n    return xs")
    assert evaluator.score_replies([wrong]).score == 0.0


def test_original_mbpp_with_the_cycleqd_protocol(tmp_path):
    """The reference prompt on original MBPP records: the entry point is the first test's call."""
    path = write_mbpp(tmp_path)
    evaluator = build_evaluator("mbpp", {"path": str(path), "task_ids": [1], "protocol": "cycleqd"})
    assert evaluator.prompts()[0].count("assert add(1, 2) == 3") == 1
    reply = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n```"
    assert evaluator.score_replies([reply]).score == 1.0
    assert json.loads(json.dumps(MBPP_PROBLEMS[0]))["task_id"] == 1


def test_without_evalplus_the_install_command_is_named(tmp_path, monkeypatch):
    for name in ("evalplus", "evalplus.data.mbpp", "evalplus.sanitize"):
        monkeypatch.setitem(__import__("sys").modules, name, None)
    with pytest.raises(ValueError, match=r"needs evalplus's input conversion .*pip install"):
        build_evaluator("mbpp", {"path": str(write_plus(tmp_path))})
    mbpp = write_mbpp(tmp_path)
    with pytest.raises(ValueError, match=r"protocol: cycleqd sanitises code with evalplus"):
        build_evaluator("mbpp", {"path": str(mbpp), "task_ids": [1], "protocol": "cycleqd"})
    # original MBPP with the default protocol needs no evalplus
    plain = build_evaluator("mbpp", {"path": str(mbpp), "task_ids": [1]})
    assert plain.score_replies([fenced("def add(a, b):\n    return a + b")]).score == 1.0
