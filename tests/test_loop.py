"""The CycleQD loop on tiny models with the weight_probe evaluator (seconds per run)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mergekit_cycleqd.evaluate.base import register_evaluator
from mergekit_cycleqd.filing.archive import archives_from_ledger, replay
from mergekit_cycleqd.filing.runfolder import RunFolderError
from mergekit_cycleqd.recipe import parse_recipe
from mergekit_cycleqd.search.loop import CycleQD, RunError, active_task
from tests.probe_recipe import probe_recipe, write_recipe

register_evaluator("flaky_probe", "tests.flaky_evaluator:FlakyProbe")
register_evaluator("blocking_probe", "tests.run_evaluators:BlockingProbe")
register_evaluator("gate_probe", "tests.run_evaluators:Gate")
register_evaluator("nan_safe_probe", "tests.run_evaluators:NanSafeProbe")


def _recipe(family, **kwargs):
    base, experts = family
    return parse_recipe(yaml.safe_dump(probe_recipe(base, experts, **kwargs)))


def _run(recipe, run_dir: Path, resume: bool = False, generations: int | None = None):
    run = CycleQD(recipe, run_dir, resume=resume)
    try:
        summary = run.run(generations)
        ledger_rows = _ledger_rows(run_dir)
        archives = archives_from_ledger(run.ledger)
    finally:
        run.close()
    return summary, ledger_rows, archives


def _ledger_rows(run_dir: Path):
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    children = db.execute(
        "SELECT id, generation, role, name, active_task, parents, weights, mutation_seed, status "
        "FROM children ORDER BY id"
    ).fetchall()
    scores = db.execute(
        "SELECT child_id, task, split, score FROM scores ORDER BY child_id, task, split"
    ).fetchall()
    db.close()
    return children, scores


def _cells(archives):
    return {
        t: {c: (e.child_id, e.quality) for c, e in a.elites.items()} for t, a in archives.items()
    }


def test_cycle_order_and_archive_invariants(tiny_family, tmp_path) -> None:
    recipe = _recipe(tiny_family, generations=9)
    summary, (children, _), archives = _run(recipe, tmp_path / "run")
    assert summary.generations_done == 9 and summary.failed == 0
    seeds = [c for c in children if c[2] == "seed"]
    assert [c[3] for c in seeds] == ["seed:t0", "seed:t1", "seed:t2"]
    evolved = [c for c in children if c[2] == "child"]
    assert [c[1] for c in evolved] == list(range(1, 10))
    # generation g optimises tasks[g mod K]
    assert [c[4] for c in evolved] == [active_task(["t0", "t1", "t2"], g) for g in range(1, 10)]
    assert [c[4] for c in evolved][:4] == ["t1", "t2", "t0", "t1"]
    # parents are two distinct, earlier models
    for child in evolved:
        parents = yaml.safe_load(child[5])
        assert len(set(parents)) == 2 and all(p < child[0] for p in parents)
    # each archive: one elite per cell, each elite is the best of everything filed in its cell
    with sqlite3.connect(tmp_path / "run" / "ledger.sqlite"):
        pass
    from mergekit_cycleqd.filing.ledger import Ledger

    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        records = [r for r in ledger.children() if r.role in ("seed", "child")]
        for task, archive in archives.items():
            for record in records:
                cell = archive.cell(record.scores)
                assert cell in archive.elites  # every model was offered to every archive
                assert archive.elites[cell].quality >= record.scores[task]
    # an elite YAML exists for every elite
    elites = {e.child_id for a in archives.values() for e in a.elites.values()}
    assert {int(p.stem) for p in (tmp_path / "run" / "elites").glob("*.yml")} >= elites


def test_same_seed_same_run_other_seed_differs(tiny_family, tmp_path) -> None:
    _, first, _ = _run(_recipe(tiny_family, generations=6, seed=3), tmp_path / "a")
    _, second, _ = _run(_recipe(tiny_family, generations=6, seed=3), tmp_path / "b")
    _, third, _ = _run(_recipe(tiny_family, generations=6, seed=4), tmp_path / "c")
    assert first == second
    assert first[1] != third[1]


def test_resume_continues_exactly(tiny_family, tmp_path) -> None:
    recipe = _recipe(tiny_family, generations=12)
    _, full, full_archives = _run(recipe, tmp_path / "full")
    _run(_recipe(tiny_family, generations=12), tmp_path / "split", generations=5)
    _, resumed, resumed_archives = _run(
        _recipe(tiny_family, generations=12), tmp_path / "split", resume=True
    )
    assert resumed == full
    assert _cells(resumed_archives) == _cells(full_archives)


def test_existing_run_folder_is_refused_without_resume(tiny_family, tmp_path) -> None:
    _run(_recipe(tiny_family, generations=1), tmp_path / "run")
    with pytest.raises(RunFolderError, match="--resume"):
        CycleQD(_recipe(tiny_family, generations=1), tmp_path / "run")
    with pytest.raises(RunFolderError, match=r"search\.seed: 0 -> 5"):
        CycleQD(_recipe(tiny_family, generations=1, seed=5), tmp_path / "run", resume=True)


def test_failing_children_are_recorded_and_the_run_goes_on(tiny_family, tmp_path) -> None:
    raw = probe_recipe(*tiny_family, generations=10)
    raw["tasks"][1]["evaluator"] = "flaky_probe"
    raw["tasks"][1]["options"]["fail_every"] = 3
    summary, (children, scores), _ = _run(parse_recipe(yaml.safe_dump(raw)), tmp_path / "run")
    failed = [c for c in children if c[8] == "failed" and c[2] == "child"]
    assert summary.generations_done == 10
    assert summary.failed == len(failed) >= 2
    from mergekit_cycleqd.filing.ledger import Ledger

    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        for record in ledger.children(status="failed"):
            assert "RuntimeError: injected failure" in record.error
            assert record.scores == {}  # nothing of a failed child is filed
        archived = {
            e.child_id for _, a in replay(ledger) for x in a.values() for e in x.elites.values()
        }
        assert not archived & {r.id for r in ledger.children(status="failed")}


def test_a_child_over_its_time_limit_fails_and_the_run_goes_on(tiny_family, tmp_path) -> None:
    """Children 1 and 3 block until something ends them: only the time limit can."""
    raw = probe_recipe(*tiny_family, generations=4)
    raw["tasks"][0]["evaluator"] = "blocking_probe"  # blocks on calls 4 and 6 (seeds: 1-3)
    # generous: an ordinary child of these tiny models takes well under a second even on a
    # loaded machine; the blocking ones can only end by this limit
    raw["search"]["child_timeout_s"] = 8.0
    summary, _, _ = _run(parse_recipe(yaml.safe_dump(raw)), tmp_path / "run")
    assert summary.generations_done == 4 and summary.failed == 2
    from mergekit_cycleqd.filing.ledger import Ledger

    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        failed = ledger.children(role="child", status="failed")
    assert [(r.generation, r.error) for r in failed] == [
        (g, "ChildTimeout: child exceeded search.child_timeout_s = 8.0 s") for g in (1, 3)
    ]


def test_every_seed_failing_stops_with_a_clear_message(tiny_family, tmp_path) -> None:
    raw = probe_recipe(*tiny_family, generations=3)
    for task in raw["tasks"]:
        task["evaluator"] = "flaky_probe"
        task["options"]["fail_every"] = 1
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), tmp_path / "run")
    with pytest.raises(RunError, match="every seed model failed.*injected failure"):
        run.run()
    run.close()


def _expert_with_nan(expert: Path, out: Path) -> str:
    """A copy of ``expert`` with one NaN in one tensor; returns that tensor's name."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(expert, out)
    weights = out / "model.safetensors"
    tensors = load_file(weights)
    name = next(n for n in sorted(tensors) if n.endswith("mlp.down_proj.weight"))
    tensors[name] = tensors[name].clone()
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return name


def test_nan_weights_fail_the_child(tiny_family, tmp_path) -> None:
    """An expert holding a NaN: every child bred from it fails, naming the tensor."""
    base, experts = tiny_family
    nan_tensor = _expert_with_nan(experts[1], tmp_path / "nan-expert")
    raw = probe_recipe(base, [experts[0], tmp_path / "nan-expert", experts[2]], generations=12)
    for task in raw["tasks"]:
        task["evaluator"] = "nan_safe_probe"  # the seed itself scores, so it becomes a parent
    raw["search"]["mutation"] = {"kind": "gaussian"}  # weight-space children: crossover sees NaN
    summary, _, _ = _run(parse_recipe(yaml.safe_dump(raw)), tmp_path / "run")
    from mergekit_cycleqd.filing.ledger import Ledger

    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        nan_seed = next(r.id for r in ledger.children(role="seed") if r.name == "seed:t1")
        children = ledger.children(role="child", status=None)
    from_nan = [c for c in children if nan_seed in c.parents]
    assert from_nan and len(from_nan) < len(children)  # both kinds occur
    for child in children:
        if nan_seed in child.parents:
            assert child.status == "failed"
            assert child.error == (
                f"NonFiniteError: cycleqd merge: tensor {nan_tensor!r} contains NaN or Inf"
            )
        else:
            assert child.status == "ok", child.error
    assert summary.failed == len(from_nan)


def _kill_script(recipe_path: Path, run_dir: Path, resume: bool) -> list[str]:
    args = ["-m", "mergekit_cycleqd.cli", str(recipe_path), "--out", str(run_dir), "--no-final"]
    return [sys.executable, *args, *(["--resume"] if resume else [])]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tiny_family, tmp_path) -> None:
    """A real subprocess killed with SIGKILL twice, resumed each time, ends identical."""
    raw = probe_recipe(*tiny_family, generations=40)
    recipe_path = write_recipe(tmp_path / "recipe.yml", raw)
    reference = tmp_path / "reference"
    subprocess.run(_kill_script(recipe_path, reference, False), check=True, capture_output=True)
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    moments = random.Random()
    for attempt in range(2):
        process = subprocess.Popen(
            _kill_script(recipe_path, killed, attempt > 0),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 120
        # wait until some children are committed, then kill at an arbitrary moment
        while time.monotonic() < deadline:
            if (killed / "ledger.sqlite").exists():
                try:
                    with sqlite3.connect(
                        f"file:{killed / 'ledger.sqlite'}?mode=ro", uri=True
                    ) as db:
                        n = db.execute(
                            "SELECT COUNT(*) FROM children WHERE role='child'"
                        ).fetchone()[0]
                except sqlite3.OperationalError:
                    n = 0
                if n >= 5 * (attempt + 1):
                    break
            time.sleep(0.05)
        time.sleep(
            moments.uniform(0.0, 0.3)
        )  # an arbitrary moment: mid-merge, mid-eval or mid-commit
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
    with sqlite3.connect(killed / "ledger.sqlite") as db:
        before = db.execute("SELECT COUNT(*) FROM children WHERE role='child'").fetchone()[0]
    assert before < 40  # really interrupted
    subprocess.run(_kill_script(recipe_path, killed, True), check=True, capture_output=True)
    assert _ledger_rows(killed) == _ledger_rows(reference)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_commits_the_child_in_flight_and_stops(
    tiny_family, tmp_path, stop
) -> None:
    """The signal arrives while generation 3 is being scored; it is filed, nothing after."""
    raw = probe_recipe(*tiny_family, generations=200)
    raw["tasks"][0]["evaluator"] = "gate_probe"
    raw["tasks"][0]["options"].update(folder=str(tmp_path), on_call=6)  # seeds 1-3: gen 3
    recipe_path = write_recipe(tmp_path / "recipe.yml", raw)
    run_dir = tmp_path / "run"
    launcher = (
        "import sys; from mergekit_cycleqd.evaluate.base import register_evaluator; "
        "register_evaluator('gate_probe', 'tests.run_evaluators:Gate'); "
        "from mergekit_cycleqd.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    command = _kill_script(recipe_path, run_dir, False)
    process = subprocess.Popen(
        [command[0], "-c", launcher, *command[3:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        for _ in range(1200):
            if (tmp_path / "waiting").exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert (tmp_path / "waiting").exists(), "generation 3 never started"
        process.send_signal(stop)
        with sqlite3.connect(run_dir / "ledger.sqlite") as db:
            (filed,) = db.execute("SELECT COUNT(*) FROM children WHERE role='child'").fetchone()
        assert filed == 2  # generation 3 is in flight, not filed yet
        (tmp_path / "go").touch()
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + stop, err
    assert f"Stopped by {stop.name}" in out and "--resume" in out
    assert "Traceback" not in err
    children, _ = _ledger_rows(run_dir)
    assert [(c[1], c[8]) for c in children if c[2] == "child"] == [(1, "ok"), (2, "ok"), (3, "ok")]
    assert not list((run_dir / "children").glob(".tmp-*"))  # nothing half-written
