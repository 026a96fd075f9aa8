"""The vLLM backend. The swap test needs vLLM and a GPU and is skipped elsewhere
(vLLM is a CUDA-only optional extra, so CI without a GPU skips it too)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_cycleqd.evaluate.backends import load_backend
from mergekit_cycleqd.evaluate.backends.vllm_backend import LoadWeights, import_vllm
from mergekit_cycleqd.evaluate.base import GenerationConfig
from mergekit_cycleqd.merge.weights import StateDictWeights
from mergekit_cycleqd.toy.tokenizer import build_char_tokenizer
from tests.tiny_models import make_expert, make_tiny_llama

PROMPTS = ["rev abc=", "srt hello world=", "x", "dup zz="]
GREEDY = GenerationConfig(max_new_tokens=16)

needs_gpu_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
    reason="needs vLLM and a CUDA GPU",
)


def test_missing_vllm_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
    with pytest.raises(ImportError, match=r"pip install 'mergekit-cycleqd\[vllm\]'"):
        import_vllm()
    with pytest.raises(ImportError, match="use backend kind 'transformers'"):
        load_backend("vllm", "unused")


def test_weight_loader_hands_every_tensor_to_load_weights():
    received = []

    class FakeModel:
        def load_weights(self, weights):
            received.extend(weights)

    tensors = [("a.weight", torch.ones(2)), ("b.weight", torch.zeros(3))]
    assert LoadWeights(tensors)(FakeModel()) == 2
    assert received == tensors


@pytest.fixture(scope="module")
def vllm_family(tmp_path_factory) -> tuple[Path, Path]:
    """A small Llama whose head size vLLM's attention kernels support (64), and an expert."""
    root = tmp_path_factory.mktemp("vllm_family")
    tokenizer = build_char_tokenizer()
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    base = make_tiny_llama(root / "base", seed=5, **shape)
    tokenizer.save_pretrained(base)
    expert = make_expert(base, root / "expert", seed=17, scale=0.3)
    tokenizer.save_pretrained(expert)
    return base, expert


@needs_gpu_vllm
def test_swapped_engine_answers_like_a_fresh_one(vllm_family):
    base, expert = vllm_family
    options = dict(dtype="float32", gpu_memory_utilization=0.2, enforce_eager=True)

    fresh = load_backend("vllm", expert, **options)
    try:
        expected = fresh.generate(PROMPTS, GREEDY)
    finally:
        fresh.close()

    resident = load_backend("vllm", base, **options)
    try:
        before = resident.generate(PROMPTS, GREEDY)
        resident.load_child(StateDictWeights(load_file(str(expert / "model.safetensors"))))
        after = resident.generate(PROMPTS, GREEDY)
        # and back to the base: no stale weights or cached prefixes either way
        resident.load_child(StateDictWeights(load_file(str(base / "model.safetensors"))))
        again = resident.generate(PROMPTS, GREEDY)
    finally:
        resident.close()

    assert before != expected  # the swap has something to change
    assert after == expected
    assert again == before
