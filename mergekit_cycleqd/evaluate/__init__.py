"""Evaluate: the public evaluator API, and where the model lives.

This package's top level is everything an evaluator may import from the core
(``cycleqd_evaluators`` and third-party evaluators import nothing else):

- ``base``: the contract (``Evaluator`` with its ``Options`` and ``preflight``,
  ``ModelBackend``, ``TaskResult``, prompts) and the name -> class registry a recipe's
  ``evaluator:`` reads (entry-point group ``mergekit_cycleqd.evaluators``).
- the errors an evaluator raises for bad task files and broken sandboxes.
- ``backends``: where the model lives (transformers, vLLM, scripted for tests).

The implementations (lm-eval, MBPP, AgentBench, sandboxes) are the separate
``mergekit-cycleqd-evaluators`` distribution under ``evaluators/``.
"""

from mergekit_cycleqd.errors import SandboxError, TaskFileError, TaskServerError
from mergekit_cycleqd.evaluate.base import (
    Evaluator,
    EvaluatorOptions,
    GenerationConfig,
    Message,
    ModelBackend,
    Prompt,
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
    "Message",
    "ModelBackend",
    "Prompt",
    "SandboxError",
    "TaskFileError",
    "TaskResult",
    "TaskServerError",
    "build_evaluator",
    "evaluator_class",
    "evaluator_kinds",
    "register_evaluator",
]
