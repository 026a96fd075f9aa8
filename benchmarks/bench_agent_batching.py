"""Batched vs one-at-a-time agent dialogues on DBBench (scripted model with latency).

A real backend costs about the same per generate call whether it decodes one
dialogue or sixty (the accelerator is underused by one), so the number of calls
dominates agent evaluation. This benchmark runs the same gold agent on the same
tasks twice: all dialogues together (run_episodes over every task, one batched
call per round) and each dialogue on its own (one call per reply).

Usage: python benchmarks/bench_agent_batching.py --data PATH/TO/dbbench/dev.jsonl
"""

from __future__ import annotations

import argparse
import time

from cycleqd_evaluators.agent_loop import run_episodes
from cycleqd_evaluators.agentbench.dbbench import DBBenchEvaluator, score_episodes
from cycleqd_evaluators.agentbench.dbbench_scripts import gold_agent
from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend
from mergekit_cycleqd.evaluate.base import build_evaluator


def batched(evaluator: DBBenchEvaluator, backend: ScriptedBackend) -> float:
    return evaluator.evaluate(backend).score


def one_at_a_time(evaluator: DBBenchEvaluator, backend: ScriptedBackend) -> float:
    database = evaluator.open_database()
    try:
        episodes = evaluator.make_episodes(database)
        for episode in episodes:
            run_episodes(
                backend,
                [episode],
                evaluator.generation_config(),
                max_rounds=evaluator.options.operations + 1,
                concurrency=1,
            )
    finally:
        database.close()
    return score_episodes(episodes).score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="AgentBench dbbench/dev.jsonl")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per generate call")
    parser.add_argument(
        "--per-prompt-latency", type=float, default=0.0, help="extra seconds per prompt in a call"
    )
    args = parser.parse_args()
    evaluator = build_evaluator("dbbench", {"path": args.data})
    print(
        f"{len(evaluator.tasks)} DBBench tasks, {args.latency:g} s per generate call "
        f"+ {args.per_prompt_latency:g} s per prompt, SQLite"
    )
    timings = {}
    for name, run in (("batched", batched), ("one-at-a-time", one_at_a_time)):
        backend = ScriptedBackend(
            gold_agent(evaluator),
            latency_s=args.latency,
            per_prompt_latency_s=args.per_prompt_latency,
        )
        start = time.perf_counter()
        score = run(evaluator, backend)
        timings[name] = time.perf_counter() - start
        print(
            f"{name:>14}: {timings[name]:7.2f} s, {backend.calls:4d} generate calls, "
            f"score {score:.3f}"
        )
    print(f"speed-up: {timings['one-at-a-time'] / timings['batched']:.1f}x")


if __name__ == "__main__":
    main()
