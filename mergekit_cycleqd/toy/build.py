"""Build (once) the toy family: a base model, one expert per skill, and their tasks.

The base is pretrained on mostly ``copy`` with a little of each skill, so it
knows the format and is middling at every skill. Each expert is a short
fine-tune of that base: half of each batch is its own skill (cross-entropy),
half is replay of copy and every skill on which the expert is held to the base's
own predictions (KL to the frozen base, ``expert_replay_kl``). That keeps each
task vector's effect on the other skills near zero, so task vectors add up: the
experts are good but imperfect on their own skill, the task-arithmetic merge
keeps most of every skill, and merges with coefficients above 1/K beat each
expert on its own skill (the regime of the CycleQD paper). The default skills
are three letter ciphers that share their primitives (align with the input
position, map one character), so the experts' task vectors also help each other. Everything is
cached under ``out_dir`` with a stamp file; a later call with the same seed and
settings returns at once, and a changed setting or a missing file rebuilds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from mergekit_cycleqd.toy.skills import SKILLS, TrainingStream, eval_rows, held_out_words
from mergekit_cycleqd.toy.tasks import METRIC, SPLITS, data_path, write_jsonl, write_task_yamls
from mergekit_cycleqd.toy.tokenizer import build_char_tokenizer
from mergekit_cycleqd.toy.training import (
    deterministic_torch,
    exact_match,
    new_model,
    train,
    train_with_kl_replay,
)

TOY_FORMAT_VERSION = 2
"""Bump when the data, models or layout change in a way the settings do not capture."""

STAMP = "toy.json"
BUILT_PARTS = ("base", "experts", "tasks")


DEFAULT_SKILLS: tuple[str, ...] = ("shift", "atbash", "rot13")


@dataclass(frozen=True)
class ToyConfig:
    """Sizes and training budgets of the toy family (defaults: ~1.5 min on one idle core)."""

    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 1
    """hidden_size / num_heads is the head dim: keep it 64 (vLLM's CPU attention needs that)."""
    max_positions: int = 64
    min_len: int = 3
    max_len: int = 8
    n_opt: int = 200
    n_val: int = 200
    n_test: int = 300
    batch_size: int = 64
    base_steps: int = 1200
    base_lr: float = 3e-3
    base_target: float | None = 0.6
    """If set, pretraining stops (checked every 50 steps) once the base's mean exact
    match over the skills, on 100 probe words per skill drawn like training words
    (never evaluation words), reaches this value: the base then lands middling whatever
    the seed (the skills are learned in sharp jumps whose timing depends on the seed;
    seed 1 without it learns every cipher to ~0.98). None: always ``base_steps``."""
    base_mixture: tuple[tuple[str, float], ...] = (
        ("copy", 20.0),
        ("shift", 1.0),
        ("atbash", 1.0),
        ("rot13", 1.0),
    )
    """Weights of the base's pretraining mixture: mostly the copy format, a little of
    each skill (tuned so that the base scores roughly 0.5-0.7 on every skill)."""
    expert_steps: int = 300
    expert_lr: float = 1e-3
    expert_replay: float = 0.5
    """Share of each expert's fine-tuning batches drawn from the replay mixture."""
    expert_replay_mixture: tuple[tuple[str, float], ...] | None = (
        ("copy", 1.0),
        ("shift", 1.0),
        ("atbash", 1.0),
        ("rot13", 1.0),
    )
    """What the replay share is drawn from (None: the base mixture)."""
    expert_replay_kl: float = 5.0
    """Weight of the KL-to-base loss on replay examples; 0 replays ground-truth answers
    instead (the first toy's behaviour: task vectors then interfere badly)."""
    skills: tuple[str, ...] = DEFAULT_SKILLS

    def __post_init__(self) -> None:
        unknown = [s for s in self.skills if s not in SKILLS]
        if unknown:
            raise ValueError(f"ToyConfig.skills: unknown {unknown}; known: {', '.join(SKILLS)}")
        if not 0.0 <= self.expert_replay < 1.0:
            raise ValueError(f"ToyConfig.expert_replay must be in [0, 1), got {self.expert_replay}")
        if self.expert_replay_kl < 0.0:
            raise ValueError(f"ToyConfig.expert_replay_kl must be >= 0, got {self.expert_replay_kl}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"ToyConfig: need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ToyConfig: hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )


@dataclass(frozen=True)
class ToyAssets:
    """Where the toy family lies, and how to score it with the lm-eval adapter."""

    base: Path
    experts: dict[str, Path]
    task_dir: Path
    tasks: dict[str, dict[str, str]]
    """skill -> {"opt": task name, "val": task name, "test": task name} (lm-eval)."""
    metric: str


def build_toy_assets(
    out_dir: Path, *, seed: int = 0, force: bool = False, config: ToyConfig | None = None
) -> ToyAssets:
    """Return the toy family under ``out_dir``, building whatever is missing or stale.

    Idempotent and safe to call from several processes at once (a lock file
    serialises builders). Only ``base/``, ``experts/``, ``tasks/`` and the stamp
    inside ``out_dir`` are ever replaced.
    """
    config = config or ToyConfig()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = {"version": TOY_FORMAT_VERSION, "seed": seed, "config": _jsonable(config)}
    with _locked(out_dir / ".toy.lock"):
        if force or not _is_built(out_dir, expected, config):
            _build(out_dir, seed, config, expected)
        tasks = write_task_yamls(out_dir / "tasks", config.skills)
    return ToyAssets(
        base=out_dir / "base",
        experts={skill: out_dir / "experts" / skill for skill in config.skills},
        task_dir=out_dir / "tasks",
        tasks=tasks,
        metric=METRIC,
    )


def _is_built(out_dir: Path, expected: dict, config: ToyConfig) -> bool:
    stamp = out_dir / STAMP
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    if {k: recorded.get(k) for k in expected} != expected:
        return False
    models = [out_dir / "base"] + [out_dir / "experts" / s for s in config.skills]
    data = [data_path(out_dir / "tasks", s, split) for s in config.skills for split in SPLITS]
    return all((m / "config.json").is_file() for m in models) and all(p.is_file() for p in data)


def _build(out_dir: Path, seed: int, config: ToyConfig, stamp: dict) -> None:
    started = time.perf_counter()
    (out_dir / STAMP).unlink(missing_ok=True)  # a build cut short leaves no valid stamp
    for part in BUILT_PARTS:
        shutil.rmtree(out_dir / part, ignore_errors=True)
    excluded = _write_eval_data(out_dir / "tasks", seed, config)

    tokenizer = build_char_tokenizer()
    lengths = (config.min_len, config.max_len)
    with tqdm(total=1 + len(config.skills), desc="toy models", unit="model") as progress:
        with deterministic_torch(seed):
            model = new_model(
                tokenizer,
                config.hidden_size,
                config.intermediate_size,
                config.num_layers,
                config.num_heads,
                config.max_positions,
            )
            stream = TrainingStream(config.base_mixture, f"toy-base-{seed}", *lengths, excluded)
            should_stop = None
            if config.base_target is not None:
                probe = {
                    skill: TrainingStream(((skill, 1.0),), f"toy-probe-{seed}-{skill}", *lengths, excluded)
                    .sample(100)
                    for skill in config.skills
                }

                def should_stop(step: int) -> bool:
                    scores = [exact_match(model, tokenizer, probe[s]) for s in config.skills]
                    return sum(scores) / len(scores) >= config.base_target

            train(
                model, tokenizer, stream, steps=config.base_steps, lr=config.base_lr,
                batch_size=config.batch_size, desc="base", should_stop=should_stop,
            )
        _save(model, tokenizer, out_dir / "base")
        progress.update(1)
        base_state = {k: v.clone() for k, v in model.state_dict().items()}
        teacher = None
        if config.expert_replay_kl > 0.0 and config.expert_replay > 0.0:
            teacher = new_model(
                tokenizer,
                config.hidden_size,
                config.intermediate_size,
                config.num_layers,
                config.num_heads,
                config.max_positions,
            )
            teacher.load_state_dict(base_state)
            teacher.requires_grad_(False)

        for index, skill in enumerate(config.skills):
            with deterministic_torch(seed * 1000 + index + 1):
                model.load_state_dict(base_state)  # every expert starts from the base
                if teacher is None:
                    stream = TrainingStream(
                        expert_mixture(config, skill), f"toy-expert-{seed}-{skill}", *lengths, excluded
                    )
                    train(
                        model, tokenizer, stream, steps=config.expert_steps, lr=config.expert_lr,
                        batch_size=config.batch_size, desc=skill,
                    )
                else:
                    own = TrainingStream(((skill, 1.0),), f"toy-expert-{seed}-{skill}", *lengths, excluded)
                    replay = TrainingStream(
                        config.expert_replay_mixture or config.base_mixture,
                        f"toy-replay-{seed}-{skill}", *lengths, excluded,
                    )
                    train_with_kl_replay(
                        model, teacher, tokenizer, own, replay, steps=config.expert_steps,
                        lr=config.expert_lr, batch_size=config.batch_size,
                        replay_share=config.expert_replay, kl_weight=config.expert_replay_kl, desc=skill,
                    )
            _save(model, tokenizer, out_dir / "experts" / skill)
            progress.update(1)

    record = dict(stamp, build_seconds=round(time.perf_counter() - started, 1))
    (out_dir / STAMP).write_text(json.dumps(record, indent=2) + "\n")


def expert_mixture(config: ToyConfig, skill: str) -> tuple[tuple[str, float], ...]:
    """Ground-truth replay (``expert_replay_kl == 0``): the expert's own skill for
    (1 - expert_replay) of its examples, the replay mixture for the rest."""
    if config.expert_replay == 0.0:
        return ((skill, 1.0),)
    mixture = config.expert_replay_mixture or config.base_mixture
    total = sum(weight for _, weight in mixture)
    own = total * (1.0 - config.expert_replay) / config.expert_replay
    return ((skill, own), *mixture)


def _write_eval_data(task_dir: Path, seed: int, config: ToyConfig) -> set[str]:
    """Write every skill's opt, val and test JSONL; return all their words (kept out of training)."""
    task_dir.mkdir(parents=True)
    excluded: set[str] = set()
    for skill in config.skills:
        count = config.n_opt + config.n_val + config.n_test
        words = held_out_words(seed, skill, count, config.min_len, config.max_len)
        excluded.update(words)
        val_end = config.n_opt + config.n_val
        splits = {
            "opt": words[: config.n_opt],
            "val": words[config.n_opt : val_end],
            "test": words[val_end:],
        }
        for split, split_words in splits.items():
            write_jsonl(data_path(task_dir, skill, split), eval_rows(SKILLS[skill], split_words))
    return excluded


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _jsonable(config: ToyConfig) -> dict:
    """The config as it reads back from JSON (tuples become lists), for stamp comparison."""
    return json.loads(json.dumps(asdict(config)))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
