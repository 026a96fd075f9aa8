"""Fine-tuning the toy experts from the saved base, in this process or in worker processes.

Each expert trains on one thread from the base's saved weights with its own seed,
so its weights are the same bits whichever process trains it: with more than one
core the experts train side by side in ``python -m mergekit_cycleqd.toy.experts``
workers (about a third of the toy's build time on 2 cores). A worker is started
before the base is trained, so that its imports overlap the base's training, and
waits for a line on its stdin before it reads the base.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from mergekit_cycleqd.process_lifetime import die_with_parent
from mergekit_cycleqd.toy.config import ToyConfig, evaluation_words, expert_mixture
from mergekit_cycleqd.toy.skills import TrainingStream
from mergekit_cycleqd.toy.tokenizer import build_char_tokenizer
from mergekit_cycleqd.toy.training import (
    deterministic_torch,
    new_model,
    train,
    train_with_kl_replay,
)


def toy_model(tokenizer: PreTrainedTokenizerFast, config: ToyConfig) -> LlamaForCausalLM:
    """A freshly initialised model of the toy's shape."""
    return new_model(
        tokenizer,
        config.hidden_size,
        config.intermediate_size,
        config.num_layers,
        config.num_heads,
        config.max_positions,
    )


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def excluded_words(seed: int, config: ToyConfig) -> set[str]:
    """Every evaluation word of every skill: none of them is ever trained on."""
    return {w for words in evaluation_words(seed, config).values() for w in words}


def train_expert(
    out_dir: Path, seed: int, config: ToyConfig, skill: str, excluded: set[str]
) -> None:
    """Fine-tune ``skill``'s expert from ``out_dir/base`` into ``out_dir/experts/<skill>``."""
    index = config.skills.index(skill)
    lengths = (config.min_len, config.max_len)
    tokenizer = build_char_tokenizer()
    base_state = load_file(str(out_dir / "base" / "model.safetensors"))
    with torch.random.fork_rng(devices=[]):  # initial weights are overwritten: leave the RNG
        model = toy_model(tokenizer, config)
        teacher = None
        if config.expert_replay_kl > 0.0 and config.expert_replay > 0.0:
            teacher = toy_model(tokenizer, config)
            teacher.load_state_dict(base_state)
            teacher.requires_grad_(False)
    with deterministic_torch(seed * 1000 + index + 1):
        model.load_state_dict(base_state)  # every expert starts from the base
        if teacher is None:
            stream = TrainingStream(
                expert_mixture(config, skill), f"toy-expert-{seed}-{skill}", *lengths, excluded
            )
            train(
                model,
                tokenizer,
                stream,
                steps=config.expert_steps,
                lr=config.expert_lr,
                batch_size=config.batch_size,
                desc=skill,
            )
        else:
            own = TrainingStream(((skill, 1.0),), f"toy-expert-{seed}-{skill}", *lengths, excluded)
            replay = TrainingStream(
                config.expert_replay_mixture or config.base_mixture,
                f"toy-replay-{seed}-{skill}",
                *lengths,
                excluded,
            )
            train_with_kl_replay(
                model,
                teacher,
                tokenizer,
                own,
                replay,
                steps=config.expert_steps,
                lr=config.expert_lr,
                batch_size=config.batch_size,
                replay_share=config.expert_replay,
                kl_weight=config.expert_replay_kl,
                desc=skill,
            )
    save_model(model, tokenizer, out_dir / "experts" / skill)


class ExpertWorkers:
    """Worker processes that fine-tune the experts once told the base is saved.

    ``processes`` workers share the skills round-robin; 0 trains them in this
    process when :meth:`train` is called.
    """

    def __init__(self, out_dir: Path, seed: int, config: ToyConfig, processes: int):
        self.out_dir, self.seed, self.config = out_dir, seed, config
        # (process, its skills, its stderr): a file, not a pipe, so that a chatty worker
        # never blocks on a full pipe while the parent reads another worker's progress
        self.workers: list[tuple[subprocess.Popen, list[str], IO[str]]] = []
        count = min(processes, len(config.skills))
        for start in range(count):
            skills = list(config.skills[start::count])
            job = {
                "out_dir": str(out_dir),
                "seed": seed,
                "config": config.to_json(),
                "skills": skills,
            }
            errors = tempfile.TemporaryFile("w+", encoding="utf-8")
            process = subprocess.Popen(
                [sys.executable, "-m", "mergekit_cycleqd.toy.experts", json.dumps(job)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )
            self.workers.append((process, skills, errors))

    def train(self, on_done: Callable[[str], None]) -> None:
        """Train every expert (the base must be saved now); ``on_done(skill)`` after each."""
        if not self.workers:
            excluded = excluded_words(self.seed, self.config)
            for skill in self.config.skills:
                train_expert(self.out_dir, self.seed, self.config, skill, excluded)
                on_done(skill)
            return
        for process, _, _ in self.workers:
            process.stdin.write("go\n")
            process.stdin.close()
        for process, skills, errors in self.workers:
            for line in process.stdout:
                if line.startswith("done "):
                    on_done(line.split(maxsplit=1)[1].strip())
            if process.wait() != 0:
                errors.seek(0)
                error = errors.read()
                raise RuntimeError(
                    f"the toy expert worker for {', '.join(skills)} failed "
                    f"(exit {process.returncode}):\n{error[-2000:]}"
                )

    def close(self) -> None:
        """Stop workers that are still running (an error or Ctrl-C in the parent)."""
        for process, _, errors in self.workers:
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout, errors):
                if not stream.closed:
                    stream.close()

    def __enter__(self) -> ExpertWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Worker: wait for "go" on stdin, then train the job's skills; "done SKILL" on stdout."""
    die_with_parent()  # a killed build leaves no worker writing into its folder
    job = json.loads((sys.argv[1:] if argv is None else argv)[0])
    config = ToyConfig.from_json(job["config"])
    out_dir, seed = Path(job["out_dir"]), int(job["seed"])
    excluded = excluded_words(seed, config)
    if sys.stdin.readline().strip() != "go":
        return  # the parent went away before the base was saved
    for skill in job["skills"]:
        train_expert(out_dir, seed, config, skill, excluded)
        print(f"done {skill}", flush=True)


if __name__ == "__main__":
    main()
