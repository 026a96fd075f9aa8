"""Evaluators that misbehave on purpose, for the tests of runs that must survive them.

Each is a weight_probe that, on a chosen call, exits, raises an OS error, kills its
own process, blocks, or waits for a second worker. They decide from their own call
count or from marker files in a folder the test owns, never from the clock.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from cycleqd_evaluators.weight_probe import WeightProbeEvaluator, WeightProbeOptions


class CallOptions(WeightProbeOptions):
    on_call: int = 4  # the n-th evaluation in this process (the seeds are calls 1..3)


class CountingProbe(WeightProbeEvaluator):
    """A weight_probe that counts its evaluations in this process."""

    def __init__(self, options):
        super().__init__(options)
        self.calls = 0

    def next_call(self) -> int:
        self.calls += 1
        return self.calls


class ExitProbe(CountingProbe):
    """Calls sys.exit(3) on the n-th evaluation, as a careless evaluator script would."""

    Options = CallOptions

    def evaluate(self, backend):
        if self.next_call() == self.options.on_call:
            sys.exit(3)
        return super().evaluate(backend)


class DiskFullProbe(ExitProbe):
    """Raises ENOSPC on the n-th evaluation (a full disk under the evaluator's files)."""

    def evaluate(self, backend):
        if self.next_call() == self.options.on_call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/scratch/samples.jsonl")
        return WeightProbeEvaluator.evaluate(self, backend)


class FlagOptions(WeightProbeOptions):
    flag: str  # fail while this file exists


class FailWhileFlagged(WeightProbeEvaluator):
    """Fails while a flag file exists: a transient outside condition the test ends."""

    Options = FlagOptions

    def evaluate(self, backend):
        if Path(self.options.flag).exists():
            raise RuntimeError(f"transient failure ({self.options.flag} exists)")
        return super().evaluate(backend)


class NanSafeProbe(WeightProbeEvaluator):
    """weight_probe on the weights with NaN read as 0, so a model holding NaN still scores."""

    def evaluate(self, backend):
        from mergekit_cycleqd.evaluate.base import TaskResult

        base, directions, norm = self._reference
        child = {
            name: torch.nan_to_num(tensor.double(), nan=0.0)
            for name, tensor in _tensors(backend).items()
        }
        dot = sum(
            float(((child[name] - torch.nan_to_num(base[name].double())) * d).sum())
            for name, d in directions.items()
            if name in child
        )
        projection = dot / norm if norm > 0 else 0.0
        score = min(1.0, max(0.0, projection))
        return TaskResult(score, {"score": score}, [])


def _tensors(backend):
    from cycleqd_evaluators.weight_probe import backend_tensors

    return backend_tensors(backend)


class BlockOptions(WeightProbeOptions):
    block_from_call: int = 4
    block_every: int = 2


class BlockingProbe(CountingProbe):
    """Blocks on an event nobody sets on every n-th call: slow by construction.

    Only the child time limit can end the wait; if it never fires, the wait gives up
    after two minutes with an error that the test does not accept.
    """

    Options = BlockOptions

    def evaluate(self, backend):
        due = self.next_call() - self.options.block_from_call
        if due >= 0 and due % self.options.block_every == 0:
            threading.Event().wait(120)
            raise AssertionError("the child time limit never fired")
        return super().evaluate(backend)


class FolderOptions(WeightProbeOptions):
    folder: str
    after: int = 6  # evaluations (cluster-wide) before the behaviour starts
    times: int = 1  # how many times it happens


def _count(folder: Path, prefix: str) -> int:
    return len(list(folder.glob(prefix + "*")))


def _claim(folder: Path, prefix: str, times: int) -> bool:
    """Atomically take one of ``times`` tickets (O_EXCL), across processes."""
    for i in range(times):
        try:
            os.close(os.open(folder / f"{prefix}{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            continue
    return False


def _record_evaluation(folder: Path) -> None:
    """One marker file per evaluation, so that ``_count(folder, "eval-")`` counts them
    across every worker process."""
    os.close(os.open(folder / f"eval-{os.getpid()}-{time.monotonic_ns()}", os.O_CREAT))


class WorkerKiller(WeightProbeEvaluator):
    """SIGKILLs its own worker process mid-evaluation, ``times`` times across the cluster."""

    Options = FolderOptions

    def evaluate(self, backend):
        folder = Path(self.options.folder)
        _record_evaluation(folder)
        if _count(folder, "eval-") > self.options.after and _claim(
            folder, "kill-", self.options.times
        ):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().evaluate(backend)


class PoisonChild(WeightProbeEvaluator):
    """The first model scored after ``after`` evaluations kills its worker, and so does that
    same model (known by its score) every time it is scored again, on any worker."""

    Options = FolderOptions

    def evaluate(self, backend):
        folder = Path(self.options.folder)
        result = super().evaluate(backend)
        key = repr(float(result.score))
        _record_evaluation(folder)
        poison = folder / "poison"
        if poison.exists() and poison.read_text() == key:
            os.kill(os.getpid(), signal.SIGKILL)
        if _count(folder, "eval-") > self.options.after and _claim(folder, "kill-", 1):
            poison.write_text(key)
            os.kill(os.getpid(), signal.SIGKILL)
        return result


class Rendezvous(WeightProbeEvaluator):
    """Records each evaluation's interval; the first one waits until another worker's starts.

    With workers that really run at once the wait ends as soon as the second worker
    starts an evaluation; run one at a time, no interval overlaps another.
    """

    Options = FolderOptions

    def evaluate(self, backend):
        folder = Path(self.options.folder)
        pid = os.getpid()
        start = time.time_ns()
        (folder / f"start-{pid}-{start}").touch()
        if not (folder / "met").exists():
            for _ in range(1200):  # at most two minutes
                others = [  # another worker's evaluation that was running after ours began
                    p
                    for p in folder.glob("start-*")
                    if p.name.split("-")[1] != str(pid) and _ended_after(p, folder, start)
                ]
                if others:
                    break
                time.sleep(0.1)
            (folder / "met").touch()  # met, or gave up: later evaluations do not wait
        result = super().evaluate(backend)
        (folder / f"end-{pid}-{start}").write_text(str(time.time_ns()))
        return result


def _ended_after(start_file: Path, folder: Path, moment: int) -> bool:
    """That evaluation has not ended, or ended after ``moment`` (ns)."""
    end = folder / ("end-" + start_file.name.removeprefix("start-"))
    try:
        return int(end.read_text()) > moment
    except (FileNotFoundError, ValueError):  # still running (or its end is being written)
        return True


class GateOptions(WeightProbeOptions):
    folder: str
    on_call: int = 6


class Gate(CountingProbe):
    """On the n-th call, says so (file ``waiting``) and holds until the test creates ``go``.

    The test knows exactly which child is in flight when it sends its signal.
    """

    Options = GateOptions

    def evaluate(self, backend):
        if self.next_call() == self.options.on_call:
            folder = Path(self.options.folder)
            (folder / "waiting").touch()
            for _ in range(1200):  # at most two minutes
                if (folder / "go").exists():
                    break
                time.sleep(0.1)
        return super().evaluate(backend)


class Jittery(WeightProbeEvaluator):
    """Waits 0-40 ms (fresh randomness each call) before scoring: with several workers,
    which one finishes first changes from run to run."""

    def evaluate(self, backend):
        time.sleep(int.from_bytes(os.urandom(2), "little") / 65535 * 0.04)
        return super().evaluate(backend)


class RecordGpus(WeightProbeEvaluator):
    """Writes the CUDA_VISIBLE_DEVICES its worker process was given into the folder."""

    Options = FolderOptions

    def evaluate(self, backend):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        (Path(self.options.folder) / f"gpus-{os.getpid()}").write_text(visible)
        return super().evaluate(backend)


class CannotStart(WeightProbeEvaluator):
    """Fails while its worker sets up."""

    def __init__(self, options):
        raise RuntimeError("this evaluator cannot start")


RAY_EVALUATORS = {"worker_killer": "WorkerKiller", "rendezvous": "Rendezvous"}


def register_in_this_process() -> None:
    """Ray's worker_process_setup_hook: Ray workers need the test evaluators too."""
    from mergekit_cycleqd.evaluate.base import register_evaluator

    for kind, name in RAY_EVALUATORS.items():
        register_evaluator(kind, f"tests.run_evaluators:{name}")
