"""Executors run jobs for the steady-state loop: W jobs in flight, results as they finish.

The driver only uses ``capacity``, ``submit`` and ``next_result``; the in-process
executor runs one job at a time in the driver's process (the default), the
process executor keeps ``count`` worker processes on this machine
(``process_executor``) and the Ray executor one long-lived actor per worker on a
local or remote Ray cluster (``ray_executor``), each worker with its own resident
model. ``InGenerationOrder`` makes any of them hand results back in the order the
jobs were submitted, which keeps a run with several workers deterministic.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

from mergekit_cycleqd.search.jobs import Job, JobResult

log = logging.getLogger(__name__)

MAX_WORKER_LOSSES = 2

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


class WorkerLosses:
    """Which jobs killed their workers: a job is run again until it has killed
    ``MAX_WORKER_LOSSES``, then filed as failed, so one poisonous child cannot eat
    every worker."""

    def __init__(self, kind: str):
        self.kind = kind  # "Ray worker", "local worker"
        self.by_job: dict[str, list[str]] = {}

    def record(self, job: Job, reason: str) -> JobResult | None:
        """Count a loss; the failed result once the job has lost too many workers, else None."""
        losses = self.by_job.setdefault(job.name, [])
        losses.append(reason)
        if len(losses) >= MAX_WORKER_LOSSES:
            log.warning(
                "a %s died running %s (%s); it is the %d. worker lost to this job, so "
                "%s is filed as failed; a new worker replaces the lost one",
                self.kind,
                job.name,
                reason,
                len(losses),
                job.name,
            )
            return JobResult(
                job, "failed", error=f"killed {len(losses)} {self.kind}s (last: {reason})"
            )
        log.warning(
            "a %s died running %s (%s); replaced it and running %s again",
            self.kind,
            job.name,
            reason,
            job.name,
        )
        return None


class InGenerationOrder(Executor):
    """Hands results back in the order their jobs were submitted.

    With W jobs in flight, the driver then asks for child g right after filing
    child g - W, whatever order the workers finish in: the archives each child is
    bred from, and so the whole run, do not depend on timing (``workers.order:
    generation``). A slow job holds back the filing of later ones.
    """

    def __init__(self, inner: Executor):
        self.inner = inner
        self.capacity = inner.capacity
        self.order: deque[str] = deque()
        self.done: dict[str, JobResult] = {}

    def submit(self, job: Job) -> None:
        self.order.append(job.name)
        self.inner.submit(job)

    def next_result(self) -> JobResult:
        head = self.order[0]
        while head not in self.done:
            result = self.inner.next_result()
            self.done[result.job.name] = result
        self.order.popleft()
        return self.done.pop(head)

    def in_flight(self) -> int:
        return len(self.order)

    def close(self) -> None:
        self.inner.close()
