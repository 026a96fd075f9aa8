"""A resident vLLM engine that takes each child's weights without restarting.

Starting an engine costs tens of seconds (weights, CUDA graphs, KV cache), far
more than scoring one child, so the engine is started once and each child's
tensors are pushed into the running model with its own ``load_weights`` (which
knows how Hugging Face names map onto vLLM's fused layers). The prefix cache is
reset after every swap: cached KV blocks were computed by the previous child's
weights and would otherwise be reused for the new one.

vLLM is an optional, CUDA-only extra (``pip install 'mergekit-cycleqd[vllm]'``)
and is imported only when this backend is built.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mergekit_cycleqd.evaluate.backends.scripted import truncate_at_stop
from mergekit_cycleqd.evaluate.base import GenerationConfig, Message, Prompt
from mergekit_cycleqd.merge.weights import WeightSource

IN_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
"""With this set to 0 the engine core runs in this process, so ``apply_model``
hands the child's tensors to the model directly instead of pickling them to an
engine process (about 16 GB per swap for an 8B model)."""


def import_vllm() -> Any:
    """Import vLLM or say how to get it."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(
            "the 'vllm' backend needs vLLM, a CUDA-only optional extra: "
            "pip install 'mergekit-cycleqd[vllm]' on a machine with an NVIDIA GPU, "
            f"or use backend kind 'transformers' ({error})"
        ) from error
    return vllm


class LoadWeights:
    """Runs inside the engine's worker: copy named tensors into vLLM's model.

    A module-level class (not a closure) so that it can be pickled when the
    engine does run workers in other processes (tensor parallelism).
    """

    def __init__(self, tensors: Iterable[tuple[str, Any]]):
        self.tensors = tensors

    def __call__(self, model: Any) -> int:
        """Stream the tensors into ``model.load_weights``; returns how many were sent."""
        count = 0

        def counted() -> Iterator[tuple[str, Any]]:
            nonlocal count
            for item in self.tensors:
                count += 1
                yield item

        model.load_weights(counted())
        return count


class VLLMBackend:
    """A vLLM ``LLM`` engine resident on the GPU; see the module docstring.

    ``engine_options`` go to ``vllm.LLM`` unchanged (e.g. ``max_num_seqs``).
    ``in_process`` keeps the engine core in this process (see IN_PROCESS_ENV);
    set it False only if the multi-process engine is required, and allow
    pickled callables there (``VLLM_ALLOW_INSECURE_SERIALIZATION=1``).
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        trust_remote_code: bool = False,
        in_process: bool = True,
        show_progress: bool = False,
        **engine_options: Any,
    ):
        if in_process:
            os.environ[IN_PROCESS_ENV] = "0"
        vllm = import_vllm()
        self.model_path = Path(model_path)
        self.in_process = in_process
        self.show_progress = show_progress
        self._sampling_params = vllm.SamplingParams
        self.llm = vllm.LLM(
            model=str(self.model_path),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            trust_remote_code=trust_remote_code,
            **engine_options,
        )
        self._lm: Any = None

    def render_chat(self, messages: Sequence[Message]) -> str:
        """A conversation as the engine's tokenizer renders it (for lm-eval chat tasks)."""
        return self.llm.get_tokenizer().apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[str]:
        """One completion per prompt, in order; text prompts and chats in one batch each."""
        params = self._sampling_params(
            temperature=config.temperature,
            max_tokens=config.max_new_tokens,
            stop=list(config.stop) or None,
        )
        replies: list[str] = [""] * len(prompts)
        texts = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        chats = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if texts:
            outputs = self.llm.generate(
                [prompts[i] for i in texts], params, use_tqdm=self.show_progress
            )
            for i, output in zip(texts, outputs, strict=True):
                replies[i] = output.outputs[0].text
        if chats:
            outputs = self.llm.chat(
                [list(prompts[i]) for i in chats], params, use_tqdm=self.show_progress
            )
            for i, output in zip(chats, outputs, strict=True):
                replies[i] = output.outputs[0].text
        return [truncate_at_stop(reply, config.stop) for reply in replies]

    def load_child(self, weights: WeightSource) -> None:
        """Push the child's tensors into the running engine, then drop stale cached prefixes."""
        tensors: Iterable[tuple[str, Any]] = weights.named_tensors()
        if not self.in_process:  # a generator cannot be pickled to the engine's workers
            tensors = [(name, tensor.detach()) for name, tensor in tensors]
        # In process, tensors stream one at a time: a child never sits in host memory whole.
        self.llm.apply_model(LoadWeights(tensors))
        self.llm.reset_prefix_cache()

    def lm_eval_model(self) -> Any:
        """A generation-only lm-eval model over this engine.

        lm-eval's own vLLM class starts a second engine from a model path; it
        cannot adopt this running one, so it would neither see swapped children
        nor fit beside this engine on the GPU. ``BackendLM`` sends lm-eval's
        ``generate_until`` requests to ``generate`` instead; log-likelihood
        (multiple-choice) tasks are refused with an explanation.
        """
        if self._lm is None:
            from mergekit_cycleqd.evaluate.backends.scripted_lm import BackendLM

            self._lm = BackendLM(self)
        return self._lm

    def close(self) -> None:
        """Shut the engine down and free its GPU memory."""
        self._lm = None
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
