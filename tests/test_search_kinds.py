"""Baseline search kinds (cma_es, nsga2, random) on the CycleQD engine: same ledger,
same archives, exact resume (the optimiser is rebuilt by replaying the ledger)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mergekit_cycleqd.filing.archive import archives_from_ledger
from mergekit_cycleqd.merge.genome import Genome
from mergekit_cycleqd.recipe import RecipeError, parse_recipe
from mergekit_cycleqd.recipe.schema import SearchConfig
from mergekit_cycleqd.search.kinds import SEARCHES, make_search
from mergekit_cycleqd.search.loop import CycleQD
from tests.probe_recipe import probe_recipe, write_recipe

KINDS = ["cma_es", "nsga2", "random"]


def _raw(family, kind: str, generations: int = 12, **search):
    search = {"kind": kind, "coefficient_range": [0.0, 1.5], "population": 4, **search}
    return probe_recipe(*family, generations=generations, **search)


def _run(raw, run_dir: Path, resume: bool = False, generations: int | None = None):
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), run_dir, resume=resume)
    try:
        run.run(generations)
        return _rows(run_dir), run.ledger.children(role="child")
    finally:
        run.close()


def _rows(run_dir: Path):
    with sqlite3.connect(run_dir / "ledger.sqlite") as db:
        children = db.execute(
            "SELECT id, generation, role, name, active_task, parents, weights, status "
            "FROM children ORDER BY id"
        ).fetchall()
        scores = db.execute("SELECT child_id, task, split, score FROM scores ORDER BY 1, 2, 3")
        return children, scores.fetchall()


def test_the_registry_and_the_recipe_schema_name_the_same_kinds() -> None:
    allowed = typing.get_args(SearchConfig.model_fields["kind"].annotation)
    assert set(allowed) == set(SEARCHES)


@pytest.mark.parametrize("kind", KINDS)
def test_children_are_exact_combinations_of_the_experts(tiny_family, tmp_path, kind) -> None:
    _, children = _run(_raw(tiny_family, kind), tmp_path / "run")
    assert [c.generation for c in children] == list(range(1, 13))
    run = CycleQD(
        parse_recipe(yaml.safe_dump(_raw(tiny_family, kind))), tmp_path / "run", resume=True
    )
    seeds = run.ledger.children(role="seed")
    for child in children:
        assert child.parents == [s.id for s in seeds]  # the K expert seeds, in task order
        assert child.active_task is None and child.mutation_seed is None
        assert all(0.0 <= a <= 1.5 for a in child.weights)
        genome = Genome.load(run.folder.root / child.model_path)
        np.testing.assert_array_equal(genome.a.numpy(), np.array(child.weights))
        assert genome.d == {}
    # filed in the same archives: every archive elite is a ledger model
    members = {
        e.child_id for a in archives_from_ledger(run.ledger).values() for e in a.elites.values()
    }
    assert members <= {c.id for c in children} | {s.id for s in seeds}
    run.close()


def test_random_search_draws_from_the_seed_and_generation_alone(tiny_family, tmp_path) -> None:
    _, children = _run(_raw(tiny_family, "random", seed=7), tmp_path / "run")
    for child in children:
        expected = np.random.default_rng([7, child.generation]).uniform(0.0, 1.5, size=3)
        assert child.weights == pytest.approx(expected.tolist(), abs=0)


@pytest.mark.parametrize("kind", ["cma_es", "nsga2"])
def test_the_optimiser_is_told_every_filed_child(tiny_family, tmp_path, kind) -> None:
    _, children = _run(_raw(tiny_family, kind), tmp_path / "run")
    recipe = parse_recipe(yaml.safe_dump(_raw(tiny_family, kind)))
    search = make_search(recipe)
    search.replay(children)
    trials = search.study.trials
    assert [t.params for t in trials] == [
        {f"a{k}": a for k, a in enumerate(c.weights)} for c in children
    ]
    for trial, child in zip(trials, children):
        scores = [child.scores[t] for t in recipe.task_names]
        expected = [float(np.mean(scores))] if kind == "cma_es" else scores
        assert trial.values == pytest.approx(expected, abs=0)


@pytest.mark.parametrize("kind", ["cma_es", "nsga2"])
def test_the_optimiser_learns_from_the_scores(tiny_family, tmp_path, kind) -> None:
    """Other scores told -> other later asks (a search that ignores tell fails this)."""
    _, children = _run(_raw(tiny_family, kind), tmp_path / "run")
    recipe = parse_recipe(yaml.safe_dump(_raw(tiny_family, kind)))
    honest, liar = make_search(recipe), make_search(recipe)
    honest.replay(children)
    for i, c in enumerate(children):  # the liar: the newest child of each batch dominates
        liar.ask(c.generation, fixed=c.weights)
        liar.tell(c.generation, {t: float(i % 4) for t in c.scores})
    later = range(100, 108)
    assert [honest.ask(g) for g in later] != [liar.ask(g) for g in later]


@pytest.mark.parametrize("kind", ["cma_es", "nsga2"])
def test_replaying_children_it_did_not_propose_keeps_them_as_trials(
    tiny_family, tmp_path, kind
) -> None:
    _, children = _run(_raw(tiny_family, kind), tmp_path / "run")
    for child in children[3:6]:  # as if several workers had interleaved asks and tells
        child.weights = [a * 0.5 for a in child.weights]
    search = make_search(parse_recipe(yaml.safe_dump(_raw(tiny_family, kind))))
    search.replay(children)
    complete = [t for t in search.study.trials if t.state.name == "COMPLETE"]
    assert [list(t.params.values()) for t in complete] == [c.weights for c in children]
    assert all(0.0 <= a <= 1.5 for a in search.ask(99))


@pytest.mark.parametrize("kind", KINDS)
def test_resume_continues_exactly(tiny_family, tmp_path, kind) -> None:
    full, _ = _run(_raw(tiny_family, kind), tmp_path / "full")
    _run(_raw(tiny_family, kind), tmp_path / "split", generations=5)
    resumed, _ = _run(_raw(tiny_family, kind), tmp_path / "split", resume=True)
    assert resumed == full
    other, _ = _run(_raw(tiny_family, kind, seed=1), tmp_path / "other")
    assert other[0] != full[0]  # the seed matters


def _cli(recipe_path: Path, run_dir: Path, resume: bool) -> list[str]:
    args = ["-m", "mergekit_cycleqd.cli", str(recipe_path), "--out", str(run_dir), "--no-final"]
    return [sys.executable, *args, *(["--resume"] if resume else [])]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cma_es", "nsga2"])
def test_sigkill_then_resume_matches_uninterrupted(tiny_family, tmp_path, kind) -> None:
    recipe_path = write_recipe(tmp_path / "recipe.yml", _raw(tiny_family, kind, generations=20))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_cli(recipe_path, reference, False), check=True, capture_output=True)
    process = subprocess.Popen(
        _cli(recipe_path, killed, False), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and done < 7 and process.poll() is None:
        try:  # read-only: connecting must never create the ledger before the run does
            with sqlite3.connect(f"file:{killed / 'ledger.sqlite'}?mode=ro", uri=True) as db:
                done = db.execute("SELECT COUNT(*) FROM children WHERE role='child'").fetchone()[0]
        except sqlite3.OperationalError:
            pass
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert 7 <= len(_rows(killed)[0]) - 3 < 20  # really interrupted mid-run
    subprocess.run(_cli(recipe_path, killed, True), check=True, capture_output=True)
    assert _rows(killed) == _rows(reference)


def test_bad_search_settings_name_the_field(tiny_family) -> None:
    raw = _raw(tiny_family, "cma_es", coefficient_range=[1.0, 0.5])
    with pytest.raises(RecipeError, match="coefficient_range"):
        parse_recipe(yaml.safe_dump(raw))
    raw = _raw(tiny_family, "annealing")
    with pytest.raises(RecipeError, match="search.kind"):
        parse_recipe(yaml.safe_dump(raw))


def test_scaled_crossover_is_exact_in_genome_space(tiny_family, tmp_path) -> None:
    raw = probe_recipe(*tiny_family, generations=9, crossover={"scale": [1.2, 1.5]})
    _, children = _run(raw, tmp_path / "run")
    run = CycleQD(parse_recipe(yaml.safe_dump(raw)), tmp_path / "run", resume=True)
    sums = []
    for child in children:
        genome = Genome.load(run.folder.root / child.model_path)
        parents = [
            Genome.load(run.folder.root / run.ledger.child(p).model_path) for p in child.parents
        ]
        omega = np.array(child.weights)
        sums.append(float(genome.a.sum()))
        # a_child = s * sum_i omega_i a_i / sum omega (the mutation changes d only)
        unscaled = sum(w * p.a for w, p in zip(omega / omega.sum(), parents))
        s = float(genome.a.sum() / unscaled.sum())
        torch.testing.assert_close(genome.a, s * unscaled, rtol=1e-12, atol=1e-15)
        assert 1.2 <= s <= 1.5
    assert max(sums) > 1.2  # children leave the simplex (experts sum to 1)
    run.close()
