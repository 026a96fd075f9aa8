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
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mergekit_cycleqd.evaluate.backends.threads import usable_cores
from mergekit_cycleqd.toy.config import DEFAULT_SKILLS, ToyConfig, evaluation_words
from mergekit_cycleqd.toy.experts import ExpertWorkers, excluded_words, save_model, toy_model
from mergekit_cycleqd.toy.skills import SKILLS, TrainingStream, eval_rows
from mergekit_cycleqd.toy.tasks import METRIC, SPLITS, data_path, write_jsonl, write_task_yamls
from mergekit_cycleqd.toy.tokenizer import build_char_tokenizer
from mergekit_cycleqd.toy.training import deterministic_torch, exact_match, train

__all__ = ["DEFAULT_SKILLS", "ToyAssets", "ToyConfig", "build_toy_assets"]

TOY_FORMAT_VERSION = 2
"""Bump when the data, models or layout change in a way the settings do not capture."""

STAMP = "toy.json"
BUILT_PARTS = ("base", "experts", "tasks")


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
    out_dir: Path,
    *,
    seed: int = 0,
    force: bool = False,
    config: ToyConfig | None = None,
    processes: int | None = None,
) -> ToyAssets:
    """Return the toy family under ``out_dir``, building whatever is missing or stale.

    Idempotent and safe to call from several processes at once (a lock file
    serialises builders). Only ``base/``, ``experts/``, ``tasks/`` and the stamp
    inside ``out_dir`` are ever replaced. The experts are fine-tuned in
    ``processes`` worker processes (default: one per expert when more than one core
    is usable, else 0: in this process); each trains on one thread, so the weights
    are the same bits for any count.
    """
    config = config or ToyConfig()
    if processes is None:
        processes = len(config.skills) if usable_cores() > 1 else 0
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = {"version": TOY_FORMAT_VERSION, "seed": seed, "config": config.to_json()}
    with _locked(out_dir / ".toy.lock"):
        if force or not _is_built(out_dir, expected, config):
            _build(out_dir, seed, config, expected, processes)
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


def _build(out_dir: Path, seed: int, config: ToyConfig, stamp: dict, processes: int) -> None:
    started = time.perf_counter()
    (out_dir / STAMP).unlink(missing_ok=True)  # a build cut short leaves no valid stamp
    for part in BUILT_PARTS:
        shutil.rmtree(out_dir / part, ignore_errors=True)
    _write_eval_data(out_dir / "tasks", seed, config)
    with (
        ExpertWorkers(out_dir, seed, config, processes) as experts,
        tqdm(total=1 + len(config.skills), desc="toy models", unit="model") as progress,
    ):
        _train_base(out_dir, seed, config)
        progress.update(1)
        experts.train(lambda skill: progress.update(1))
    record = dict(stamp, build_seconds=round(time.perf_counter() - started, 1))
    (out_dir / STAMP).write_text(json.dumps(record, indent=2) + "\n")


def _train_base(out_dir: Path, seed: int, config: ToyConfig) -> None:
    lengths = (config.min_len, config.max_len)
    tokenizer = build_char_tokenizer()
    excluded = excluded_words(seed, config)
    with deterministic_torch(seed):
        model = toy_model(tokenizer, config)
        stream = TrainingStream(config.base_mixture, f"toy-base-{seed}", *lengths, excluded)
        should_stop = None
        if config.base_target is not None:
            probe = {
                skill: TrainingStream(
                    ((skill, 1.0),), f"toy-probe-{seed}-{skill}", *lengths, excluded
                ).sample(100)
                for skill in config.skills
            }

            def should_stop(step: int) -> bool:
                scores = [exact_match(model, tokenizer, probe[s]) for s in config.skills]
                return sum(scores) / len(scores) >= config.base_target

        train(
            model,
            tokenizer,
            stream,
            steps=config.base_steps,
            lr=config.base_lr,
            batch_size=config.batch_size,
            desc="base",
            should_stop=should_stop,
        )
    save_model(model, tokenizer, out_dir / "base")


def _write_eval_data(task_dir: Path, seed: int, config: ToyConfig) -> None:
    """Write every skill's opt, val and test JSONL."""
    task_dir.mkdir(parents=True)
    val_end = config.n_opt + config.n_val
    for skill, words in evaluation_words(seed, config).items():
        splits = {
            "opt": words[: config.n_opt],
            "val": words[config.n_opt : val_end],
            "test": words[val_end:],
        }
        for split, split_words in splits.items():
            write_jsonl(data_path(task_dir, skill, split), eval_rows(SKILLS[skill], split_words))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
