"""Steady-state asynchronous runs on a local Ray cluster: real concurrency, and healing.

The evaluators in ``tests/run_evaluators.py`` record what the workers did (evaluation
intervals, kills) in a folder the test owns; the assertions read those records.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mergekit_cycleqd.errors import RunError
from mergekit_cycleqd.filing.archive import archives_from_ledger
from mergekit_cycleqd.recipe import parse_recipe
from mergekit_cycleqd.search.loop import CycleQD
from mergekit_cycleqd.search.ray_executor import start_ray
from tests.probe_recipe import probe_recipe
from tests.run_evaluators import register_in_this_process

REPO = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    register_in_this_process()
    ray.init(
        num_cpus=2,
        object_store_memory=80 * 1024 * 1024,
        include_dashboard=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"},
            "worker_process_setup_hook": "tests.run_evaluators.register_in_this_process",
        },
    )
    yield ray
    ray.shutdown()


def _ray_recipe(family, *, generations: int, count: int, evaluator: str, folder: Path) -> dict:
    raw = probe_recipe(*family, generations=generations)
    raw["workers"] = {"count": count, "executor": "ray", "cpus_per_worker": 0.5}
    raw["tasks"][0]["evaluator"] = evaluator
    raw["tasks"][0]["options"]["folder"] = str(folder)
    return raw


def _run(raw: dict, run_dir: Path):
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), run_dir)
    try:
        summary = run.run()
        records = run.ledger.children(role="child", status=None)
        archives = archives_from_ledger(run.ledger)
    finally:
        run.close()
    return summary, records, archives


@pytest.mark.slow
def test_two_ray_workers_evaluate_at_the_same_time(ray_cluster, tiny_family, tmp_path) -> None:
    folder = tmp_path / "intervals"
    folder.mkdir()
    raw = _ray_recipe(tiny_family, generations=10, count=2, evaluator="rendezvous", folder=folder)
    summary, records, archives = _run(raw, tmp_path / "run")
    assert summary.generations_done == 10 and summary.failed == 0
    assert sorted(r.generation for r in records) == list(range(1, 11))
    intervals = []  # (pid, start_ns, end_ns) of every evaluation, as the workers recorded them
    for end in folder.glob("end-*"):
        _, pid, start = end.name.split("-")
        intervals.append((int(pid), int(start), int(end.read_text())))
    assert len(intervals) == 3 + 10
    overlapping = [
        (a, b) for a in intervals for b in intervals if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]
    ]
    assert overlapping, "no two workers were ever evaluating at the same time"
    for record in records:  # parents were filed before the child was issued
        assert all(p < record.id for p in record.parents)
    for archive in archives.values():
        for record in records:
            assert archive.cell(record.scores) in archive.elites


@pytest.mark.slow
def test_a_worker_killed_at_random_is_replaced_and_its_child_redone(
    ray_cluster, tiny_family, tmp_path, caplog
) -> None:
    folder = tmp_path / "kills"
    folder.mkdir()
    raw = _ray_recipe(
        tiny_family, generations=12, count=2, evaluator="worker_killer", folder=folder
    )
    raw["tasks"][0]["options"].update(after=random.randint(4, 12), times=1)
    with caplog.at_level(logging.WARNING):
        summary, records, _ = _run(raw, tmp_path / "run")
    assert len(list(folder.glob("kill-*"))) == 1  # a worker really died
    assert summary.generations_done == 12 and summary.failed == 0
    assert sorted(r.generation for r in records) == list(range(1, 13))  # each filed once
    assert "a Ray worker died running" in caplog.text and "running" in caplog.text


@pytest.mark.slow
def test_a_child_that_kills_two_workers_is_filed_failed(ray_cluster, tiny_family, tmp_path) -> None:
    folder = tmp_path / "kills"
    folder.mkdir()
    raw = _ray_recipe(tiny_family, generations=3, count=1, evaluator="worker_killer", folder=folder)
    raw["tasks"][0]["options"].update(after=4, times=2)  # the 5th evaluation on: gen 2, twice
    summary, records, _ = _run(raw, tmp_path / "run")
    assert summary.generations_done == 3 and summary.failed == 1
    failed = [r for r in records if not r.ok]
    assert [r.generation for r in failed] == [2]
    assert failed[0].error.startswith("killed 2 Ray workers (last: ")


class _FakeRay:
    """Stands in for the ray module: init fails ``failures`` times, records addresses."""

    def __init__(self, failures: int):
        self.failures = failures
        self.addresses: list[str | None] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, address=None, **_kwargs) -> None:
        self.addresses.append(address)
        if len(self.addresses) <= self.failures:
            raise Exception("The current node timed out during startup.")

    def shutdown(self) -> None:
        pass


def test_ray_start_is_retried_until_the_setting_runs_out(monkeypatch) -> None:
    import mergekit_cycleqd.search.ray_executor as module

    clock = [0.0]  # a fake clock: sleeping advances it, nothing waits

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep))
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    fake = _FakeRay(failures=2)
    start_ray(fake, address=None, timeout_s=3600)
    assert fake.addresses == ["ray://head:10001"] * 3  # the environment's cluster, third try
    fake = _FakeRay(failures=10**6)
    with pytest.raises(RunError, match=r"ray://other:1 within workers\.ray_start_timeout_s = 12 s"):
        start_ray(fake, address="ray://other:1", timeout_s=12)
    assert clock[0] >= 12 and len(fake.addresses) == 4  # tried at 0, 5, 10 and 12 s
    assert os.environ["RAY_ADDRESS"] == "ray://head:10001"
