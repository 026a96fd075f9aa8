"""Executors run jobs for the steady-state loop: W jobs in flight, results as they finish.

The driver only uses ``capacity``, ``submit`` and ``next_result``; the in-process
executor runs one job at a time in the driver's process (deterministic, the
default), the Ray executor keeps one long-lived actor per worker (each with its
own resident model) on a local or remote Ray cluster.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from pathlib import Path

from mergekit_cycleqd.recipe import Recipe
from mergekit_cycleqd.search.jobs import Job, JobResult

WorkerFactory = Callable[[], "object"]


class Executor(ABC):
    capacity: int

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Start a job (never more than ``capacity`` in flight)."""

    @abstractmethod
    def next_result(self) -> JobResult:
        """Block until any job in flight finishes and return its result."""

    @abstractmethod
    def in_flight(self) -> int: ...

    def close(self) -> None:
        """Release workers."""


class InProcessExecutor(Executor):
    """One worker in the driver's process; jobs run when their result is asked for."""

    capacity = 1

    def __init__(self, worker_factory: WorkerFactory):
        self.worker = worker_factory()
        self.queue: deque[Job] = deque()

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    def next_result(self) -> JobResult:
        return self.worker.run(self.queue.popleft())

    def in_flight(self) -> int:
        return len(self.queue)

    def close(self) -> None:
        self.worker.close()


class RayExecutor(Executor):
    """``count`` Ray actors, each a Worker with its own resident model."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        base: Path,
        experts: list[Path],
        recipe_text: str,
    ):
        try:
            import ray
        except ImportError:
            raise RuntimeError(
                "workers.executor is 'ray' but Ray is not installed: pip install 'mergekit-cycleqd[ray]'"
            ) from None
        self.ray = ray
        settings = recipe.workers
        if not ray.is_initialized():
            ray.init(address=settings.ray_address, ignore_reinit_error=True, log_to_driver=False)
        actor_class = ray.remote(_RayWorker).options(
            num_cpus=settings.cpus_per_worker, num_gpus=settings.gpus_per_worker
        )
        self.capacity = settings.count
        self.actors = [
            actor_class.remote(recipe_text, str(run_dir), str(base), [str(e) for e in experts])
            for _ in range(settings.count)
        ]
        self.idle = list(self.actors)
        self.pending: dict[object, tuple[object, Job]] = {}

    def submit(self, job: Job) -> None:
        actor = self.idle.pop()
        self.pending[actor.run.remote(job)] = (actor, job)

    def next_result(self) -> JobResult:
        (ready,), _ = self.ray.wait(list(self.pending), num_returns=1)
        actor, job = self.pending.pop(ready)
        self.idle.append(actor)
        try:
            return self.ray.get(ready)
        except self.ray.exceptions.RayError as error:  # the actor died (OOM, node lost)
            return JobResult(job, "failed", error=f"Ray worker failed: {error}")

    def in_flight(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


class _RayWorker:
    """Actor body: imports the plugin (registers the merge methods) and wraps a Worker."""

    def __init__(self, recipe_text: str, run_dir: str, base: str, experts: list[str]):
        from mergekit_cycleqd.merge.methods import register_methods
        from mergekit_cycleqd.recipe import parse_recipe
        from mergekit_cycleqd.search.worker import Worker

        register_methods()  # mergekit resolves method names in this process too

        recipe = parse_recipe(recipe_text, "recipe.yml", Path(run_dir))
        self.worker = Worker(recipe, Path(run_dir), Path(base), [Path(e) for e in experts])

    def run(self, job: Job) -> JobResult:
        return self.worker.run(job)
