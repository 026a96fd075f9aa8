"""The lm-eval adapter on a local task, scored through the scripted backend."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend, prompt_key
from mergekit_cycleqd.evaluate.backends.scripted_lm import (
    BackendLM,
    ScriptedLM,
    generation_config_from_kwargs,
)
from mergekit_cycleqd.evaluate.base import GenerationConfig, build_evaluator
from mergekit_cycleqd.evaluate.lm_eval_adapter import LMEvalEvaluator

GOLD = {f"q{i}=": f"a{i}" for i in range(5)}
VALIDATION_GOLD = {f"v{i}=": f"b{i}" for i in range(4)}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A local generate_until task: 5 test docs, 4 validation docs, exact match."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    for split, gold in (("test", GOLD), ("validation", VALIDATION_GOLD)):
        rows = [{"q": q[:-1], "a": a} for q, a in gold.items()]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "task": "tiny_qa",
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {s: str(folder / f"{s}.jsonl") for s in ("test", "validation")}
        },
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{q}}=",
        "doc_to_target": "{{a}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    (folder / "tiny_qa.yaml").write_text(json.dumps(config))  # JSON is valid YAML
    return folder


def evaluator(task_dir: Path, **options) -> LMEvalEvaluator:
    return build_evaluator("lm_eval", {"task": "tiny_qa", "include_path": str(task_dir), **options})


def test_three_of_five_scores_exactly_point_six(task_dir):
    # q1's reply runs past the task's stop string "\n": cut there, it is right.
    answers = {"q0=": "a0", "q1=": "a1\nignored", "q2=": "a2", "q3=": "wrong", "q4=": ""}
    result = evaluator(task_dir).evaluate(ScriptedBackend(answers))
    assert result.score == 0.6
    assert result.metrics == {"exact_match,none": 0.6}
    assert [s["doc_id"] for s in result.samples] == [0, 1, 2, 3, 4]
    assert result.samples[1] == {
        "doc_id": 1,
        "doc": {"q": "q1", "a": "a1"},
        "prompt": "q1=",
        "response": "a1",
        "target": "a1",
        "exact_match": 1.0,
    }
    assert result.samples[3]["response"] == "wrong" and result.samples[3]["exact_match"] == 0.0
    json.dumps(result.samples)  # per-sample logs are JSON-serialisable


def test_consecutive_children_never_share_answers(task_dir):
    """Each child's answers come from its own weights, never from a cache."""
    children = {"good": dict(GOLD), "two_right": {**GOLD, "q0=": "x", "q3=": "x", "q4=": "x"}}
    backend = ScriptedBackend(lambda p: children[backend.weights].get(prompt_key(p), ""))
    scorer = evaluator(task_dir)
    scores = []
    for child in ("good", "two_right", "good", "two_right"):
        backend.load_child(child)
        scores.append(scorer.evaluate(backend).score)
    assert scores == [1.0, 0.4, 1.0, 0.4]
    assert backend.calls == 4


def test_unknown_metric_names_task_metric_and_the_available_ones(task_dir):
    with pytest.raises(ValueError) as error:
        evaluator(task_dir, metric="pass@1").evaluate(ScriptedBackend(GOLD))
    message = str(error.value)
    assert "'tiny_qa'" in message and "'pass@1'" in message
    assert "available metric,filter pairs: exact_match,none" in message


def test_unknown_filter_is_reported_the_same_way(task_dir):
    with pytest.raises(ValueError, match=r"filter 'strict-match'.*exact_match,none"):
        evaluator(task_dir, filter="strict-match").evaluate(ScriptedBackend(GOLD))


def test_unknown_task_is_named(task_dir):
    with pytest.raises(ValueError, match=r"task 'tiny_qb' is not defined in .*known tasks there: tiny_qa"):
        evaluator(task_dir, task="tiny_qb").evaluate(ScriptedBackend(GOLD))


def test_options_reject_unknown_keys(task_dir):
    with pytest.raises(ValidationError, match="metrik"):
        evaluator(task_dir, metrik="exact_match")


def test_missing_include_path_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"include_path: '.*nowhere' is not a folder"):
        evaluator(tmp_path / "nowhere")


def test_split_override_scores_another_split(task_dir):
    backend = ScriptedBackend({**VALIDATION_GOLD, "v3=": "no"})
    result = evaluator(task_dir, split="validation").evaluate(backend)
    assert result.score == 0.75
    assert [s["prompt"] for s in result.samples] == list(VALIDATION_GOLD)


def test_unknown_split_lists_the_available_ones(task_dir):
    with pytest.raises(ValueError, match=r"no split 'dev'; available splits: test, validation"):
        evaluator(task_dir, split="dev").evaluate(ScriptedBackend(GOLD))


def test_limit_and_batch_size(task_dir):
    backend = ScriptedBackend(GOLD)
    result = evaluator(task_dir, batch_size=2).evaluate(backend)
    assert result.score == 1.0 and backend.calls == 3  # 5 prompts in batches of 2
    limited = evaluator(task_dir, limit=2).evaluate(ScriptedBackend(GOLD))
    assert len(limited.samples) == 2 and limited.score == 1.0


def test_global_random_state_is_not_reseeded(task_dir):
    """simple_evaluate reseeds python/numpy/torch by default, which would make the
    driver's draws after every evaluation repeat; here they keep depending on the
    state before the call."""
    draws = []
    for seed in (5, 6):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        evaluator(task_dir).evaluate(ScriptedBackend(GOLD))
        draws.append((random.random(), float(np.random.random()), float(torch.rand(1))))
    assert all(a != b for a, b in zip(*draws, strict=True))


def test_generation_kwargs_map_to_generation_config():
    assert generation_config_from_kwargs(
        {"until": ["\n", "END"], "max_gen_toks": 7, "do_sample": False, "temperature": 0.7}
    ) == GenerationConfig(max_new_tokens=7, stop=("\n", "END"), temperature=0.0)
    assert generation_config_from_kwargs(
        {"until": "\n", "do_sample": True, "temperature": 0.5}
    ) == GenerationConfig(max_new_tokens=256, stop=("\n",), temperature=0.5)


def test_scripted_lm_refuses_loglikelihood_clearly():
    lm = ScriptedBackend(GOLD).lm_eval_model()
    assert isinstance(lm, ScriptedLM) and isinstance(lm, BackendLM)
    with pytest.raises(NotImplementedError, match=r"'scripted' backend cannot answer loglikelihood"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="apply_chat_template: false"):
        lm.apply_chat_template([{"role": "user", "content": "hi"}])
