"""lm-eval models that generate through a ModelBackend.

``BackendLM`` turns lm-eval's ``generate_until`` requests into batched
``backend.generate`` calls, so any backend (the scripted stand-in in tests, the
vLLM engine on a GPU) can be scored on lm-eval's generation tasks. Log-likelihood
requests need token scores, which the ModelBackend protocol does not expose; they
raise a NotImplementedError that says which tasks work instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import LM
from tqdm.auto import tqdm

from mergekit_cycleqd.evaluate.base import GenerationConfig, ModelBackend

DEFAULT_MAX_GEN_TOKS = 256
"""lm-eval's default ``max_gen_toks`` when a task's generation_kwargs do not set it."""


def generation_config_from_kwargs(gen_kwargs: dict[str, Any]) -> GenerationConfig:
    """Map an lm-eval task's ``generation_kwargs`` onto the backend's GenerationConfig.

    ``until`` becomes the stop strings, ``max_gen_toks`` the new-token budget;
    sampling only when the task asks for it (``do_sample``) with a positive
    temperature, greedy otherwise (lm-eval's own convention).
    """
    until = gen_kwargs.get("until") or ()
    if isinstance(until, str):
        until = (until,)
    temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
    if not gen_kwargs.get("do_sample", False):
        temperature = 0.0
    return GenerationConfig(
        max_new_tokens=int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
        stop=tuple(until),
        temperature=temperature,
    )


class BackendLM(LM):
    """lm-eval LM over any ModelBackend's ``generate`` (generation tasks only).

    ``batch_size`` (None: all requests with the same generation settings in one
    call) bounds how many prompts go to the backend per call. Nothing is cached:
    every call asks the backend, so a new child's answers are always its own.
    """

    def __init__(self, backend: ModelBackend, batch_size: int | None = None):
        super().__init__()
        self.backend = backend
        self.batch_size = batch_size

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        # Requests with equal generation kwargs share a GenerationConfig and go out together.
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            _, gen_kwargs = request.args
            key = json.dumps(gen_kwargs, sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        replies: list[str] = [""] * len(requests)
        progress = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        for indices in groups.values():
            config = generation_config_from_kwargs(requests[indices[0]].args[1])
            size = self.batch_size or len(indices)
            for start in range(0, len(indices), size):
                chunk = indices[start : start + size]
                contexts = [requests[i].args[0] for i in chunk]
                for i, reply in zip(chunk, self.backend.generate(contexts, config), strict=True):
                    replies[i] = reply
                    self.cache_hook.add_partial("generate_until", requests[i].args, reply)
                progress.update(len(chunk))
        progress.close()
        return replies

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list:
        raise NotImplementedError(self._no_scores_message("loglikelihood"))

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list:
        raise NotImplementedError(self._no_scores_message("loglikelihood_rolling"))

    def _no_scores_message(self, request_type: str) -> str:
        return (
            f"{type(self).__name__} over the {self.backend.name!r} backend cannot answer "
            f"{request_type} requests: the backend only generates text. Use lm-eval tasks "
            "with output_type: generate_until (e.g. exact_match on generated answers), "
            "or the transformers backend, whose lm-eval model is HFLM."
        )

    # Chat templating: delegated to the backend when it can render conversations.
    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        render = getattr(self.backend, "render_chat", None)
        if render is None:
            raise NotImplementedError(
                f"the {self.backend.name!r} backend cannot render chat templates; "
                "run the task with apply_chat_template: false"
            )
        return render(chat_history)

    @property
    def tokenizer_name(self) -> str:
        return self.backend.name

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return ""


class ScriptedLM(BackendLM):
    """The lm-eval model of a ScriptedBackend: its canned replies, as generations."""
