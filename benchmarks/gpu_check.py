"""One-call GPU check: the genome swap, the SVD cache and a toy run on one CUDA device.

Meant for a machine with one CUDA GPU, torch and transformers installed, vLLM
absent and no network (everything else travels with the checkout). Under 8
minutes by default. Each part runs in its own try/except with its own time
budget; a failure or overrun is recorded and the next part still runs. Writes
``gpu_check.json`` and ``gpu_check.md`` into ``--out``.

Parts, on a random Llama of about 1.1B parameters in bf16 (``--tiny``: a few
thousand parameters, for a CPU dry run of the same code):

- ``family``: the base and three experts (base + low-rank + noise), saved;
- ``svd``: the experts' SVD factor cache built on the device, rank 64 and full;
- ``swap``: a genome child written into the resident transformers model (first
  child, then steady state), against ``save_pretrained`` + ``from_pretrained``
  and an in-memory linear merge (mergekit ``merge_state_dicts``) of the same
  inputs on the device; the swapped weights are checked against the CPU result;
- ``toy``: a short toy-recipe run (``recipes/toy.yml``) with the backend on the device.

    python benchmarks/gpu_check.py --out gpu-check            # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu-check-dry
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the checkout's package, installed or not
    sys.path.insert(0, str(ROOT))
LLAMA_1B = dict(  # TinyLlama-1.1B's shape
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
)
LLAMA_TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=128,
)


class Budget(Exception):
    """A part ran past its time budget (checked between steps)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, *, repeats: int = 1) -> float:
    """Median wall seconds of ``fn`` with the device synchronised around each call."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_family(root: Path, device: torch.device, shape: dict, deadline: float) -> dict:
    """Random bf16 Llama base + 3 experts saved as safetensors (built on the device)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**shape, tie_word_embeddings=False, dtype="bfloat16")
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    base = root / "base"
    model.save_pretrained(base)
    generator = torch.Generator(device=device).manual_seed(1)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    for k in range(3):
        if time.perf_counter() > deadline:
            raise Budget(f"family: built {k} of 3 experts before the budget ran out")
        expert = {}
        for name, tensor in state.items():
            if tensor.ndim == 2:
                m, n = tensor.shape
                left = torch.randn(m, 8, generator=generator, device=device)
                right = torch.randn(8, n, generator=generator, device=device)
                noise = torch.randn(m, n, generator=generator, device=device)
                delta = left @ right / 8 + 0.1 * noise
            else:
                delta = torch.randn(tensor.shape, generator=generator, device=device)
            expert[name] = (tensor.float() + 0.01 * delta).to(tensor.dtype).cpu().contiguous()
        folder = root / f"expert{k}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(expert, folder / "model.safetensors", metadata={"format": "pt"})
        shutil.copy(base / "config.json", folder / "config.json")
    del model
    return {"parameters": n_params, "dtype": "bfloat16", "shape": shape}


def part_svd(root: Path, device: torch.device, deadline: float) -> dict:
    from mergekit_cycleqd.merge.breeder import Breeder
    from mergekit_cycleqd.merge.specs import CrossoverSpec, MutationSpec

    out: dict[str, Any] = {}
    for rank in (64, None):
        label = f"rank_{rank}" if rank else "full"
        cache = root / f"svd-{label}"
        shutil.rmtree(cache, ignore_errors=True)
        breeder = Breeder(
            root / "base",
            [root / f"expert{k}" for k in range(3)],
            CrossoverSpec(),
            MutationSpec(kind="svd", rate=0.1, rank=rank),
            cache,
            device=str(device),
        )
        breeder.factor_keys()
        seconds = []
        for k in range(3):
            if time.perf_counter() > deadline:
                out[label] = {"experts_done": k, "seconds_each": seconds, "stopped": "budget"}
                breeder.close()
                raise Budget(f"svd: {label} stopped after {k} of 3 experts; partial: {out}")
            seconds.append(timed(lambda b=breeder, k=k, r=rank: b.svd.factors(k, r), device))
        out[label] = {"experts": 3, "seconds_each": seconds, "seconds_total": sum(seconds)}
        breeder.close()
    return out


def memcpy_bandwidth(device: torch.device) -> float:
    """Bytes per second of one 256 MiB device-to-device copy (read + write)."""
    source = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * source.numel() / timed(lambda: target.copy_(source), device, repeats=5)


def linear_merge_seconds(models: Any, device: torch.device, repeats: int) -> float:
    """mergekit's in-memory linear merge of base + experts, inputs already on ``device``."""
    from mergekit.merge_methods import merge_state_dicts

    inputs = {
        f"m{i}": {n: m.tensor(n).to(device) for n in models.names}
        for i, m in enumerate([models.base, *models.experts])
    }
    weights = {"m0": -0.5, "m1": 0.5, "m2": 0.5, "m3": 0.5}
    parameters = {"weight": weights, "normalize": False}
    return timed(
        lambda: merge_state_dicts(inputs, "linear", parameters=parameters), device, repeats=repeats
    )


def part_swap(root: Path, device: torch.device, deadline: float, repeats: int) -> dict:
    from transformers import LlamaForCausalLM

    from mergekit_cycleqd.merge.breeder import Breeder
    from mergekit_cycleqd.merge.materialize import state_dict
    from mergekit_cycleqd.merge.specs import CrossoverSpec, MutationSpec

    experts = [root / f"expert{k}" for k in range(3)]
    breeder = Breeder(
        root / "base", experts, CrossoverSpec(), MutationSpec(kind="svd", rate=0.1, rank=64),
        root / "svd-rank_64", device=str(device),
    )  # fmt: skip
    population = [breeder.expert(k) for k in range(3)]
    for g in range(4):
        population.append(breeder.breed([population[-1], population[g % 3]], [1.0, 1.01], g % 3, g))
    child = population[-1]
    resident = LlamaForCausalLM.from_pretrained(root / "base", dtype=torch.bfloat16).to(device)
    out: dict[str, Any] = {}
    out["swap_first_child_s"] = timed(lambda: breeder.weights(child).copy_into(resident), device)
    out["swap_s"] = timed(
        lambda: breeder.weights(child).copy_into(resident), device, repeats=repeats
    )
    if time.perf_counter() > deadline:
        raise Budget(f"swap: stopped after the swap itself: {out}")
    expected = state_dict(breeder.weights(child))  # computed on the CPU
    got = resident.state_dict()
    worst = max(
        float(
            (got[n].float().cpu() - t.float()).abs().max() / t.float().abs().max().clamp_min(1e-12)
        )
        for n, t in expected.items()
    )
    out["max_relative_difference_vs_cpu"] = worst
    out["bf16_resolution"] = 2.0**-8
    del expected
    moved = sum(
        (2 + len(experts)) * t.numel() * t.element_size() for t in resident.state_dict().values()
    )
    bandwidth = memcpy_bandwidth(device)
    out["memcpy_GBps"] = bandwidth / 1e9
    out["swap_bytes_GB"] = moved / 1e9
    out["swap_over_bandwidth_limit"] = out["swap_s"] / (moved / bandwidth)
    out["linear_merge_in_memory_s"] = linear_merge_seconds(breeder.models, device, repeats)
    if time.perf_counter() > deadline:
        raise Budget(f"swap: stopped before save+reload: {out}")

    def save_reload() -> None:
        folder = root / "save_reload"
        shutil.rmtree(folder, ignore_errors=True)
        resident.save_pretrained(folder)
        LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map=str(device))

    out["save_pretrained_from_pretrained_s"] = timed(save_reload, device)
    out["swap_over_save_reload"] = out["swap_s"] / out["save_pretrained_from_pretrained_s"]
    out["swap_over_linear_merge"] = out["swap_s"] / out["linear_merge_in_memory_s"]
    breeder.close()
    return out


def part_toy(work: Path, device: torch.device, seconds: float, generations: int) -> dict:
    """A short toy run with the backend on ``device``, in a subprocess with a hard timeout."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "toy.yml").read_text())
    recipe["assets"]["dir"] = str(ROOT / recipe["assets"]["dir"])
    recipe["backend"]["options"]["device"] = str(device)
    recipe["search"]["generations"] = generations
    recipe.setdefault("final", {})["similarity"] = False
    path = work / "toy-gpu.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    command = [
        sys.executable,
        "-m",
        "mergekit_cycleqd.cli",
        str(path),
        "--out",
        str(work / "toy-run"),
    ]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds, env=env, cwd=ROOT
    )
    out = {
        "generations": generations,
        "wall_s": time.perf_counter() - start,
        "returncode": done.returncode,
        "output_tail": (done.stdout + done.stderr)[-3000:],
    }
    if done.returncode != 0:
        raise RuntimeError(f"toy run exited {done.returncode}: {out['output_tail'][-800:]}")
    return out


def run_part(
    report: dict, name: str, budget_s: float, fn: Callable[[float], dict], *, end: float
) -> None:
    """Run one part until ``min(now + budget_s, end)``; record its result, time or error.
    Never raises."""
    start = time.perf_counter()
    deadline = min(start + budget_s, end)
    entry: dict[str, Any] = {"budget_s": round(deadline - start, 1)}
    if deadline - start < 5:
        entry.update(status="skipped", error="no time left in --total", seconds=0.0)
        report["parts"][name] = entry
        return
    try:
        entry["result"] = fn(deadline)
        entry["status"] = "ok"
    except Exception as error:  # each part must not stop the others
        entry["status"] = "budget" if isinstance(error, Budget) else "error"
        entry["error"] = f"{type(error).__name__}: {error}"
        entry["traceback"] = traceback.format_exc()[-2000:]
    entry["seconds"] = time.perf_counter() - start
    report["parts"][name] = entry
    print(f"[{name}] {entry['status']} in {entry['seconds']:.1f} s", flush=True)


def markdown(report: dict) -> str:
    lines = [
        f"# GPU check, {report['date']}",
        "",
        f"device: {report['device_name']}; torch {report['torch']}; {report['model']}",
        "",
        "| part | status | seconds | result |",
        "|---|---|---:|---|",
    ]
    for name, entry in report["parts"].items():
        detail = entry.get("result", entry.get("error", ""))
        if isinstance(detail, dict):
            detail = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in detail.items()
                if k != "output_tail"
            )
        lines.append(f"| {name} | {entry['status']} | {entry['seconds']:.1f} | {detail} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json/.md")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (CPU dry run)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default OUT/work)")
    parser.add_argument("--parts", default="family,svd,swap,toy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--toy-generations", type=int, default=30)
    parser.add_argument("--budgets", default="family=75,svd=120,swap=90,toy=135",
                        help="seconds per part")  # fmt: skip
    parser.add_argument("--total", type=float, default=450, help="seconds for all parts together")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    budgets = {k: float(v) for k, v in (item.split("=") for item in args.budgets.split(","))}
    end = time.perf_counter() + args.total
    parts = args.parts.split(",")
    shape = LLAMA_TINY if args.tiny else LLAMA_1B
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "model": f"random Llama {shape}",
        "parts": {},
    }
    family = work / "family"
    if "family" in parts:
        shutil.rmtree(family, ignore_errors=True)
        family.mkdir(parents=True)
        run_part(
            report,
            "family",
            budgets["family"],
            lambda d: build_family(family, device, shape, d),
            end=end,
        )
    if "svd" in parts:
        run_part(report, "svd", budgets["svd"], lambda d: part_svd(family, device, d), end=end)
    if "swap" in parts:
        run_part(
            report,
            "swap",
            budgets["swap"],
            lambda d: part_swap(family, device, d, args.repeats),
            end=end,
        )
    if "toy" in parts:
        run_part(report, "toy", budgets["toy"],
                 lambda d: part_toy(work, device, d - time.perf_counter(), args.toy_generations), end=end)  # fmt: skip
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(e["status"] == "ok" for e in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
