"""A scripted model: answers come from a Python callable or a table.

Lets every evaluator be tested against gold (and wrong, and hostile) answers
without a neural network, and lets benchmarks add a realistic per-call latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mergekit_cycleqd.evaluate.base import GenerationConfig, Prompt

Responder = Callable[[Prompt], str]


def prompt_key(prompt: Prompt) -> str:
    """The text a canned-answer table is keyed by: the prompt, or the last user turn."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


class ScriptedBackend:
    """Backend whose replies are computed by ``responder`` (or looked up in a table).

    ``latency_s`` is slept once per ``generate`` call (a batched call costs the
    same as a single one, as on a real accelerator); ``per_prompt_latency_s`` is
    added per prompt. ``calls`` counts generate calls; ``weights`` records the
    last WeightSource loaded.
    """

    name = "scripted"

    def __init__(
        self,
        responder: Responder | Mapping[str, str],
        latency_s: float = 0.0,
        per_prompt_latency_s: float = 0.0,
        default: str = "",
    ):
        if isinstance(responder, Mapping):
            table = dict(responder)
            self.responder: Responder = lambda p: table.get(prompt_key(p), default)
        else:
            self.responder = responder
        self.latency_s = latency_s
        self.per_prompt_latency_s = per_prompt_latency_s
        self.calls = 0
        self.weights: Any = None

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[str]:
        self.calls += 1
        time.sleep(self.latency_s + self.per_prompt_latency_s * len(prompts))
        return [truncate_at_stop(self.responder(p), config.stop) for p in prompts]

    def load_child(self, weights: Any) -> None:
        self.weights = weights

    def lm_eval_model(self) -> Any:
        from mergekit_cycleqd.evaluate.backends.scripted_lm import ScriptedLM

        return ScriptedLM(self)

    def close(self) -> None:
        pass


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut a completion at the first stop string (as real backends do)."""
    cut = len(text)
    for s in stop:
        position = text.find(s)
        if s and position != -1:
            cut = min(cut, position)
    return text[:cut]
