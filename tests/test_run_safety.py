"""Runs that survive their surroundings: one writer, damaged ledgers, transient failures.

Each test does what a user's machine or colleague did and asserts the outcome.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from mergekit_cycleqd.cli import main
from mergekit_cycleqd.errors import LedgerError, RunError, RunFolderError
from mergekit_cycleqd.evaluate.base import register_evaluator
from mergekit_cycleqd.filing.ledger import Ledger
from mergekit_cycleqd.recipe import parse_recipe
from mergekit_cycleqd.search.loop import CycleQD
from tests.probe_recipe import probe_recipe, write_recipe

for _name in ("ExitProbe", "DiskFullProbe", "FailWhileFlagged", "NanSafeProbe"):
    register_evaluator(_name, f"tests.run_evaluators:{_name}")


def _rows(run_dir: Path) -> list[tuple]:
    with sqlite3.connect(run_dir / "ledger.sqlite") as db:
        children = db.execute(
            "SELECT id, generation, role, name, parents, weights, mutation_seed, status, error "
            "FROM children ORDER BY id"
        ).fetchall()
        scores = db.execute("SELECT * FROM scores ORDER BY child_id, task, split").fetchall()
    return children + scores


def _run(raw: dict, run_dir: Path, *, resume: bool = False, **kwargs) -> object:
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), run_dir, resume=resume, **kwargs)
    try:
        return run.run()
    finally:
        run.close()


# ---- one writer per run folder ---------------------------------------------------
def test_a_second_writer_is_refused_naming_the_first(tiny_family, tmp_path) -> None:
    raw = probe_recipe(*tiny_family, generations=2)
    _run(raw, tmp_path / "run")
    first = CycleQD(parse_recipe(yaml.safe_dump(raw)), tmp_path / "run", resume=True)
    try:
        with pytest.raises(
            RunFolderError, match=rf"another mergekit-cycleqd process \(PID {os.getpid()}\)"
        ):
            CycleQD(parse_recipe(yaml.safe_dump(raw)), tmp_path / "run", resume=True)
        # readers work while the writer holds the folder
        assert main(["materialize", str(tmp_path / "run"), "1", str(tmp_path / "m")]) == 0
        assert (tmp_path / "m" / "config.json").exists()
    finally:
        first.close()
    # released on close: the folder can be resumed again
    _run(raw, tmp_path / "run", resume=True)


def test_a_killed_writer_leaves_no_stale_lock(tmp_path) -> None:
    """The kernel drops the flock with the process, even under SIGKILL."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from mergekit_cycleqd.filing.runfolder import RunFolder
            RunFolder({str(tmp_path / "run")!r}).lock()
            print('locked', flush=True)
            time.sleep(600)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        from mergekit_cycleqd.filing.runfolder import RunFolder

        with pytest.raises(RunFolderError, match=rf"PID {holder.pid}\)"):
            RunFolder(tmp_path / "run").lock()
    finally:
        holder.kill()
        holder.wait()
    RunFolder(tmp_path / "run").lock().release()


# ---- a damaged ledger --------------------------------------------------------------
def test_an_empty_ledger_is_refused_not_restarted(tiny_family, tmp_path) -> None:
    raw = probe_recipe(*tiny_family, generations=2)
    _run(raw, tmp_path / "run")
    ledger = tmp_path / "run" / "ledger.sqlite"
    ledger.write_bytes(b"")
    with pytest.raises(
        LedgerError, match=rf"{ledger} is empty \(0 bytes\).*mergekit-cycleqd recover"
    ):
        _run(raw, tmp_path / "run", resume=True)
    assert ledger.stat().st_size == 0  # nothing was written over it


def test_a_truncated_ledger_is_refused_then_recovered_and_resumed_exactly(
    tiny_family, tmp_path, capsys
) -> None:
    raw = probe_recipe(*tiny_family, generations=24)
    reference = tmp_path / "reference"
    _run(raw, reference)
    run_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "recipe.yml", raw)
    assert main([str(recipe), "--out", str(run_dir), "--no-final", "--generations", "15"]) == 0
    ledger = run_dir / "ledger.sqlite"
    with sqlite3.connect(run_dir / "ledger.backup.sqlite") as db:  # the periodic copy
        backed_up = db.execute("SELECT COUNT(*) FROM children").fetchone()[0]
    assert backed_up == 3 + 15
    data = ledger.read_bytes()
    ledger.write_bytes(data[: len(data) // 2])  # a torn copy
    assert main([str(recipe), "--out", str(run_dir), "--no-final", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{ledger} is damaged" in err and f"mergekit-cycleqd recover {run_dir}" in err
    assert "Traceback" not in err

    assert main(["recover", str(run_dir)]) == 0
    assert "restored from the backup (18 models filed)" in capsys.readouterr().out
    assert list(run_dir.glob("ledger.damaged-*.sqlite"))  # the damaged file is kept
    assert main([str(recipe), "--out", str(run_dir), "--no-final", "--resume"]) == 0
    assert _rows(run_dir) == _rows(reference)


def test_recover_without_a_backup_says_so(tmp_path, capsys) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ledger.sqlite").write_bytes(b"garbage")
    assert main(["recover", str(tmp_path / "run")]) == 2
    assert "ledger.backup.sqlite does not exist" in capsys.readouterr().err


def test_a_read_only_run_folder_is_read_without_creating_files(
    tiny_family, tmp_path, monkeypatch
) -> None:
    raw = probe_recipe(*tiny_family, generations=2)
    _run(raw, tmp_path / "run")
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode)
    )
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        assert ledger.read_only
        assert len(ledger.children(role="child")) == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before  # no -wal, no -shm


def test_a_deleted_recipe_is_replaced_by_the_ledgers_copy(tiny_family, tmp_path) -> None:
    _run(probe_recipe(*tiny_family, generations=2), tmp_path / "run")
    (tmp_path / "run" / "recipe.yml").unlink()
    with pytest.raises(RunFolderError, match=r"search\.seed: 0 -> 99"):
        _run(probe_recipe(*tiny_family, generations=2, seed=99), tmp_path / "run", resume=True)


# ---- nothing transient is permanent -------------------------------------------------
def test_failed_seeds_are_retried_on_resume(tiny_family, tmp_path, caplog) -> None:
    raw = probe_recipe(*tiny_family, generations=3)
    flag = tmp_path / "disk-full"
    flag.touch()
    raw["tasks"][1]["evaluator"] = "FailWhileFlagged"
    raw["tasks"][1]["options"]["flag"] = str(flag)
    with pytest.raises(RunError, match="every seed model failed.*failed seeds are retried"):
        _run(raw, tmp_path / "run")
    flag.unlink()
    with caplog.at_level(logging.WARNING):
        summary = _run(raw, tmp_path / "run", resume=True)
    assert "seed:t0 failed to score before (RuntimeError: transient failure" in caplog.text
    assert summary.generations_done == 3 and summary.failed == 0
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        seeds = ledger.children(role="seed", status=None)
    assert [(s.name, s.status) for s in seeds] == [
        ("seed:t0", "failed"),
        ("seed:t1", "failed"),
        ("seed:t2", "failed"),
        ("seed:t0", "ok"),
        ("seed:t1", "ok"),
        ("seed:t2", "ok"),
    ]


def test_failed_children_stay_failed_unless_retry_failed(tiny_family, tmp_path) -> None:
    raw = probe_recipe(*tiny_family, generations=4)
    flag = tmp_path / "server-down"
    raw["tasks"][0]["evaluator"] = "FailWhileFlagged"
    raw["tasks"][0]["options"]["flag"] = str(flag)
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), tmp_path / "run")
    try:
        run.run(generations=2)
        flag.touch()
        run.run(generations=3)  # generation 3 fails while the flag exists
    finally:
        run.close()
    flag.unlink()
    assert _run(raw, tmp_path / "run", resume=True).failed == 1  # history stays as it was
    summary = _run(raw, tmp_path / "run", resume=True, retry_failed=True)
    assert summary.failed == 0 and summary.generations_done == 4
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        rows = [(r.generation, r.status) for r in ledger.children(role="child", status=None)]
    assert rows == [(1, "ok"), (2, "ok"), (3, "failed"), (4, "ok"), (3, "ok")]


def test_an_evaluator_calling_sys_exit_fails_only_its_child(tiny_family, tmp_path) -> None:
    raw = probe_recipe(*tiny_family, generations=4)
    raw["tasks"][2]["evaluator"] = "ExitProbe"
    raw["tasks"][2]["options"]["on_call"] = 5  # seeds are calls 1-3: generation 2
    summary = _run(raw, tmp_path / "run")
    assert summary.generations_done == 4 and summary.failed == 1
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        failed = ledger.children(role="child", status="failed")
    assert [(r.generation, r.error) for r in failed] == [(2, "the evaluator called sys.exit(3)")]


def test_a_full_disk_stops_the_run_with_one_message(tiny_family, tmp_path, capsys) -> None:
    raw = probe_recipe(*tiny_family, generations=4)
    raw["tasks"][0]["evaluator"] = "DiskFullProbe"
    raw["tasks"][0]["options"]["on_call"] = 5
    recipe = write_recipe(tmp_path / "r.yml", raw)
    run_dir = tmp_path / "run"
    assert main([str(recipe), "--out", str(run_dir), "--no-final"]) == 1
    err = capsys.readouterr().err
    assert "gen2: cannot write /scratch/samples.jsonl (No space left on device)" in err
    assert "--resume" in err and "Traceback" not in err
    with Ledger(run_dir / "ledger.sqlite") as ledger:  # not filed as a failed child
        assert [r.generation for r in ledger.children(role="child", status=None)] == [1]


# ---- outputs are whole or absent ------------------------------------------------------
def test_a_half_written_final_model_is_rebuilt_on_resume(tiny_family, tmp_path) -> None:
    raw = probe_recipe(*tiny_family, generations=3)
    raw["final"] = {"baselines": ["task_arithmetic"], "materialize": True, "similarity": False}
    recipe = write_recipe(tmp_path / "r.yml", raw)
    run_dir = tmp_path / "run"
    assert main([str(recipe), "--out", str(run_dir)]) == 0
    aggregated = run_dir / "final" / "aggregated"
    expected = (aggregated / "model.safetensors").read_bytes()
    (aggregated / "model.safetensors").unlink()  # what a kill mid-copy left before
    (run_dir / "final" / "baselines" / "task_arithmetic" / "model.safetensors").unlink()
    assert main([str(recipe), "--out", str(run_dir), "--resume"]) == 0
    assert (aggregated / "model.safetensors").read_bytes() == expected
    assert (run_dir / "final" / "baselines" / "task_arithmetic" / "model.safetensors").exists()
    assert not list(run_dir.rglob(".tmp-*"))


def test_an_interrupted_write_leaves_nothing_under_the_final_name(tmp_path) -> None:
    from mergekit_cycleqd.filing.atomic import atomic_path

    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "model") as temporary:
            temporary.mkdir()
            (temporary / "config.json").write_text("{}")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_the_same_genome_saved_twice_is_byte_identical(tmp_path) -> None:
    from mergekit_cycleqd.merge.genome import Genome

    genome = Genome(
        a=torch.tensor([0.25, 0.75], dtype=torch.float64), factor_keys=("k0", "k1"), rank=4, d={}
    )
    blobs = {genome.save(tmp_path / f"g{i}.genome.safetensors").read_bytes() for i in range(8)}
    assert len(blobs) == 1
    assert Genome.load(tmp_path / "g0.genome.safetensors").factor_keys == ("k0", "k1")


# ---- messages ---------------------------------------------------------------------
def test_materialize_names_a_missing_model_file(tiny_family, tmp_path, capsys) -> None:
    _run(probe_recipe(*tiny_family, generations=1), tmp_path / "run")
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        child = ledger.children(role="child")[0]
    (tmp_path / "run" / child.model_path).unlink()
    assert main(["materialize", str(tmp_path / "run"), str(child.id), str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"model {child.id}'s file {tmp_path / 'run' / child.model_path} is missing" in err


# ---- run folders are portable ---------------------------------------------------------
def test_a_moved_run_folder_still_rebuilds_its_elites(tiny_family, tmp_path) -> None:
    import shutil

    from safetensors.torch import load_file

    _run(probe_recipe(*tiny_family, generations=3), tmp_path / "run")
    moved = tmp_path / "elsewhere" / "copy"
    shutil.move(tmp_path / "run", moved)
    elite_yaml = sorted((moved / "elites").glob("*.yml"), key=lambda p: int(p.stem))[-1]
    text = elite_yaml.read_text()
    assert str(tmp_path / "run") not in text and "../children/" in text
    subprocess.run(
        [sys.executable, "-m", "mergekit_cycleqd.scripts.run_yaml", str(elite_yaml), "out"],
        check=True,
        capture_output=True,
        cwd=tmp_path,  # neither the run folder nor its elites/ folder
    )
    assert main(["materialize", str(moved), elite_yaml.stem, str(tmp_path / "mat")]) == 0
    rebuilt = load_file(tmp_path / "out" / "model.safetensors")
    expected = load_file(tmp_path / "mat" / "model.safetensors")
    assert rebuilt.keys() == expected.keys()
    assert all(torch.equal(rebuilt[n], expected[n]) for n in expected)


def test_a_recipe_error_does_not_dump_the_recipe(tiny_family, tmp_path, capsys) -> None:
    raw = probe_recipe(*tiny_family, generations=1)
    raw["tasks"] = raw["tasks"][:1]  # one task: a whole-recipe error
    recipe = write_recipe(tmp_path / "r.yml", raw)
    assert main([str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "CycleQD needs at least two tasks" in err
    assert "base_model" not in err and str(tiny_family[0]) not in err  # no recipe dump
    assert len(err.splitlines()) == 1
