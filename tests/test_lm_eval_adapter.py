"""The lm-eval adapter on a local task, scored through the scripted backend."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from cycleqd_evaluators.lm_eval_adapter import LMEvalEvaluator
from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend, prompt_key
from mergekit_cycleqd.evaluate.backends.scripted_lm import (
    BackendLM,
    ScriptedLM,
    generation_config_from_kwargs,
)
from mergekit_cycleqd.evaluate.base import GenerationConfig, build_evaluator
from mergekit_cycleqd.merge.weights import StateDictWeights

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
    with pytest.raises(
        ValueError, match=r"task 'tiny_qb' is not defined in .*known tasks there: tiny_qa"
    ):
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
    with pytest.raises(
        NotImplementedError, match=r"'scripted' backend cannot answer loglikelihood"
    ):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="apply_chat_template: false"):
        lm.apply_chat_template([{"role": "user", "content": "hi"}])


# --------------------------------------------- prepared once == simple_evaluate
# Three task kinds on a real (tiny, random) transformers model: generate_until with
# a regex filter, loglikelihood multiple choice, and 2-shot generation. The adapter
# builds each task once; every child must score exactly as a fresh simple_evaluate.

WORDS = ["abc", "hello", "zq", "mno", "xyzzy", "kit"]


def _write_task(folder: Path, config: dict, splits: dict[str, list[dict]]) -> None:
    for split, rows in splits.items():
        (folder / f"{config['task']}_{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    files = {s: str(folder / f"{config['task']}_{s}.jsonl") for s in splits}
    config = {"dataset_path": "json", "dataset_kwargs": {"data_files": files}, **config}
    (folder / f"{config['task']}.yaml").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def hf_tasks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf_tasks")
    rows = [{"q": w, "a": w[::-1], "first": w[-1]} for w in WORDS]
    _write_task(
        folder,
        {
            "task": "gen_filtered",
            "test_split": "test",
            "output_type": "generate_until",
            "doc_to_text": "{{q}}=",
            "doc_to_target": "{{first}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 5, "do_sample": False},
            "filter_list": [
                {
                    "name": "first_letter",
                    "filter": [
                        {"function": "regex", "regex_pattern": "([a-z])"},
                        {"function": "take_first"},
                    ],
                }
            ],
            "metric_list": [
                {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}
            ],
        },
        {"test": rows},
    )
    _write_task(
        folder,
        {
            "task": "mc",
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{q}}=",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        },
        {
            "test": [
                {"q": w, "choices": [w[::-1], w, "zz"], "label": i % 3} for i, w in enumerate(WORDS)
            ]
        },
    )
    _write_task(
        folder,
        {
            "task": "fewshot",
            "test_split": "test",
            "fewshot_split": "train",
            "num_fewshot": 2,
            "output_type": "generate_until",
            "doc_to_text": "{{q}}=",
            "doc_to_target": "{{a}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},
            "metric_list": [
                {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}
            ],
        },
        {"train": rows, "test": [{"q": w, "a": w[::-1]} for w in ("ab", "cde", "fgh")]},
    )
    return folder


@pytest.fixture(scope="module")
def hf_backend(tmp_path_factory):
    from mergekit_cycleqd.evaluate.backends.transformers_backend import TransformersBackend
    from mergekit_cycleqd.toy.tokenizer import build_char_tokenizer
    from tests.tiny_models import make_expert, make_tiny_llama

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf_family")
    tokenizer = build_char_tokenizer()
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    base = make_tiny_llama(root / "base", seed=5, vocab_size=len(tokenizer), **ids)
    tokenizer.save_pretrained(base)
    expert = make_expert(base, root / "expert", seed=7, scale=0.5)
    backend = TransformersBackend(base, device="cpu", dtype="float32", batch_size=4)
    return backend, StateDictWeights(load_file(expert / "model.safetensors"))


def _plain_simple_evaluate(lm, task_dir: Path, task: str) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        bootstrap_iters=0,
        log_samples=True,
        fewshot_random_seed=1234,
    )


@pytest.mark.parametrize(
    ("task", "metric", "filter_name"),
    [
        ("gen_filtered", "exact_match", "first_letter"),  # generate_until through a filter
        ("mc", "acc", "none"),  # loglikelihood multiple choice
        ("fewshot", "exact_match", "none"),  # 2-shot prompts from another split
    ],
)
def test_prepared_tasks_score_every_child_as_simple_evaluate_does(
    hf_tasks, hf_backend, task, metric, filter_name
):
    backend, expert = hf_backend
    base = StateDictWeights({k: v.clone() for k, v in backend.model.state_dict().items()})
    scorer = build_evaluator(
        "lm_eval",
        {"task": task, "include_path": str(hf_tasks), "metric": metric, "filter": filter_name},
    )
    seen = []
    try:
        for child in (base, expert, base):  # back to the first child: nothing carried over
            backend.load_child(child)
            ours = scorer.evaluate(backend)
            plain = scorer.task_result(
                _plain_simple_evaluate(backend.lm_eval_model(), hf_tasks, task)
            )
            assert ours.metrics == plain.metrics
            assert ours.samples == plain.samples
            seen.append((ours.metrics, [s["response"] for s in ours.samples]))
    finally:
        backend.load_child(base)
    assert seen[0] == seen[2]
    assert seen[0] != seen[1]  # the expert answers differently: the swap is seen
    if task == "fewshot":
        assert ours.samples[0]["prompt"].count("=") == 3  # two solved examples + the question


def test_children_after_the_first_rebuild_nothing(hf_tasks, hf_backend):
    """After the first child: no task reload, no request building, no template compiling."""
    from unittest import mock

    import lm_eval.api.task
    import lm_eval.utils
    from lm_eval.tasks import TaskManager

    backend, _ = hf_backend
    scorer = build_evaluator("lm_eval", {"task": "fewshot", "include_path": str(hf_tasks)})
    first = scorer.evaluate(backend)
    with (
        mock.patch.object(TaskManager, "load", side_effect=AssertionError("task reloaded")),
        mock.patch.object(
            lm_eval.api.task.ConfigurableTask,
            "build_all_requests",
            side_effect=AssertionError("requests rebuilt"),
        ),
        mock.patch.object(
            lm_eval.utils.env, "from_string", wraps=lm_eval.utils.env.from_string
        ) as compile_,
    ):
        again = scorer.evaluate(backend)
    assert compile_.call_count == 0
    assert again.metrics == first.metrics and again.samples == first.samples
