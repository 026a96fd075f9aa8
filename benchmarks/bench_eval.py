"""Benchmark: what scoring one child costs, against generation alone, on the toy recipe.

Side by side on the toy family (built and cached on first use), the resident
transformers model of the recipe's backend, and the optimisation split of every
task, for several children (the base and the experts swapped in in turn):

- ``adapter``: the lm-eval evaluator as the search runs it (tasks prepared once);
- ``simple_evaluate``: a plain ``lm_eval.simple_evaluate`` per child and task, with
  the same logging and environment-report patches (how children were scored before
  the tasks were prepared once);
- ``bare generate``: one batched greedy ``model.generate`` over the same prompts,
  same batch size, same token budget and stop strings, no lm-eval at all.

Prints a Markdown table with the threads and the machine's load average.

    python benchmarks/bench_eval.py --children 6 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def bare_generate(
    backend, prompts: list[str], *, max_new_tokens: int, stops: list[str]
) -> list[str]:
    """Batched greedy generation, left-padded, stopping at the stop strings; nothing else."""
    tokenizer, model = backend.tokenizer, backend.model
    tokenizer.padding_side = "left"
    replies: list[str] = []
    for start in range(0, len(prompts), backend.batch_size):
        batch = tokenizer(
            prompts[start : start + backend.batch_size], return_tensors="pt", padding=True
        )
        with torch.no_grad():
            output = model.generate(
                **batch.to(backend.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                stop_strings=stops or None,
                tokenizer=tokenizer,
            )
        replies.extend(tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :]))
    return replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "toy.yml")
    parser.add_argument("--children", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import lm_eval
    from safetensors.torch import load_file

    from cycleqd_evaluators.lm_eval_adapter import _no_env_report, _quiet_lm_eval
    from mergekit_cycleqd.evaluate.backends.transformers_backend import TransformersBackend
    from mergekit_cycleqd.merge.weights import StateDictWeights
    from mergekit_cycleqd.recipe import load_recipe
    from mergekit_cycleqd.recipe.models import resolve_models
    from mergekit_cycleqd.search.worker import build_split_evaluators

    os.chdir(ROOT)  # the toy recipe's asset folder is relative
    recipe = load_recipe(args.recipe)
    from mergekit_cycleqd.recipe.assets import build_assets

    if recipe.assets is not None:
        build_assets(recipe.assets)
    options = {k: v for k, v in recipe.backend.options.items() if k != "threads"}
    base, experts = resolve_models(recipe)
    backend = TransformersBackend(base, **options)
    evaluators = build_split_evaluators(recipe, "opt")
    models = [base, *experts]
    weights = [StateDictWeights(load_file(Path(m) / "model.safetensors")) for m in models]
    lm = backend.lm_eval_model()
    for evaluator in evaluators.values():  # prepare once (the first child of a worker)
        evaluator.evaluate(backend)
    prompts = {}
    for name, evaluator in evaluators.items():
        (task,) = evaluator.prepared(lm)["tasks"].values()
        kwargs = task.config.generation_kwargs
        prompts[name] = (
            [inst.args[0] for inst in task.instances],
            int(kwargs.get("max_gen_toks", 256)),
            list(kwargs.get("until", [])),
        )
    times: dict[str, list[float]] = {"adapter": [], "simple_evaluate": [], "bare generate": []}
    for child in range(args.children):
        backend.load_child(weights[child % len(weights)])
        start = time.perf_counter()
        for evaluator in evaluators.values():
            evaluator.evaluate(backend)
        times["adapter"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for evaluator in evaluators.values():
            opts = evaluator.options
            with _quiet_lm_eval(), _no_env_report():  # as the adapter did before
                lm_eval.simple_evaluate(
                    model=lm,
                    tasks=[opts.task],
                    task_manager=evaluator.task_manager(),
                    bootstrap_iters=0,
                    log_samples=opts.log_samples,
                    fewshot_random_seed=opts.fewshot_seed,
                )
        times["simple_evaluate"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for texts, max_new, stops in prompts.values():
            bare_generate(backend, texts, max_new_tokens=max_new, stops=stops)
        times["bare generate"].append(time.perf_counter() - start)

    n_prompts = sum(len(p[0]) for p in prompts.values())
    print(
        f"\nToy recipe, optimisation split: {len(evaluators)} tasks, {n_prompts} prompts per child, "
        f"batch size {backend.batch_size}; {torch.get_num_threads()} torch threads; "
        f"median of {args.children} children; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores\n"
    )
    bare = statistics.median(times["bare generate"])
    print("| per child | seconds (median) | / bare generate |\n|---|---:|---:|")
    for label, values in times.items():
        seconds = statistics.median(values)
        print(f"| {label} | {seconds:.3f} | {seconds / bare:.2f} |")
    print("\ntarget: adapter / bare generate <= 1.3")


if __name__ == "__main__":
    main()
