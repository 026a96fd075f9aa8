"""Steady-state asynchronous runs on a local Ray cluster (2 workers in flight)."""

from __future__ import annotations

import pytest
import yaml

from mergekit_cycleqd.filing.archive import archives_from_ledger
from mergekit_cycleqd.recipe import parse_recipe
from mergekit_cycleqd.search.loop import CycleQD
from tests.probe_recipe import probe_recipe

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_two_ray_workers_fill_the_archives(ray_cluster, tiny_family, tmp_path) -> None:
    raw = probe_recipe(*tiny_family, generations=10)
    raw["workers"] = {"count": 2, "executor": "ray", "cpus_per_worker": 0.5}
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), tmp_path / "run")
    summary = run.run()
    records = run.ledger.children(role="child", status=None)
    archives = archives_from_ledger(run.ledger)
    run.close()
    assert summary.generations_done == 10 and summary.failed == 0
    assert sorted(r.generation for r in records) == list(range(1, 11))
    # each child's parents were elites filed before it was issued
    for record in records:
        assert all(p < record.id for p in record.parents)
    for archive in archives.values():
        assert archive.elites
        for record in records:
            assert archive.cell(record.scores) in archive.elites
