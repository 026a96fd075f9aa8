"""Executors run jobs for the steady-state loop: W jobs in flight, results as they finish.

The driver only uses ``capacity``, ``submit`` and ``next_result``; the in-process
executor runs one job at a time in the driver's process (deterministic, the
default), the Ray executor keeps one long-lived actor per worker (each with its
own resident model) on a local or remote Ray cluster (``ray_executor``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

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
