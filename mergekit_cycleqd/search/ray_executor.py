"""The Ray executor: ``count`` long-lived actors, healed when one dies.

A worker process can die under a job (SIGKILL, OOM killer, a lost node). The job's
result then never comes; Ray reports the actor as dead. The executor replaces the
actor with a new one built the same way, and runs the job again on a live worker.
A job that has killed ``executor.MAX_WORKER_LOSSES`` workers is filed as failed with the
reason, so one poisonous child cannot eat the cluster.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from mergekit_cycleqd.errors import RunError
from mergekit_cycleqd.recipe import Recipe
from mergekit_cycleqd.search.executor import Executor, WorkerLosses
from mergekit_cycleqd.search.jobs import Job, JobResult

log = logging.getLogger(__name__)


def start_ray(ray, *, address: str | None, timeout_s: float) -> None:
    """``ray.init`` (connecting to ``address`` or RAY_ADDRESS when set), retried until ``timeout_s``.

    Ray itself gives a starting node a fixed 30 s; on a loaded machine that is not
    enough, so a failed start is shut down and tried again until the setting runs out.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
            return
        except Exception as error:  # Ray raises bare Exception / ConnectionError here
            ray.shutdown()
            if time.monotonic() >= deadline:
                where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
                raise RunError(
                    f"could not start or reach {where} within workers.ray_start_timeout_s = "
                    f"{timeout_s:g} s (last error: {error}). On a loaded machine raise "
                    f"workers.ray_start_timeout_s; or start the cluster yourself "
                    f"(ray start --head) and set workers.ray_address or RAY_ADDRESS."
                ) from None
            log.warning("Ray did not start (%s); trying again", error)
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


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
            raise RunError(
                "workers.executor is 'ray' but Ray is not installed: "
                "pip install 'mergekit-cycleqd[ray]'"
            ) from None
        self.ray = ray
        settings = recipe.workers
        start_ray(ray, address=settings.ray_address, timeout_s=settings.ray_start_timeout_s)
        self._actor_class = ray.remote(_RayWorker).options(
            num_cpus=settings.cpus_per_worker, num_gpus=settings.gpus_per_worker
        )
        self._setup = (recipe_text, str(run_dir), str(base), [str(e) for e in experts])
        self.capacity = settings.count
        self.idle = [self._new_actor() for _ in range(settings.count)]
        self.pending: dict[object, tuple[object, Job]] = {}
        self.losses = WorkerLosses("Ray worker")
        self.replaced = 0

    def _new_actor(self):
        return self._actor_class.remote(*self._setup)

    def submit(self, job: Job) -> None:
        actor = self.idle.pop()
        self.pending[actor.run.remote(job)] = (actor, job)

    def next_result(self) -> JobResult:
        while True:
            (ready,), _ = self.ray.wait(list(self.pending), num_returns=1)
            actor, job = self.pending.pop(ready)
            try:
                result = self.ray.get(ready)
            except (
                self.ray.exceptions.RayActorError,
                self.ray.exceptions.WorkerCrashedError,
                self.ray.exceptions.ObjectLostError,
            ) as error:
                failed = self._replace(actor, job, error)
                if failed is not None:
                    return failed
                continue
            except self.ray.exceptions.RayError as error:
                self.idle.append(actor)
                return JobResult(job, "failed", error=f"Ray task failed: {error}")
            self.idle.append(actor)
            return result

    def _replace(self, actor, job: Job, error: Exception) -> JobResult | None:
        """Swap a dead actor for a new one; retry its job, or fail it after repeated losses."""
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        self.replaced += 1
        replacement = self._new_actor()
        failed = self.losses.record(job, reason)
        if failed is not None:
            self.idle.append(replacement)
            return failed
        self.pending[replacement.run.remote(job)] = (replacement, job)
        return None

    def in_flight(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        for actor in [*self.idle, *(a for a, _ in self.pending.values())]:
            try:
                self.ray.kill(actor)
            except Exception:  # a dead actor needs no killing
                pass


class _RayWorker:
    """Actor body: imports the plugin (registers the merge methods) and wraps a Worker."""

    def __init__(self, recipe_text: str, run_dir: str, base: str, experts: list[str]):
        from mergekit_cycleqd.merge.methods import register_methods
        from mergekit_cycleqd.recipe import parse_recipe
        from mergekit_cycleqd.search.worker import Worker

        register_methods()  # mergekit resolves method names in this process too

        recipe = parse_recipe(recipe_text, "recipe.yml", Path(run_dir))
        self.worker = Worker(recipe, Path(run_dir), Path(base), [Path(e) for e in experts])

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: Job) -> JobResult:
        return self.worker.run(job)
