"""Several local worker processes (``workers.count > 1`` without Ray).

Results are filed in generation order, so a run with W workers is the same run
whatever order the workers finish in, after a dead worker, and after the driver is
killed and resumed. The evaluators in ``tests/run_evaluators.py`` are named by import
path: worker processes import them (the repository is on their PYTHONPATH).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mergekit_cycleqd.filing.ledger import Ledger
from mergekit_cycleqd.recipe import parse_recipe
from mergekit_cycleqd.search.loop import CycleQD
from tests.probe_recipe import probe_recipe, write_recipe

REPO = str(Path(__file__).resolve().parents[1])


@pytest.fixture(autouse=True)
def _workers_import_the_test_evaluators(monkeypatch):
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", REPO if not path else f"{REPO}{os.pathsep}{path}")


def _recipe(
    family, *, generations: int, count: int = 2, evaluator: str | None = None, **options
) -> dict:
    raw = probe_recipe(*family, generations=generations)
    raw["workers"] = {"count": count}
    if evaluator is not None:
        raw["tasks"][0]["evaluator"] = f"tests.run_evaluators:{evaluator}"
        raw["tasks"][0]["options"].update(options)
    return raw


def _run(raw: dict, run_dir: Path):
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), run_dir)
    try:
        return run.run()
    finally:
        run.close()


def _rows(run_dir: Path) -> list[tuple]:
    """Every filed model and score, without timings or paths."""
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        return [
            (
                r.id,
                r.generation,
                r.role,
                r.name,
                r.active_task,
                r.parents,
                r.weights,
                r.mutation_seed,
                r.status,
                sorted(r.scores.items()),
            )
            for r in ledger.children(status=None)
        ]


def test_two_workers_evaluate_at_once_and_each_child_is_bred_two_filings_back(
    tiny_family, tmp_path
) -> None:
    folder = tmp_path / "intervals"
    folder.mkdir()
    raw = _recipe(tiny_family, generations=10, evaluator="Rendezvous", folder=str(folder))
    summary = _run(raw, tmp_path / "run")
    assert summary.generations_done == 10 and summary.failed == 0
    intervals = []
    for end in folder.glob("end-*"):
        _, pid, start = end.name.split("-")
        intervals.append((int(pid), int(start), int(end.read_text())))
    assert len({pid for pid, _, _ in intervals}) == 2 and len(intervals) == 3 + 10
    assert any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in intervals for b in intervals)
    rows = _rows(tmp_path / "run")
    generation_of = {row[0]: row[1] for row in rows}
    children = [row for row in rows if row[2] == "child"]
    assert [row[1] for row in children] == list(range(1, 11))  # filed in generation order
    for _, generation, _, _, _, parents, *_ in children:
        assert all(generation_of[p] <= max(0, generation - 2) for p in parents), parents


def test_the_run_does_not_depend_on_which_worker_finishes_first(tiny_family, tmp_path) -> None:
    raw = _recipe(tiny_family, generations=16, evaluator="Jittery")
    _run(raw, tmp_path / "a")
    _run(raw, tmp_path / "b")
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    one = _recipe(tiny_family, generations=16, count=1, evaluator="Jittery")
    _run(one, tmp_path / "one")
    assert _rows(tmp_path / "one") != _rows(tmp_path / "a")  # the lag is real


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_run_is_unchanged(
    tiny_family, tmp_path, caplog
) -> None:
    folder = tmp_path / "kills"
    folder.mkdir()
    killed = _recipe(
        tiny_family, generations=10, evaluator="WorkerKiller", folder=str(folder), after=7, times=1
    )
    summary = _run(killed, tmp_path / "killed")
    assert len(list(folder.glob("kill-*"))) == 1  # a worker really died
    assert summary.generations_done == 10 and summary.failed == 0
    _run(_recipe(tiny_family, generations=10), tmp_path / "reference")
    assert _rows(tmp_path / "killed") == _rows(tmp_path / "reference")
    assert "a local worker died running" in caplog.text


def test_a_child_that_kills_two_workers_is_filed_failed(tiny_family, tmp_path) -> None:
    folder = tmp_path / "kills"
    folder.mkdir()
    raw = _recipe(
        tiny_family, generations=6, evaluator="PoisonChild", folder=str(folder), after=5
    )  # the 6th model scored (gen 3 or 4) kills every worker that scores it
    summary = _run(raw, tmp_path / "run")
    assert summary.generations_done == 6
    failed = [row for row in _rows(tmp_path / "run") if row[8] != "ok"]
    assert len(failed) == 1 and failed[0][1] in (3, 4) and summary.failed == 1
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        error = next(r.error for r in ledger.children(status=None) if not r.ok)
    assert error.startswith("killed 2 local workers (last: the worker process exited with code -9")


def _driver(recipe: Path, run_dir: Path, resume: bool) -> list[str]:
    args = ["-m", "mergekit_cycleqd.cli", str(recipe), "--out", str(run_dir), "--no-final"]
    return [sys.executable, *args, *(["--resume"] if resume else [])]


def _filed(run_dir: Path) -> int:
    try:
        with sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM children WHERE role='child'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _workers_gone(timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(
            ["pgrep", "-f", "mergekit_cycleqd.search.process_worker"], capture_output=True
        )
        if found.returncode == 1:  # no such process
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_sigkill_the_driver_then_resume_matches_uninterrupted(tiny_family, tmp_path) -> None:
    recipe = write_recipe(tmp_path / "recipe.yml", _recipe(tiny_family, generations=30))
    reference = tmp_path / "reference"
    subprocess.run(_driver(recipe, reference, False), check=True, capture_output=True)
    killed = tmp_path / "killed"
    for attempt, at in enumerate((5, 14)):
        process = subprocess.Popen(
            _driver(recipe, killed, attempt > 0),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while _filed(killed) < at and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert _workers_gone(), "the driver's worker processes outlived it"
    assert _filed(killed) < 30
    subprocess.run(_driver(recipe, killed, True), check=True, capture_output=True)
    assert _rows(killed) == _rows(reference)


def test_each_local_worker_owns_its_gpus(tiny_family, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    folder = tmp_path / "gpus"
    folder.mkdir()
    raw = _recipe(tiny_family, generations=4, evaluator="RecordGpus", folder=str(folder))
    raw["workers"]["gpus_per_worker"] = 2
    _run(raw, tmp_path / "run")
    assert sorted(p.read_text() for p in folder.glob("gpus-*")) == ["3,5", "6,7"]


def test_too_few_gpus_for_the_local_workers_is_a_clear_error(
    tiny_family, tmp_path, monkeypatch
) -> None:
    from mergekit_cycleqd.errors import RunError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    raw = _recipe(tiny_family, generations=2)
    raw["workers"]["gpus_per_worker"] = 1
    with pytest.raises(
        RunError,
        match=r"2 local workers with gpus_per_worker: 1 need 2 GPUs; "
        r"this machine shows 1 \(0\)",
    ):
        _run(raw, tmp_path / "run")


@pytest.mark.slow
def test_ctrl_c_files_the_children_in_flight_then_resume_matches(tiny_family, tmp_path) -> None:
    raw = _recipe(tiny_family, generations=120, evaluator="Jittery")
    recipe = write_recipe(tmp_path / "recipe.yml", raw)
    reference = tmp_path / "reference"
    subprocess.run(_driver(recipe, reference, False), check=True, capture_output=True)
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(
        _driver(recipe, stopped, False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while _filed(stopped) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends the driver (workers: own session)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, err
    generations = [row[1] for row in _rows(stopped) if row[2] == "child"]
    assert generations == list(range(1, len(generations) + 1)) and len(generations) < 120
    assert all(row[8] == "ok" for row in _rows(stopped))  # the children in flight were finished
    assert _workers_gone()
    subprocess.run(_driver(recipe, stopped, True), check=True, capture_output=True)
    assert _rows(stopped) == _rows(reference)


def test_a_worker_that_cannot_start_stops_the_run_with_its_reason(tiny_family, tmp_path) -> None:
    from mergekit_cycleqd.errors import RunError

    raw = _recipe(tiny_family, generations=3, evaluator="CannotStart")
    with pytest.raises(
        RunError,
        match=r"a local worker stopped .*its setup failed: "
        r"RuntimeError: this evaluator cannot start",
    ):
        _run(raw, tmp_path / "run")
    assert _workers_gone()
