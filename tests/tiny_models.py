"""Tiny random Llama models for tests: a base and experts fine-tuned from it.

"Fine-tuning" here is a deterministic low-rank-plus-noise perturbation of the
base, which gives task vectors with a realistic decaying singular spectrum.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama_config(**overrides) -> LlamaConfig:
    settings = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def make_tiny_llama(path: Path, seed: int = 0, **overrides) -> Path:
    """Save a random tiny Llama (fp32 safetensors) to ``path`` and return it."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides))
    model.save_pretrained(path)
    return Path(path)


def make_expert(base: Path, path: Path, seed: int, scale: float = 0.05, rank: int = 4) -> Path:
    """Save base + a low-rank-plus-noise delta on every tensor (a stand-in fine-tune)."""
    model = LlamaForCausalLM.from_pretrained(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in model.named_parameters():
            if parameter.ndim == 2:
                m, n = parameter.shape
                left = torch.randn(m, rank, generator=generator)
                right = torch.randn(rank, n, generator=generator)
                delta = left @ right / rank + 0.1 * torch.randn(m, n, generator=generator)
            else:
                delta = torch.randn(parameter.shape, generator=generator)
            parameter.add_(scale * delta)
    model.save_pretrained(path)
    return Path(path)


def make_family(
    root: Path, n_experts: int = 3, seed: int = 0, **overrides
) -> tuple[Path, list[Path]]:
    """A base and ``n_experts`` experts under ``root``."""
    base = make_tiny_llama(Path(root) / "base", seed=seed, **overrides)
    experts = [
        make_expert(base, Path(root) / f"expert{k}", seed=seed * 100 + k + 1)
        for k in range(n_experts)
    ]
    return base, experts


def make_vllm_family(
    root: Path, n_experts: int = 2, *, tied: bool = False
) -> tuple[Path, list[Path]]:
    """A base and experts that vLLM's CPU attention accepts (head_dim 64; it rejects 16),
    with the toy's character tokenizer saved beside each so engines can load them."""
    from mergekit_cycleqd.toy.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    base = make_tiny_llama(
        Path(root) / "base",
        seed=5,
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    experts = [
        make_expert(base, Path(root) / f"expert{k}", seed=17 + k, scale=0.3)
        for k in range(n_experts)
    ]
    for folder in [base, *experts]:
        tokenizer.save_pretrained(folder)
    return base, experts
