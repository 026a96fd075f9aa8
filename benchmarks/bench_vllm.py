"""vLLM backend: swapping a child into the running engine vs starting an engine on it.

A search scores thousands of children; the backend keeps one engine resident and
reloads each child's weights into it (``VLLMBackend.load_child``). The other way
is a new engine per child on the child's folder. This measures both on the same
model (seconds per child, and their ratio), then children per minute of a short
toy search (``recipes/toy.yml``, toy built with head_dim 64) on the vLLM and the
transformers backends (end to end: merge, swap, lm-eval scoring, filing).

Usage (in a venv with vLLM, e.g. from scripts/install_vllm_cpu.sh; on CPU):
    OMP_NUM_THREADS=1 PYTHONPATH=. VENV/bin/python benchmarks/bench_vllm.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.vllm_support import CPU_OPTIONS, toy_recipe_on, vllm_toy_config

PROMPTS = ["rev abcde=", "srt hello=", "dup zz="]


def make_llama(folder: Path, *, hidden: int, layers: int, seed: int) -> Path:
    """A random Llama with head_dim 64 and the toy's character tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mergekit_cycleqd.toy.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def swap_vs_restart(root: Path, *, hidden: int, layers: int, swaps: int, starts: int) -> dict:
    from mergekit_cycleqd.evaluate.backends import load_backend
    from mergekit_cycleqd.evaluate.base import GenerationConfig
    from mergekit_cycleqd.merge.weights import StateDictWeights

    options = dict(CPU_OPTIONS)
    models = [make_llama(root / f"m{i}", hidden=hidden, layers=layers, seed=i) for i in range(2)]
    size = (models[0] / "model.safetensors").stat().st_size
    greedy = GenerationConfig(max_new_tokens=8)

    restart = []  # a new engine on the child's folder, up to its first answers
    for i in range(starts):
        t0 = time.perf_counter()
        backend = load_backend("vllm", models[i % 2], **options)
        backend.generate(PROMPTS, greedy)
        restart.append(time.perf_counter() - t0)
        backend.close()

    backend = load_backend("vllm", models[0], **options)
    swap = []  # read the child's file, reload it into the engine, answer
    for i in range(swaps):
        t0 = time.perf_counter()
        backend.load_child(
            StateDictWeights(load_file(str(models[(i + 1) % 2] / "model.safetensors")))
        )
        backend.generate(PROMPTS, greedy)
        swap.append(time.perf_counter() - t0)
    backend.close()
    r, s = statistics.median(restart), statistics.median(swap)
    return {
        "model_mb": size / 2**20,
        "restart_s": r,
        "swap_s": s,
        "ratio": r / s,
        "starts": restart,
    }


def toy_children_per_minute(root: Path, *, generations: int) -> dict:
    from mergekit_cycleqd.cli import main
    from mergekit_cycleqd.toy import ToyConfig, build_toy_assets

    config = vllm_toy_config(ToyConfig)
    assets = build_toy_assets(root / "toy", config=config)
    backends = {
        "vllm": dict(CPU_OPTIONS, max_model_len=config.max_positions),
        "transformers": {"device": "cpu", "batch_size": 64},
    }
    result = {}
    for kind, options in backends.items():
        recipe = toy_recipe_on(
            assets,
            {"kind": kind, "options": options},
            generations=generations,
            path=root / f"toy-{kind}.yml",
        )
        t0 = time.perf_counter()
        assert main([str(recipe), "--out", str(root / f"run-{kind}")]) == 0
        seconds = time.perf_counter() - t0
        # the three seeds are scored too: children here = seeds + generations
        result[kind] = {"seconds": seconds, "children_per_min": (3 + generations) * 60 / seconds}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512, help="multiple of 64 (head_dim 64)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--generations", type=int, default=40)
    args = parser.parse_args()
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override kv_cache_memory_bytes
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        s = swap_vs_restart(
            root, hidden=args.hidden, layers=args.layers, swaps=args.swaps, starts=args.starts
        )
        toy = toy_children_per_minute(root, generations=args.generations)
    print(f"model {s['model_mb']:.1f} MB (hidden {args.hidden}, {args.layers} layers, fp32)")
    print("| per child | seconds (median) |\n|---|---:|")
    print(f"| new engine on the child's folder, first answers | {s['restart_s']:.2f} |")
    print(f"| swap into the running engine, first answers | {s['swap_s']:.3f} |")
    print(f"| ratio | {s['ratio']:.0f}x |")
    print(
        "engine starts, in order (the first also imports vLLM):", [round(x, 2) for x in s["starts"]]
    )
    print(
        f"\ntoy search, 3 seeds + {args.generations} generations, opt split, end to end (one engine start included):"
    )
    print("| backend | seconds | children/min |\n|---|---:|---:|")
    for kind, row in toy.items():
        print(f"| {kind} | {row['seconds']:.1f} | {row['children_per_min']:.1f} |")


if __name__ == "__main__":
    main()
