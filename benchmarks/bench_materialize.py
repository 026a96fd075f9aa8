"""Benchmark: how fast a genome child becomes a ready model, against the alternatives.

Run by hand (minutes on 2 CPU cores); prints a Markdown table. Side by side on one
random Llama (~100M parameters by default), a base and three experts:

- genome -> weights written in place into a resident transformers model
  (``Breeder.weights(child).copy_into(model)``), at SVD rank r and at full rank;
- an in-memory linear merge of base + experts (mergekit ``merge_state_dicts``);
- mergekit ``run_merge`` of the same linear merge to disk;
- ``save_pretrained`` + ``from_pretrained`` (what a child costs without in-place swaps);
- building the SVD cache (full and rank r), and genome bytes vs model bytes;
- the memory-bandwidth limit of the swap: the bytes it must move (base and experts
  read, the model written, the factors read) at the memcpy bandwidth measured in the
  same run, with the same thread count.

    python benchmarks/bench_materialize.py --rank 16 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memcpy_bandwidth(*, mebibytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second of one ``copy_`` between two large fp32 buffers (read + write)."""
    source = torch.rand(mebibytes << 18)
    target = torch.empty_like(source)
    target.copy_(source)  # fault the pages in first
    moved = 2 * source.numel() * source.element_size()
    return moved / _timed(lambda: target.copy_(source), repeats)


def swap_bytes(breeder, child, resident) -> int:
    """What a genome swap must move: every input tensor read, every parameter written,
    every SVD factor the genome uses read."""
    models = breeder.models
    total = 0
    for target in resident.state_dict().values():
        inputs = 1 + len(models.experts)
        total += (inputs + 1) * target.numel() * target.element_size()
    factors = breeder.weights(child).factors
    for name, block in child.genome.d.items():
        for k in range(block.shape[0]):
            if bool(block[k].any()):
                u, _, vh = factors.triple(k, name)
                total += (u.numel() + vh.numel()) * 4
    return total


def _build_family(root: Path, hidden: int, layers: int, vocab: int, inter: int):
    from tests.tiny_models import make_expert, make_tiny_llama

    base = root / "base"
    if not (root / "expert2" / "config.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        make_tiny_llama(
            base,
            seed=0,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            num_key_value_heads=hidden // 64,
            vocab_size=vocab,
            max_position_embeddings=512,
        )
        for k in range(3):
            make_expert(base, root / f"expert{k}", seed=k + 1, scale=0.01, rank=8)
    return base, [root / f"expert{k}" for k in range(3)]


def _evolve(breeder, generations: int = 6):
    """A child whose genome has SVD coefficients on every expert."""
    population = [breeder.expert(k) for k in range(3)]
    for g in range(generations):
        parents = [population[-1], population[g % 3]]
        population.append(breeder.breed(parents, [1.0, 1.01], g % 3, 100 + g))
    return population[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="work folder (kept if given)")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-full-rank", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's count)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.merge_methods import merge_state_dicts
    from mergekit.options import MergeOptions
    from transformers import LlamaForCausalLM

    import mergekit_cycleqd  # noqa: F401
    from mergekit_cycleqd.merge.breeder import Breeder
    from mergekit_cycleqd.merge.materialize import GenomeWeights
    from mergekit_cycleqd.merge.modelset import SafetensorsModel
    from mergekit_cycleqd.merge.specs import CrossoverSpec, MutationSpec

    root = args.root or Path(tempfile.mkdtemp(prefix="cycleqd-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    base, experts = _build_family(
        root / "family", args.hidden, args.layers, args.vocab, args.intermediate
    )
    resident = LlamaForCausalLM.from_pretrained(base)
    n_params = sum(p.numel() for p in resident.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in resident.parameters())
    rows: list[tuple[str, float, str]] = []

    ranks = [args.rank] + ([] if args.skip_full_rank else [None])
    children = {}
    for rank in ranks:
        cache = root / f"cache-{rank or 'full'}"
        shutil.rmtree(cache, ignore_errors=True)
        breeder = Breeder(
            base, experts, CrossoverSpec(), MutationSpec(kind="svd", rate=0.1, rank=rank), cache
        )
        breeder.factor_keys()  # content hashes (memoised on disk), not part of the SVD build
        start = time.perf_counter()
        for k in range(3):
            breeder.svd.factors(k, rank)
        label = f"rank {rank}" if rank else "full rank"
        rows.append((f"SVD cache build, 3 experts, {label}", time.perf_counter() - start, ""))
        child = _evolve(breeder)
        children[rank] = (breeder, child)
        path = breeder.save(child, root / f"elite-{rank or 'full'}")
        size = path.stat().st_size
        rows.append(
            (
                f"genome bytes / model bytes, {label}",
                0.0,
                f"{size:,} B / {model_bytes:,} B = {size / model_bytes:.4%}",
            )
        )
        moved = swap_bytes(breeder, child, resident)
        # memcpy and swap alternate, so that both see the same machine load; the ratio
        # is the median of the pairs' ratios
        pairs = []
        for _ in range(args.repeats):
            bandwidth = memcpy_bandwidth(repeats=1)
            swap = _timed(lambda b=breeder, c=child: b.weights(c).copy_into(resident), 1)
            pairs.append((swap, moved / bandwidth))
        seconds = statistics.median(s for s, _ in pairs)
        limit = statistics.median(lim for _, lim in pairs)
        ratio = statistics.median(s / lim for s, lim in pairs)
        rows.append((f"genome -> weights in resident model (in place), {label}", seconds, ""))
        linear_only = GenomeWeights(dataclasses.replace(child.genome, d={}), breeder.models, None)
        rows.append(
            (
                f"  of which the linear part (same child, SVD coefficients removed), {label}",
                _timed(lambda w=linear_only: w.copy_into(resident), args.repeats),
                "the rest is the low-rank GEMM: 2 * params * sum of ranks flops",
            )
        )
        rows.append(
            (
                f"memory-bandwidth limit of that swap, {label}",
                limit,
                f"{moved / 1e9:.2f} GB at memcpy {moved / limit / 1e9:.1f} GB/s; "
                f"swap / limit = {ratio:.2f} (median of {args.repeats} adjacent pairs; target <= 1.5)",
            )
        )

    # in-memory linear merge of base + 3 experts (the speed reference)
    models = [SafetensorsModel(p) for p in (base, *experts)]
    inputs = {f"m{i}": {n: m.tensor(n) for n in m.names} for i, m in enumerate(models)}
    weights = {"m0": -0.5, "m1": 0.5, "m2": 0.5, "m3": 0.5}
    linear = _timed(
        lambda: merge_state_dicts(
            inputs, "linear", parameters={"weight": weights, "normalize": False}
        ),
        args.repeats,
    )
    rows.append(("in-memory linear merge (merge_state_dicts), 4 inputs", linear, ""))

    config = {
        "merge_method": "linear",
        "models": [
            {"model": str(p), "parameters": {"weight": w}}
            for p, w in zip((base, *experts), weights.values(), strict=True)
        ],
        "parameters": {"normalize": False},
        "dtype": "float32",
    }
    options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)

    def disk_merge():
        out = root / "run_merge"
        shutil.rmtree(out, ignore_errors=True)
        run_merge(MergeConfiguration.model_validate(config), str(out), options=options)

    rows.append(
        (
            "mergekit run_merge of the same linear merge to disk",
            _timed(disk_merge, args.repeats),
            "",
        )
    )

    def save_reload():
        out = root / "save_reload"
        shutil.rmtree(out, ignore_errors=True)
        resident.save_pretrained(out)
        LlamaForCausalLM.from_pretrained(out)

    cycle = _timed(save_reload, args.repeats)
    rows.append(("save_pretrained + from_pretrained reload", cycle, ""))

    print(
        f"\nModel: random Llama, {n_params / 1e6:.1f}M parameters, fp32, "
        f"{model_bytes / 2**20:.0f} MiB; {torch.get_num_threads()} torch threads; "
        f"median of {args.repeats}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
    )
    print("| measurement | seconds | note |\n|---|---:|---|")
    for label, seconds, note in rows:
        print(f"| {label} | {seconds:.3f} | {note} |" if seconds else f"| {label} | | {note} |")
    swap = [
        s
        for label, s, _ in rows
        if label.startswith("genome -> weights") and f"rank {args.rank}" in label
    ][0]
    print(f"\nchild-to-ready (rank {args.rank}) / save+reload = {swap / cycle:.3f} (target <= 0.2)")
    print(
        f"child-to-ready (rank {args.rank}) / in-memory linear merge = {swap / linear:.3f} (target <= 2)"
    )
    for breeder, _ in children.values():
        breeder.close()


if __name__ == "__main__":
    main()
