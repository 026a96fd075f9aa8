"""The transformers backend: in-place child swaps, batching, stop strings, chat prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_cycleqd.evaluate.backends import load_backend
from mergekit_cycleqd.evaluate.backends.transformers_backend import (
    StopOnStrings,
    TransformersBackend,
    render_fallback_chat,
)
from mergekit_cycleqd.evaluate.base import GenerationConfig, ModelBackend
from mergekit_cycleqd.merge.weights import StateDictWeights
from mergekit_cycleqd.toy.tokenizer import build_char_tokenizer
from tests.tiny_models import make_expert, make_tiny_llama

PROMPTS = ["rev abc=", "srt hello world=", "x", "dup zz="]
GREEDY = GenerationConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random Llama with the toy char tokenizer, and one expert fine-tuned from it."""
    root = tmp_path_factory.mktemp("backend_family")
    tokenizer = build_char_tokenizer()
    base = make_tiny_llama(
        root / "base",
        seed=3,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    tokenizer.save_pretrained(base)
    expert = make_expert(base, root / "expert", seed=11, scale=0.5)
    tokenizer.save_pretrained(expert)
    return base, expert


def logits(backend: TransformersBackend, text: str) -> torch.Tensor:
    ids = backend.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return backend.model(ids).logits


def test_load_backend_builds_a_model_backend(family):
    base, _ = family
    backend = load_backend("transformers", base, device="cpu", batch_size=2)
    assert isinstance(backend, TransformersBackend)
    assert isinstance(backend, ModelBackend)
    assert backend.batch_size == 2 and backend.device == torch.device("cpu")
    assert backend.model.dtype == torch.float32  # dtype=None keeps the checkpoint's


def test_load_backend_rejects_unknown_kind(family):
    with pytest.raises(
        ValueError, match=r"unknown backend kind 'tgi'; known kinds: transformers, vllm"
    ):
        load_backend("tgi", family[0])


def test_bad_dtype_is_named(family):
    with pytest.raises(ValueError, match=r"dtype 'float99' is not a torch dtype"):
        TransformersBackend(family[0], dtype="float99")


def test_swapping_in_place_answers_like_reloading(family):
    base, expert = family
    resident = TransformersBackend(base, device="cpu")
    base_replies = resident.generate(PROMPTS, GREEDY)
    storage = {n: p.data_ptr() for n, p in resident.model.named_parameters()}
    hf_lm = resident.lm_eval_model()  # built before the swap, must see the child afterwards

    resident.load_child(StateDictWeights(load_file(str(expert / "model.safetensors"))))
    fresh = TransformersBackend(expert, device="cpu")

    assert {n: p.data_ptr() for n, p in resident.model.named_parameters()} == storage
    swapped_replies = resident.generate(PROMPTS, GREEDY)
    assert swapped_replies == fresh.generate(PROMPTS, GREEDY)
    assert swapped_replies != base_replies  # the swap changed the answers
    for text in PROMPTS:
        assert torch.equal(logits(resident, text), logits(fresh, text))
    ids = fresh.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    assert torch.equal(hf_lm._model_call(ids), fresh.model(ids).logits.detach())

    # and back: the base's own answers return exactly
    resident.load_child(StateDictWeights(load_file(str(base / "model.safetensors"))))
    assert resident.generate(PROMPTS, GREEDY) == base_replies


def test_batching_and_left_padding_do_not_change_answers(family):
    batched = TransformersBackend(family[1], device="cpu", batch_size=4)
    single = [batched.generate([p], GREEDY)[0] for p in PROMPTS]
    assert batched.generate(PROMPTS, GREEDY) == single
    batched.batch_size = 3  # uneven batches, results back in prompt order
    assert batched.generate(PROMPTS, GREEDY) == single


def test_stop_strings_cut_each_reply_at_its_first_stop(family):
    backend = TransformersBackend(family[1], device="cpu")
    free = backend.generate(PROMPTS, GREEDY)
    assert all(len(reply) >= 4 for reply in free)
    stop = free[0][2]  # a character the first reply produces at position 2 (or earlier)
    cut = backend.generate(PROMPTS, GenerationConfig(max_new_tokens=12, stop=(stop,)))
    assert cut == [reply.split(stop)[0] for reply in free]
    assert cut[0] == free[0][: free[0].index(stop)]


def test_stop_criterion_marks_rows_independently():
    tokenizer = build_char_tokenizer()
    rows = [tokenizer("ab=xy\nz")["input_ids"], tokenizer("ab=xyzw")["input_ids"]]
    criterion = StopOnStrings(tokenizer, ["\n"], prompt_length=3)
    assert criterion(torch.tensor(rows)).tolist() == [True, False]
    # a stop string inside the prompt does not count
    prompt_stop = StopOnStrings(tokenizer, ["b="], prompt_length=3)
    assert prompt_stop(torch.tensor(rows)).tolist() == [False, False]


def test_chat_prompts_use_the_fallback_template_without_one(family):
    backend = TransformersBackend(family[1], device="cpu")
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "rev abc"}]
    rendered = "system: be brief\nuser: rev abc\nassistant: "
    assert render_fallback_chat(chat) == rendered
    assert backend.render_chat(chat) == rendered
    replies = backend.generate([chat, "rev abc="], GREEDY)
    assert replies[0] == backend.generate([rendered], GREEDY)[0]
    assert replies[1] == backend.generate(["rev abc="], GREEDY)[0]


def test_chat_prompts_use_the_tokenizers_template(family):
    backend = TransformersBackend(family[1], device="cpu")
    backend.tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    chat = [{"role": "user", "content": "hi"}]
    assert backend.render_chat(chat) == "[user]hi[assistant]"
    assert backend.generate([chat], GREEDY) == backend.generate(["[user]hi[assistant]"], GREEDY)


def test_close_releases_the_model(family):
    backend = TransformersBackend(family[0], device="cpu")
    backend.lm_eval_model()
    backend.close()
    assert backend.model is None and backend._lm is None


# ------------------------------------------------------------------ threads
def test_threads_default_to_cores_divided_by_local_workers(monkeypatch):
    from types import SimpleNamespace

    from mergekit_cycleqd.evaluate.backends import threads
    from mergekit_cycleqd.search.worker import set_worker_threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 6)
    assert threads.choose_threads(None) == 6
    assert threads.choose_threads(None, local_workers=4) == 1  # 6 // 4
    assert threads.choose_threads(None, local_workers=8) == 1  # never 0
    assert threads.choose_threads(3, local_workers=8) == 3  # the recipe's choice wins
    before = torch.get_num_threads()
    try:
        for executor, count, address, options, expected in [
            ("local", 1, None, {}, 6),
            ("local", 2, None, {}, 3),  # two worker processes on this machine
            ("ray", 3, None, {}, 2),  # three actors on this machine share its cores
            ("ray", 3, "ray://cluster:10001", {}, 6),  # remote actors: not sharing ours
            ("ray", 3, None, {"threads": 1}, 1),
        ]:
            recipe = SimpleNamespace(
                workers=SimpleNamespace(executor=executor, count=count, ray_address=address),
                backend=SimpleNamespace(options=options),
            )
            assert set_worker_threads(recipe) == expected
            assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_bad_thread_counts_are_named(bad):
    from mergekit_cycleqd.errors import RecipeError
    from mergekit_cycleqd.evaluate.backends.threads import choose_threads

    with pytest.raises(
        RecipeError, match=r"backend.options.threads: .*\(got " + repr(bad).replace(".", r"\.")
    ):
        choose_threads(bad)


def test_backend_option_threads_sets_torch_threads(family):
    base, _ = family
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        TransformersBackend(base, device="cpu", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
