"""The local multi-process executor: ``count`` worker processes on this machine, no Ray.

Each worker is ``python -m mergekit_cycleqd.search.process_worker`` with its own
resident model, breeder and evaluators, talking to the driver over two pipes
(pickled jobs in, pickled results out). Workers run in their own session, so a
Ctrl-C in the terminal reaches only the driver, which finishes the jobs in flight
and stops; a worker whose driver is gone reads end-of-file and exits. A worker that
dies under a job is replaced and the job runs again, as with Ray (``WorkerLosses``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from multiprocessing.connection import Connection, wait
from pathlib import Path

from mergekit_cycleqd.errors import RunError
from mergekit_cycleqd.search.executor import Executor, WorkerLosses
from mergekit_cycleqd.search.jobs import Job, JobResult

log = logging.getLogger(__name__)


class _Process:
    """One worker process and the driver's ends of its two pipes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        to_worker_read, to_worker_write = os.pipe()
        from_worker_read, from_worker_write = os.pipe()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mergekit_cycleqd.search.process_worker",
                str(to_worker_read),
                str(from_worker_write),
            ],
            pass_fds=(to_worker_read, from_worker_write),
            start_new_session=True,  # the terminal's Ctrl-C is the driver's to handle
            env={**os.environ, **env},
        )
        os.close(to_worker_read)
        os.close(from_worker_write)
        self.inbox = Connection(from_worker_read, writable=False)
        self.outbox = Connection(to_worker_write, readable=False)
        self.ready = False
        self.job: Job | None = None

    def start(self, setup: tuple[str, str, str, list[str]]) -> _Process:
        """Hand the worker its run; until then it only imports its libraries."""
        self.outbox.send(setup)
        return self

    def receive(self) -> object:
        """The worker's next message; EOFError when it died."""
        return self.inbox.recv()

    def close(self) -> None:
        for end in (self.outbox, self.inbox):
            end.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def worker_environments(count: int, gpus_per_worker: float) -> list[dict[str, str]]:
    """What each local worker adds to its environment: its own GPUs when
    ``gpus_per_worker`` is a whole number >= 1 (``CUDA_VISIBLE_DEVICES``), else nothing
    (fractional or no GPUs: the workers share the devices the backend names)."""
    if gpus_per_worker < 1 or gpus_per_worker != int(gpus_per_worker):
        return [{} for _ in range(count)]
    per = int(gpus_per_worker)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())]
    if len(devices) < count * per:
        raise RunError(
            f"workers: {count} local workers with gpus_per_worker: {per} need {count * per} "
            f"GPUs; this machine shows {len(devices)} ({', '.join(devices) or 'none'}). Lower "
            "workers.count or workers.gpus_per_worker, or set gpus_per_worker: 0 to share them."
        )
    return [
        {"CUDA_VISIBLE_DEVICES": ",".join(devices[i * per : (i + 1) * per])} for i in range(count)
    ]


class EarlyWorkers:
    """Worker processes started before their run is known (the driver still checks the
    recipe, builds assets, opens the ledger): their imports overlap that work."""

    def __init__(self, count: int, gpus_per_worker: float = 0):
        self.processes = [_Process(env) for env in worker_environments(count, gpus_per_worker)]

    def take(self) -> list[_Process]:
        processes, self.processes = self.processes, []
        return processes

    def close(self) -> None:
        for process in self.take():
            process.close()


class ProcessExecutor(Executor):
    """``count`` local worker processes, each a Worker with its own resident model."""

    def __init__(
        self,
        run_dir: Path,
        base: Path,
        experts: list[Path],
        recipe_text: str,
        count: int,
        early: EarlyWorkers | None = None,
        gpus_per_worker: float = 0,
    ):
        self.setup = (recipe_text, str(run_dir), str(base), [str(e) for e in experts])
        self.capacity = count
        self.losses = WorkerLosses("local worker")
        early = early or EarlyWorkers(count, gpus_per_worker)
        self.processes = [p.start(self.setup) for p in early.take()]
        self.finished: list[JobResult] = []

    def submit(self, job: Job) -> None:
        process = next(p for p in self.processes if p.job is None)
        process.job = job
        process.outbox.send(job)

    def in_flight(self) -> int:
        return sum(p.job is not None for p in self.processes) + len(self.finished)

    def next_result(self) -> JobResult:
        while not self.finished:
            busy = {p.inbox: p for p in self.processes if p.job is not None or not p.ready}
            if not any(p.job is not None for p in self.processes):
                raise RuntimeError("next_result() with no job in flight")
            for inbox in wait(list(busy)):
                self._read(busy[inbox])
        return self.finished.pop(0)

    def _read(self, process: _Process) -> None:
        try:
            message = process.receive()
        except (EOFError, OSError):
            self._lost(process)
            return
        kind, payload = message
        if kind == "ready":
            process.ready = True
        elif kind == "result":
            process.job = None
            self.finished.append(payload)
        else:  # "error": the worker cannot go on (bad setup, a full disk): the run stops
            job = process.job
            self.close()
            where = f" running {job.name}" if job is not None else ""
            raise RunError(f"a local worker stopped{where}: {payload}")

    def _lost(self, process: _Process) -> None:
        """Replace a dead worker; run its job again, or file it failed after repeated losses."""
        job = process.job
        code = process.process.wait()
        if not process.ready:  # it never started: a replacement would fail the same way
            self.close()
            raise RunError(
                f"a local worker exited (code {code}) while starting; its error is above"
            )
        process.close()
        self.processes[self.processes.index(process)] = _Process(process.env).start(self.setup)
        if job is None:
            return
        reason = f"the worker process exited with code {code}"
        failed = self.losses.record(job, reason)
        if failed is not None:
            self.finished.append(failed)
        else:
            self.submit(job)

    def close(self) -> None:
        for process in self.processes:
            process.close()
        self.processes = []
