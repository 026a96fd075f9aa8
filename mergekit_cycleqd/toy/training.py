"""Training the tiny toy Llama models, deterministically, on a CPU.

Determinism (same seed and settings -> bit-identical weights on one machine)
comes from: one intra-op thread (reductions are then always summed in the same
order), ``torch.use_deterministic_algorithms``, torch's RNG forked and seeded
per model (the caller's RNG state is left untouched), and string-seeded
``random.Random`` streams for the data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mergekit_cycleqd.toy.skills import TrainingStream

IGNORE = -100


@contextlib.contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Run a block with one thread, deterministic kernels and a seeded, forked torch RNG."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def new_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    max_positions: int,
) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama for the char tokenizer (untied head, no BOS)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def collate(
    tokenizer: PreTrainedTokenizerFast, examples: Sequence[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels; only answer tokens are learned."""
    rows, labels = [], []
    for prompt, answer in examples:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        rows.append(prompt_ids + answer_ids)
        labels.append([IGNORE] * len(prompt_ids) + answer_ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        targets[i, : len(label)] = torch.tensor(label)
    return ids, mask, targets


def _adamw(model: LlamaForCausalLM, *, lr: float, steps: int, warmup: int) -> tuple[Any, Any]:
    """AdamW with linear warm-up over ``warmup`` steps and linear decay to 5 % at ``steps``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / max(1, warmup)) * max(0.05, 1.0 - s / max(1, steps)),
    )
    return optimizer, schedule


def _update(model: LlamaForCausalLM, optimizer: Any, schedule: Any, loss: torch.Tensor) -> float:
    """One step on ``loss`` (gradients clipped to norm 1); returns the loss's value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    return loss.item()


def train(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    stream: TrainingStream,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    desc: str,
    warmup: int = 50,
    should_stop: Callable[[int], bool] | None = None,
    check_every: int = 50,
) -> float:
    """AdamW with linear warm-up and linear decay; returns the last batch's loss.

    ``should_stop(step)``, when given, is asked every ``check_every`` steps (after
    that many steps were taken) and ends the training early when it returns True.
    """
    optimizer, schedule = _adamw(model, lr=lr, steps=steps, warmup=warmup)
    model.train()
    loss_value = float("nan")
    progress = tqdm(range(steps), desc=desc, leave=False)
    for step in progress:
        ids, mask, targets = collate(tokenizer, stream.sample(batch_size))
        loss = model(input_ids=ids, attention_mask=mask, labels=targets).loss
        loss_value = _update(model, optimizer, schedule, loss)
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss_value:.3f}")
        if should_stop is not None and (step + 1) % check_every == 0:
            model.eval()
            stop = should_stop(step + 1)
            model.train()
            if stop:
                break
    model.eval()
    return loss_value


def train_with_kl_replay(
    model: LlamaForCausalLM,
    teacher: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    own: TrainingStream,
    replay: TrainingStream,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    replay_share: float,
    kl_weight: float,
    desc: str,
    warmup: int = 50,
) -> float:
    """Fine-tune on ``own`` while keeping the ``teacher``'s (the base's) distribution on ``replay``.

    Each batch is ``(1 - replay_share)`` own-skill examples, learned with cross-entropy on
    their answers, and ``replay_share`` replay examples, on whose answer tokens the model is
    pulled towards the frozen teacher by ``kl_weight * KL(teacher || model)``. Unlike replay
    with ground-truth answers, this leaves the model's behaviour on the other skills, errors
    included, where the base had it, so an expert's task vector has little first-order effect
    on the other skills and task vectors add up instead of fighting. Same schedule as
    :func:`train`; returns the last batch's loss.
    """
    optimizer, schedule = _adamw(model, lr=lr, steps=steps, warmup=warmup)
    n_replay = round(batch_size * replay_share)
    n_own = batch_size - n_replay
    teacher.eval()
    model.train()
    loss_value = float("nan")
    progress = tqdm(range(steps), desc=desc, leave=False)
    for step in progress:
        ids, mask, targets = collate(tokenizer, own.sample(n_own))
        loss = model(input_ids=ids, attention_mask=mask, labels=targets).loss
        if n_replay:
            ids, mask, targets = collate(tokenizer, replay.sample(n_replay))
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits
            logits = model(input_ids=ids, attention_mask=mask).logits
            # the logits at position t predict token t + 1: keep those that predict an answer token
            answer = targets != IGNORE
            predicts_answer = torch.cat([answer[:, 1:], torch.zeros_like(answer[:, :1])], dim=1)
            kl = F.kl_div(
                F.log_softmax(logits[predicts_answer], dim=-1),
                F.log_softmax(teacher_logits[predicts_answer], dim=-1),
                log_target=True,
                reduction="batchmean",  # mean over answer tokens
            )
            loss = loss * (n_own / batch_size) + kl_weight * kl * (n_replay / batch_size)
        loss_value = _update(model, optimizer, schedule, loss)
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    return loss_value


@torch.inference_mode()
def exact_match(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, examples: Sequence[tuple[str, str]]
) -> float:
    """Greedy exact match of (prompt, answer) pairs, batched by prompt length (no padding)."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    groups: dict[int, list[tuple[list[int], str]]] = {}
    for prompt, answer in examples:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        groups.setdefault(len(ids), []).append((ids, answer.rstrip("\n")))
    correct = 0
    for items in groups.values():
        current = torch.tensor([ids for ids, _ in items])
        answers = [answer for _, answer in items]
        done = torch.zeros(len(items), dtype=torch.bool)
        generated, past = [], None
        for _ in range(max(len(a) for a in answers) + 1):
            out = model(input_ids=current, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1)
            generated.append(token)
            done |= token == newline
            if done.all():
                break
            current = token[:, None]
        for row, answer in zip(torch.stack(generated, 1).tolist(), answers):
            if newline in row:
                correct += int(tokenizer.decode(row[: row.index(newline)]) == answer)
    return correct / max(1, len(examples))
