"""A weight_probe that fails on purpose every n-th call (failure-isolation tests)."""

from __future__ import annotations

from cycleqd_evaluators.weight_probe import WeightProbeEvaluator, WeightProbeOptions
from tests.run_evaluators import CountingProbe


class FlakyOptions(WeightProbeOptions):
    fail_every: int = 3


class FlakyProbe(CountingProbe):
    Options = FlakyOptions

    def evaluate(self, backend):
        if self.next_call() % self.options.fail_every == 0:
            raise RuntimeError("injected failure")
        return super().evaluate(backend)


class NormProbe(WeightProbeEvaluator):
    """Score = the mean absolute weight of the model (nonzero for every model)."""

    def evaluate(self, backend):
        from cycleqd_evaluators.weight_probe import backend_tensors
        from mergekit_cycleqd.evaluate.base import TaskResult

        tensors = [t for t in backend_tensors(backend).values() if t.is_floating_point()]
        total = sum(float(t.abs().sum()) for t in tensors)
        count = sum(t.numel() for t in tensors)
        score = min(1.0, total / count)
        return TaskResult(score, {"score": score}, [])


class SlowOptions(WeightProbeOptions):
    slow_every: int = 2
    sleep_s: float = 5.0


class SlowProbe(CountingProbe):
    """A weight_probe that hangs on every n-th call (timeout tests)."""

    Options = SlowOptions

    def evaluate(self, backend):
        import time

        calls = self.next_call()
        if calls > 3 and calls % self.options.slow_every == 0:  # seeds stay fast
            time.sleep(self.options.sleep_s)
        return super().evaluate(backend)
