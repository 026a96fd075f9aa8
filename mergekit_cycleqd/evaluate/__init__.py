"""Evaluate: score the resident model on one task split.

- ``base``: the contract (``Evaluator`` with its ``Options``, ``ModelBackend``,
  ``TaskResult``) and the name -> class registry a recipe's ``evaluator:`` reads.
- ``backends``: where the model lives (transformers, vLLM, scripted for tests).
- ``lm_eval_adapter``: any lm-eval task on the resident model.
- ``code``: code generation scored by executing tests (MBPP).
- ``agentbench``: AgentBench's DB and OS tasks and its task-server protocol.
- ``isolation``: the sandboxes every piece of untrusted output runs in.
- ``agent_loop``: multi-turn dialogues advanced together, one batched generation a round.
"""

from mergekit_cycleqd.evaluate.base import (
    Evaluator,
    EvaluatorOptions,
    GenerationConfig,
    ModelBackend,
    TaskResult,
    build_evaluator,
    evaluator_class,
    evaluator_kinds,
    register_evaluator,
)

__all__ = [
    "Evaluator",
    "EvaluatorOptions",
    "GenerationConfig",
    "ModelBackend",
    "TaskResult",
    "build_evaluator",
    "evaluator_class",
    "evaluator_kinds",
    "register_evaluator",
]
