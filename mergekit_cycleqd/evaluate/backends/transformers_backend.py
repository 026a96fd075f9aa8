"""A resident Hugging Face causal LM that takes each child's weights in place.

CycleQD scores thousands of children of one architecture. Reloading a model per
child costs more than scoring it, so the model and tokenizer are loaded once and
``load_child`` overwrites the parameters' storage (no reallocation, no new
module). Generation is batched, left-padded and greedy by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria

from mergekit_cycleqd.evaluate.backends.checkpoint_names import (
    CheckpointNamedView,
    checkpoint_tensor_names,
    load_renaming,
)
from mergekit_cycleqd.evaluate.backends.scripted import truncate_at_stop
from mergekit_cycleqd.evaluate.backends.threads import apply_threads, choose_threads
from mergekit_cycleqd.evaluate.base import GenerationConfig, Message, Prompt
from mergekit_cycleqd.merge.weights import WeightSource


def render_fallback_chat(messages: Sequence[Message]) -> str:
    """Render a conversation for a tokenizer that has no chat template.

    One line per turn, ``"<role>: <content>\\n"``, then ``"assistant: "`` to open
    the reply. Deliberately plain: a base model has seen no chat format, so the
    simplest readable one is as good as any.
    """
    lines = [f"{m['role']}: {m['content']}\n" for m in messages]
    return "".join(lines) + "assistant: "


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means the first GPU when one is visible, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    """``None`` keeps the checkpoint's dtype ("auto"); strings name torch dtypes."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(
            f"dtype {dtype!r} is not a torch dtype (try 'float32', 'bfloat16' or 'float16')"
        )
    return resolved


class StopOnStrings(StoppingCriteria):
    """Per-row stopping criterion: a row is done once its new text holds a stop string.

    Only the last ``window`` generated tokens are decoded at each step: every
    token decodes to at least one character, so a stop string completed by the
    newest token always lies inside a window one token longer than it.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_length: int):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_length = prompt_length
        self.window = max((len(s) for s in self.stops), default=0) + 1

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **_: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stops:
            return done
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        for row, text in enumerate(tails):
            done[row] = any(s in text for s in self.stops)
        return done


def resolve_model_class(name: str) -> Any:
    """A transformers model class by name (``AutoModelForCausalLM``, ``SegformerForSemanticSegmentation``...)."""
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(
            f"backend.options.model_class: {name!r} is not a transformers model class "
            "(e.g. AutoModelForCausalLM, AutoModelForSemanticSegmentation)"
        )
    return cls


def load_tokenizer(model_path: Path, trust_remote_code: bool, model_class: str) -> Any:
    """The model's tokenizer, padded for batched generation; None for models without one
    (vision models), which then serve evaluators that read ``backend.model`` directly."""
    from transformers import AutoTokenizer

    causal = model_class == "AutoModelForCausalLM" or model_class.endswith("ForCausalLM")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        if causal:
            raise
        return None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"tokenizer of {model_path} has neither a pad nor an eos token; "
                "batched generation needs one of them"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class TransformersBackend:
    """A causal LM resident on one device; see the module docstring.

    ``dtype=None`` keeps the checkpoint's dtype; ``device=None`` picks CUDA when
    available. ``threads`` sets torch's CPU thread count (see ``threads.py``;
    workers set it from the recipe before loading). ``batch_size`` bounds how many prompts share one ``generate``
    call (prompts are sorted by length first so that padding stays small).
    """

    name = "transformers"

    def __init__(
        self,
        model_path: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        trust_remote_code: bool = False,
        model_class: str = "AutoModelForCausalLM",
        threads: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if threads is not None:  # a worker has set it already; direct users set it here
            apply_threads(choose_threads(threads))
        self.model_path = Path(model_path)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        # Loaded straight onto the device (no full copy in CPU memory first).
        self.model = resolve_model_class(model_class).from_pretrained(
            self.model_path,
            dtype=resolve_dtype(dtype),
            device_map=str(self.device),
            trust_remote_code=trust_remote_code,
        )
        self.model.eval()
        self.tokenizer = load_tokenizer(self.model_path, trust_remote_code, model_class)
        renaming = load_renaming(self.model, checkpoint_tensor_names(self.model_path))
        identity = all(k == v for k, v in renaming.items())
        self._swap_target = self.model if identity else CheckpointNamedView(self.model, renaming)
        self._lm: Any = None

    def _text_model(self, what: str) -> None:
        """Refuse text generation on a model that has no tokenizer or no ``generate``."""
        if self.tokenizer is None or not hasattr(self.model, "generate"):
            raise ValueError(
                f"{what} needs a text-generating model with a tokenizer; "
                f"{self.model_path} was loaded as {type(self.model).__name__}. Evaluators of "
                "other model families read backend.model directly (docs/evaluator-api.md)"
            )

    # ------------------------------------------------------------------ prompts
    def render_chat(self, messages: Sequence[Message]) -> str:
        """The text a conversation becomes: the tokenizer's chat template, or the fallback."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        return render_fallback_chat(messages)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of one prompt.

        A rendered chat already carries whatever special tokens its template
        wants, so no more are added to it; a raw prompt gets the tokenizer's
        usual ones (e.g. BOS), as at training time.
        """
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        text = self.render_chat(prompt)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # --------------------------------------------------------------- generation
    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[str]:
        """One completion per prompt, in order, cut at the first stop string."""
        self._text_model("generate")
        encoded = [self.encode_prompt(p) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        replies: list[str] = [""] * len(encoded)
        for batch in tqdm(batches, desc="generate", leave=False, disable=len(batches) < 2):
            texts = self._generate_batch([encoded[i] for i in batch], config)
            for index, text in zip(batch, texts, strict=True):
                replies[index] = truncate_at_stop(text, config.stop)
        return replies

    def _generate_batch(self, rows: list[list[int]], config: GenerationConfig) -> list[str]:
        from transformers import GenerationConfig as HFGenerationConfig
        from transformers import StoppingCriteriaList

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding: every prompt ends at the same column
            if row:
                input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                attention[i, width - len(row) :] = 1
        sampling = config.temperature > 0
        hf_config = HFGenerationConfig(
            max_new_tokens=config.max_new_tokens,
            do_sample=sampling,
            temperature=config.temperature if sampling else None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        stopping = StoppingCriteriaList([StopOnStrings(self.tokenizer, config.stop, width)])
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=hf_config,
                stopping_criteria=stopping,
            )
        return self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)

    # ------------------------------------------------------------------ weights
    def load_child(self, weights: WeightSource) -> None:
        """Overwrite the resident parameters in place (the lm-eval wrapper sees them too)."""
        weights.copy_into(self._swap_target)

    def lm_eval_model(self) -> Any:
        """lm-eval's own HFLM over the resident model, built once and reused.

        HFLM keeps a reference to ``self.model``; since children are copied into
        that same module, every later evaluation sees the current child.
        """
        self._text_model("lm-eval scoring")
        if self._lm is None:
            from lm_eval.models.huggingface import HFLM

            self._lm = HFLM(
                pretrained=self.model, tokenizer=self.tokenizer, batch_size=self.batch_size
            )
        return self._lm

    def close(self) -> None:
        """Drop the model; free cached GPU memory."""
        self._lm = None
        self.model = None
        self.tokenizer = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
