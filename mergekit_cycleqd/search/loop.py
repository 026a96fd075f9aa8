"""The CycleQD driver: seeds, BC ranges, the steady-state cycle, resume.

Determinism: everything random about generation g (parents, crossover weights,
mutation seed) comes from ``default_rng([seed, g])`` applied to the archives as
they stand when the job is issued. With one in-process worker the archives at
issue time depend only on the ledger, so a run killed at any moment and resumed
produces exactly the ledger an uninterrupted run produces.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mergekit_cycleqd.errors import LedgerError, RunError
from mergekit_cycleqd.filing.archive import (
    MEAN_ARCHIVE,
    Archive,
    archives_from_ledger,
    filable,
    offer_to_all,
    paper_range,
)
from mergekit_cycleqd.filing.ledger import BACKUP_NAME, Ledger
from mergekit_cycleqd.filing.runfolder import RunFolder
from mergekit_cycleqd.recipe import Recipe, RecipeError
from mergekit_cycleqd.recipe.models import hub_id, resolve_models
from mergekit_cycleqd.search.executor import Executor
from mergekit_cycleqd.search.jobs import Job, JobResult
from mergekit_cycleqd.search.kinds import make_search
from mergekit_cycleqd.search.progress import RunProgress, StepProgress
from mergekit_cycleqd.search.sampling import sample_parents
from mergekit_cycleqd.search.seeds import check_some_seed_scored, seed_jobs
from mergekit_cycleqd.search.signals import GracefulStop
from mergekit_cycleqd.search.start_workers import make_executor

if TYPE_CHECKING:
    from mergekit_cycleqd.search.process_executor import EarlyWorkers

log = logging.getLogger(__name__)

BACKUP_EVERY = 10  # filed models between two backups of the ledger


@dataclass
class RunSummary:
    run_dir: Path
    generations_done: int
    failed: int
    best: dict[str, tuple[int, float]] = field(default_factory=dict)
    coverage: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    stop_signal: int | None = None  # the signal that stopped the run (SIGINT, SIGTERM)


def active_task(tasks: list[str], generation: int) -> str:
    """Generation g optimises tasks[g mod K] (CYCLEQD.md)."""
    return tasks[generation % len(tasks)]


class CycleQD:
    """Runs (or resumes) one recipe into one run folder."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        resume: bool = False,
        *,
        retry_failed: bool = False,
        early_workers: EarlyWorkers | None = None,
    ):
        self.recipe = recipe
        self.retry_failed = retry_failed
        self.early_workers = early_workers  # local worker processes started by the caller
        self.folder = RunFolder(run_dir)
        self._lock = self.folder.lock()  # one writer per run folder, for our whole life
        self.ledger: Ledger | None = None
        try:
            self.folder.prepare(recipe, resume=resume)
            self.ledger = Ledger(self.folder.ledger_path)
            self.tasks = recipe.task_names
            self.base, self.experts = self._resolve_models()
            self._record_meta()
        except BaseException:
            self.close()
            raise
        self.archives: dict[str, Archive] = {}
        self.executor: Executor | None = None
        self._filed_since_backup = 0
        self.search = None  # search.kind other than cycleqd: built and replayed in run()
        self._newest_filed = 0  # the newest generation filed (for _archives_for)

    @property
    def lag(self) -> int | None:
        """Child g is asked right after child g - lag is filed (None: results as they come)."""
        workers = self.recipe.workers
        order = workers.order or ("generation" if workers.executor == "local" else "completion")
        return workers.count if order == "generation" else None

    def _resolve_models(self) -> tuple[Path, list[Path]]:
        if self.recipe.assets is not None:
            from mergekit_cycleqd.recipe.assets import build_assets

            build_assets(self.recipe.assets)
        return resolve_models(self.recipe)

    def _record_meta(self) -> None:
        meta = self.ledger.meta()
        if "tasks" in meta and meta["tasks"] != self.tasks:
            raise RunError(
                f"{self.folder.root}: this run scored tasks {meta['tasks']}, the recipe has "
                f"{self.tasks}; start a fresh run folder instead of resuming"
            )
        self.ledger.set_meta(
            tasks=self.tasks,
            bins=self.recipe.bins,
            seed=self.recipe.search.seed,
            recipe=self.folder.recipe_path.read_text(encoding="utf-8"),
            models={
                "base": {"path": str(self.base), "hub_id": hub_id(self.recipe.base_model)},
                "experts": [
                    {"name": e.name, "task": e.task, "path": str(p), "hub_id": hub_id(e)}
                    for e, p in zip(self.recipe.experts, self.experts)
                ],
            },
        )

    # ---- phases -------------------------------------------------------------
    def run(self, generations: int | None = None) -> RunSummary:
        """Run seeds and the cycle up to ``generations`` (default: the recipe's)."""
        total = self.recipe.search.generations if generations is None else generations
        interrupt = GracefulStop()
        try:
            with interrupt:
                self.executor = make_executor(
                    self.recipe,
                    self.folder.root,
                    self.base,
                    self.experts,
                    self.folder.recipe_path.read_text(encoding="utf-8"),
                    self.lag,
                    self.early_workers,
                )
                self._run_seeds(interrupt)
                if not interrupt.requested:
                    self._fix_ranges()
                    self.archives = self._archives()
                    self._write_all_elite_configs()
                    self.search = make_search(self.recipe)
                    if self.search is not None:
                        self.search.replay(self.ledger.children(role="child", status=None))
                    self._cycle(total, interrupt)
        except KeyboardInterrupt:
            interrupt.signal = interrupt.signal or signal.SIGINT
        finally:
            if self.executor is not None:
                self.executor.close()
            try:
                self.backup()
            except (OSError, sqlite3.Error, LedgerError) as error:  # e.g. a full disk
                log.warning("could not refresh the ledger backup: %s", error)
        if interrupt.requested:
            log.warning("interrupted: every finished child is committed; continue with --resume")
        return self.summary(interrupt.requested, stop_signal=interrupt.signal)

    def backup(self) -> None:
        """Refresh RUN/ledger.backup.sqlite, a consistent copy for ``mergekit-cycleqd recover``."""
        self.ledger.backup(self.folder.root / BACKUP_NAME)
        self._filed_since_backup = 0

    def _run_seeds(self, interrupt: GracefulStop) -> None:
        """Score every expert (and the base) once; see ``seeds.seed_jobs``."""
        pending = seed_jobs(self.recipe, self.ledger)
        with StepProgress("seeds", len(pending)) as progress:
            while pending or self.executor.in_flight():
                while (
                    pending
                    and not interrupt.requested
                    and (self.executor.in_flight() < self.executor.capacity)
                ):
                    job = pending.pop(0)
                    progress.step(f"scoring {job.name.removeprefix('seed:')}")
                    self.executor.submit(job)
                if not self.executor.in_flight():
                    return
                self.tell(self.executor.next_result())
                progress.done()
        check_some_seed_scored(self.ledger)

    def _fix_ranges(self) -> None:
        """BC ranges: explicit in the recipe, else 85 %/115 % of the experts' scores."""
        if "bc_ranges" in self.ledger.meta():
            return
        experts = [r for r in self.ledger.children(role="seed") if r.name != "seed:base"]
        ranges = {}
        for task in self.recipe.tasks:
            if task.range is not None:
                ranges[task.name] = list(task.range)
            else:
                scores = [r.scores[task.name] for r in experts if task.name in r.scores]
                ranges[task.name] = list(paper_range(scores))
        self.ledger.set_meta(bc_ranges=ranges)

    def _cycle(self, total: int, interrupt: GracefulStop) -> None:
        """Issue and file children until ``total`` or a stop signal."""
        pending = self._pending_generations(total)
        self._newest_filed = self.ledger.max_generation()
        progress = RunProgress(self.tasks, total, initial=total - len(pending))
        with progress:
            progress.update(self.archives, None)
            while pending or self.executor.in_flight():
                while (
                    pending
                    and not interrupt.requested
                    and self.executor.in_flight() < self.executor.capacity
                ):
                    self.executor.submit(self.ask(pending.pop(0)))
                if not self.executor.in_flight():
                    break
                result = self.executor.next_result()
                self.tell(result)
                progress.update(self.archives, result)

    def _pending_generations(self, total: int) -> list[int]:
        """Generations without a filed child; failed ones too with ``retry_failed``.

        A failed child is part of the deterministic history (the next children were
        asked knowing it failed), so it stays failed unless the user asks otherwise.
        """
        rows = self.ledger.children(role="child", status=None)
        ok = {r.generation for r in rows if r.ok}
        done = ok if self.retry_failed else {r.generation for r in rows}
        retried = sorted({r.generation for r in rows} - ok) if self.retry_failed else []
        if retried:
            log.warning("--retry-failed: running the failed generation(s) %s again", retried)
        return [g for g in range(1, total + 1) if g not in done]

    def ask(self, generation: int) -> Job:
        """The job for child ``generation``: active task, parents, ω and mutation seed.

        Deterministic given the archives as they stand now and ``[seed, generation]``;
        it changes nothing, so asking again before any ``tell`` gives the same job.
        """
        if self.search is not None:
            return self._coefficient_job(generation)
        task = active_task(self.tasks, generation)
        rng = np.random.default_rng([self.recipe.search.seed, generation])
        search = self.recipe.search
        archive = task if search.cycle else MEAN_ARCHIVE
        parents = sample_parents(self._archives_for(generation), archive, search.sampling, rng)
        weights = rng.normal(search.crossover.mu, search.crossover.sigma, size=2)
        mutation_seed = int(rng.integers(0, 2**31 - 1))
        scale = 1.0  # drawn last, so recipes without a scale keep their random streams
        if search.crossover.scale is not None:
            scale = float(rng.uniform(*search.crossover.scale))
        paths = tuple(self.ledger.child(p).model_path for p in parents)
        return Job(
            generation=generation,
            role="child",
            name=f"gen{generation}",
            model_stem=f"children/g{generation:06d}",
            active_task=task if search.cycle else None,
            parents=tuple(parents),
            parent_paths=paths,
            weights=tuple(float(w) for w in weights),
            mutation_task=self.recipe.expert_for(task),
            mutation_seed=mutation_seed,
            scale=scale,
        )

    def _archives(self, upto: int | None = None) -> dict[str, Archive]:
        """The archives replayed from the ledger (children of generation <= ``upto``)."""
        return archives_from_ledger(self.ledger, upto, with_mean=not self.recipe.search.cycle)

    def _archives_for(self, generation: int) -> dict[str, Archive]:
        """What child ``generation`` is bred from: every child up to ``generation - lag``.

        While running, that is exactly what has been filed when the child is asked;
        right after a resume, newer children are filed already and are left out, so a
        resumed run asks every child from the archives an uninterrupted run used.
        """
        lag = self.lag
        upto = max(0, generation - lag) if lag is not None else None  # seeds are generation 0
        if upto is None or lag == 1 or self._newest_filed <= upto:
            return self.archives
        return self._archives(upto=upto)

    def _coefficient_job(self, generation: int) -> Job:
        """theta_b + sum_k a_k tau_k with a from the search kind's optimiser."""
        seeds = {r.name: r for r in self.ledger.children(role="seed")}
        experts = [seeds.get(f"seed:{e.name}") for e in self.recipe.experts]
        if any(e is None for e in experts):
            raise RunError(
                f"{self.folder.root}: search.kind {self.recipe.search.kind} combines every "
                "expert, but an expert seed failed to score; see the ledger's errors"
            )
        return Job(
            generation=generation,
            role="child",
            name=f"gen{generation}",
            model_stem=f"children/g{generation:06d}",
            parents=tuple(e.id for e in experts),
            parent_paths=tuple(e.model_path for e in experts),
            weights=tuple(self.search.ask(generation)),
            combine=True,
        )

    def tell(self, result: JobResult) -> None:
        """File one finished job: one ledger transaction, then the archives and elite configs.

        Every evaluated model is offered to every archive. Results may arrive in any
        order; the ledger records the order they were filed in.
        """
        started = time.perf_counter()
        job = result.job
        child_id = self.ledger.add_child(
            generation=job.generation,
            role=job.role,
            name=job.name,
            status=result.status,
            scores=result.scores,
            active_task=job.active_task,
            parents=job.parents,
            weights=job.weights,
            mutation_seed=job.mutation_seed,
            model_path=result.model_path,
            error=result.error,
            merge_s=result.merge_s,
            eval_s=result.eval_s,
        )
        if job.role == "child":
            self._newest_filed = max(self._newest_filed, job.generation)
        if self.search is not None and job.role == "child":
            scores = {s.task: s.score for s in result.scores}
            self.search.tell(job.generation, scores if result.status == "ok" else None)
        if self.archives:
            record = self.ledger.child(child_id)
            if filable(record, self.tasks):
                if offer_to_all(self.archives, record):
                    self.folder.write_elite_config(self._breeder(), record)
        self.ledger.set_file_time(child_id, time.perf_counter() - started)
        self._filed_since_backup += 1
        if self._filed_since_backup >= BACKUP_EVERY:
            self.backup()

    def _breeder(self):
        worker = getattr(self.executor, "worker", None)
        if worker is not None:
            return worker.breeder
        if not hasattr(self, "_config_breeder"):
            from mergekit_cycleqd.search.worker import make_breeder

            self._config_breeder = make_breeder(self.recipe, self.base, self.experts, "cpu")
        return self._config_breeder

    def _write_all_elite_configs(self) -> None:
        members = {e.child_id for a in self.archives.values() for e in a.elites.values()}
        for child_id in sorted(members):
            if not self.folder.elite_config_path(child_id).exists():
                self.folder.write_elite_config(self._breeder(), self.ledger.child(child_id))

    def summary(self, interrupted: bool = False, *, stop_signal: int | None = None) -> RunSummary:
        archives = self.archives or archives_from_ledger(self.ledger)
        rows = self.ledger.children(role="child", status=None)
        generations = {r.generation for r in rows}
        ok = {r.generation for r in rows if r.ok}
        best = {}
        for task, archive in archives.items():
            elite = archive.best()
            if elite is not None:
                best[task] = (elite.child_id, elite.quality)
        return RunSummary(
            run_dir=self.folder.root,
            generations_done=len(generations),
            failed=len(generations - ok),
            best=best,
            coverage={t: a.coverage() for t, a in archives.items()},
            interrupted=interrupted,
            stop_signal=stop_signal,
        )

    def close(self) -> None:
        """Close the ledger and let go of the run folder's lock (and unused early workers)."""
        if self.early_workers is not None:
            self.early_workers.close()
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
        self._lock.release()


__all__ = ["CycleQD", "RunError", "RunSummary", "RecipeError", "active_task"]
