"""A worker: builds a model from a job, swaps it into the resident backend, scores it.

One worker holds one Breeder (base/expert tensors and SVD factors), one resident
model backend and the optimisation-split evaluators. Any failure of one job
(evaluator exception, timeout, NaN weights) is caught and returned as a failed
result, so the run goes on.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mergekit_cycleqd.errors import RunError
from mergekit_cycleqd.evaluate.base import Evaluator, ModelBackend, TaskResult, build_evaluator
from mergekit_cycleqd.filing.atomic import publish_path, temporary_sibling
from mergekit_cycleqd.filing.ledger import ScoreRow
from mergekit_cycleqd.recipe import Recipe
from mergekit_cycleqd.search.jobs import Job, JobResult

log = logging.getLogger(__name__)

# Failures of the machine, not of the child: filing them as failed children would make
# a transient condition part of the run's history.
_NOT_THE_CHILDS_FAULT = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class ChildTimeout(Exception):
    """A child's merge + evaluation exceeded search.child_timeout_s."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("CYCLEQD_CACHE", Path.home() / ".cache" / "mergekit-cycleqd"))


def make_breeder(recipe: Recipe, base: Path, experts: list[Path], device: str | None = None):
    from mergekit_cycleqd.merge.breeder import Breeder

    search = recipe.search
    return Breeder(
        base,
        experts,
        search.crossover,
        search.mutation,
        cache_dir=default_cache_dir() / "svd",
        device=device,
    )


def make_backend(recipe: Recipe, base: Path) -> ModelBackend:
    if recipe.backend.kind == "none":
        from mergekit_cycleqd.evaluate.backends.scripted import ScriptedBackend

        return ScriptedBackend(lambda _prompt: "")
    from mergekit_cycleqd.evaluate.backends import load_backend

    options = {k: v for k, v in recipe.backend.options.items() if k != "threads"}
    return load_backend(recipe.backend.kind, base, **options)


def set_worker_threads(recipe: Recipe) -> int:
    """Set this worker's torch thread count from backend.options.threads (or cores / local workers)."""
    from mergekit_cycleqd.evaluate.backends.threads import apply_threads, choose_threads

    workers = recipe.workers
    on_this_machine = workers.executor == "local" or workers.ray_address is None
    local = workers.count if on_this_machine else 1
    requested = recipe.backend.options.get("threads")
    return apply_threads(choose_threads(requested, local_workers=local))


def build_split_evaluators(recipe: Recipe, split: str) -> dict[str, Evaluator]:
    """Evaluators of every task that has ``split`` ("opt", "test" or "validation")."""
    return {
        task.name: build_evaluator(task.evaluator, task.split_options(split))
        for task in recipe.tasks
        if split == "opt" or getattr(task, split) is not None
    }


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ChildTimeout in this (main) thread after ``seconds``; no-op elsewhere."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expire(_signum: int, _frame: Any) -> None:
        raise ChildTimeout(f"child exceeded search.child_timeout_s = {seconds} s")

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write_samples(path: Path, result: TaskResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for sample in result.samples:
            handle.write(json.dumps(sample, default=str) + "\n")


def score_model(
    backend: ModelBackend,
    evaluators: dict[str, Evaluator],
    split: str,
    run_dir: Path,
    samples_stem: str,
) -> list[ScoreRow]:
    """Score the backend's current model on every task; per-sample logs to files."""
    rows = []
    for task, evaluator in evaluators.items():
        result = evaluator.evaluate(backend)
        relative = f"samples/{samples_stem}/{task}.{split}.jsonl"
        write_samples(run_dir / relative, result)
        score = float(result.score)
        if not 0.0 <= score <= 1.0 or score != score:
            raise ValueError(f"evaluator for task {task!r} returned score {score}, not in [0, 1]")
        rows.append(ScoreRow(task, split, score, dict(result.metrics), relative))
    return rows


def save_atomically(breeder: Any, child: Any, run_dir: Path, stem: str) -> str:
    """Write the child's model file via a temporary name, fsync, then rename into place.

    A SIGKILL mid-write leaves only a ``.tmp-`` file, never a truncated model
    under the final name. Returns the run-relative path.
    """
    final_stem = run_dir / stem
    final_stem.parent.mkdir(parents=True, exist_ok=True)
    temporary = breeder.save(child, temporary_sibling(final_stem))
    final = temporary.parent / temporary.name.removeprefix(".tmp-")
    publish_path(temporary, final)
    return str(final.relative_to(run_dir))


class Worker:
    """Runs jobs for one run folder; holds the breeder, backend and evaluators."""

    def __init__(self, recipe: Recipe, run_dir: Path, base: Path, experts: list[Path]):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.threads = set_worker_threads(recipe)
        self.breeder = make_breeder(recipe, base, experts)
        self.backend = make_backend(recipe, base)
        self.evaluators = build_split_evaluators(recipe, "opt")

    def run(self, job: Job) -> JobResult:
        started = time.perf_counter()
        merge_s = 0.0
        try:
            with time_limit(self.recipe.search.child_timeout_s):
                child = self._build(job)
                model_path = save_atomically(self.breeder, child, self.run_dir, job.model_stem)
                self.backend.load_child(self.breeder.weights(child))
                merge_s = time.perf_counter() - started
                scores = score_model(
                    self.backend, self.evaluators, "opt", self.run_dir, Path(job.model_stem).name
                )
        except KeyboardInterrupt:
            raise
        except OSError as error:
            if error.errno in _NOT_THE_CHILDS_FAULT:  # the run stops; --resume redoes the job
                raise RunError(
                    f"{job.name}: cannot write {error.filename or 'to the run or cache folder'} "
                    f"({error.strerror}). Free space (or make it writable), then continue "
                    f"with --resume; nothing filed is lost."
                ) from None
            return self._failed(job, error, started, merge_s)
        except SystemExit as error:  # an evaluator that exits must not end the run
            return self._failed(
                job, f"the evaluator called sys.exit({error.code!r})", started, merge_s
            )
        except Exception as error:  # any failure of one child must not stop the run
            return self._failed(job, error, started, merge_s)
        return JobResult(
            job,
            "ok",
            model_path=model_path,
            scores=scores,
            merge_s=merge_s,
            eval_s=time.perf_counter() - started - merge_s,
        )

    def _failed(
        self, job: Job, error: BaseException | str, started: float, merge_s: float
    ) -> JobResult:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        log.warning("%s failed: %s", job.name, reason)
        log.debug("%s", traceback.format_exc())
        return JobResult(
            job,
            "failed",
            error=reason,
            merge_s=merge_s,
            eval_s=time.perf_counter() - started - merge_s,
        )

    def _build(self, job: Job) -> Any:
        if job.role == "seed":
            if job.expert_index is None:
                return self.breeder.base()
            return self.breeder.expert(job.expert_index)
        parents = [self.breeder.load(self.run_dir / p) for p in job.parent_paths]
        if job.combine:
            return self.breeder.combine(parents, job.weights)
        return self.breeder.breed(
            parents, job.weights, job.mutation_task, job.mutation_seed, scale=job.scale
        )

    def close(self) -> None:
        for evaluator in self.evaluators.values():
            evaluator.close()
        self.backend.close()
        self.breeder.close()
