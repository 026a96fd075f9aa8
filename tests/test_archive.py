"""Archive invariants, BC binning edges and the BC range rule."""

from __future__ import annotations

import numpy as np
import pytest

from mergekit_cycleqd.filing.archive import Archive, bin_index, empty_archives, paper_range, replay
from mergekit_cycleqd.filing.ledger import Ledger, ScoreRow


@pytest.mark.parametrize(
    "value, expected",
    [
        (-0.5, 0),  # below range: clamped into the first bin
        (0.0, 0),  # lo itself: first bin
        (0.1, 0),  # right edge of bin 0 belongs to bin 0 (right-closed)
        (0.1000001, 1),
        (0.2, 1),
        (0.95, 9),
        (1.0, 9),  # hi: last bin
        (7.0, 9),  # above range: clamped into the last bin
    ],
)
def test_bins_are_right_closed_and_clamped(value: float, expected: int) -> None:
    assert bin_index(value, 0.0, 1.0, 10) == expected


def test_bins_on_shifted_range() -> None:
    # edges 0.2, 0.35, 0.5, 0.65, 0.8
    assert [bin_index(v, 0.2, 0.8, 4) for v in (0.2, 0.35, 0.36, 0.5, 0.65, 0.66, 0.8)] == [
        0,
        0,
        1,
        1,
        2,
        3,
        3,
    ]


def test_paper_range_rule() -> None:
    lo, hi = paper_range([0.2, 0.4, 0.3])
    assert lo == pytest.approx(0.85 * 0.2)
    assert hi == pytest.approx(1.15 * 0.4)
    assert paper_range([0.5, 0.95]) == (pytest.approx(0.425), 1.0)  # clamped to 1
    assert paper_range([0.0, 0.0]) == (0.0, 1.0)  # empty range widened


def _archive() -> Archive:
    return empty_archives(["a", "b", "c"], 4, {t: (0.0, 1.0) for t in "abc"})["a"]


def test_one_elite_per_cell_and_strict_improvement() -> None:
    archive = _archive()
    assert archive.bc_tasks == ["b", "c"]
    assert archive.offer(1, {"a": 0.5, "b": 0.1, "c": 0.1})
    assert not archive.offer(2, {"a": 0.5, "b": 0.2, "c": 0.2})  # same cell, equal: rejected
    assert archive.elites[(0, 0)].child_id == 1
    assert archive.offer(3, {"a": 0.6, "b": 0.2, "c": 0.2})  # strictly better: replaces
    assert archive.elites[(0, 0)].child_id == 3
    assert archive.offer(4, {"a": 0.1, "b": 0.9, "c": 0.1})  # other cell
    assert len(archive.elites) == 2
    assert archive.coverage() == 2 / 16
    assert archive.qd_score() == pytest.approx(0.7)
    grid = archive.grid()
    assert grid.shape == (4, 4) and grid[0, 0] == 0.6 and grid[3, 0] == 0.1
    assert np.isnan(grid).sum() == 14
    assert archive.best().child_id == 3


def test_replay_offers_every_child_to_every_archive(tmp_path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    tasks = ["a", "b", "c"]
    ledger.set_meta(tasks=tasks, bins=4, bc_ranges={t: [0.0, 1.0] for t in tasks})
    rng = np.random.default_rng(0)
    for generation in range(30):
        scores = dict(zip(tasks, rng.random(3)))
        status = "failed" if generation % 7 == 3 else "ok"
        ledger.add_child(
            generation=generation,
            role="child",
            status=status,
            scores=[ScoreRow(t, "opt", s) for t, s in scores.items()] if status == "ok" else [],
        )
    records = ledger.children()
    assert len(records) == 30 - 4  # generations 3, 10, 17, 24 failed
    final = None
    for _, archives in replay(ledger):
        final = archives
    for task, archive in final.items():
        for cell, elite in archive.elites.items():
            # the elite is the best of all ok children falling into its cell
            rivals = [r for r in records if archive.cell(r.scores) == cell]
            assert elite.quality == max(r.scores[task] for r in rivals)
        # every ok child was offered: each lands in a cell that is occupied
        assert all(archive.cell(r.scores) in archive.elites for r in records)


def test_best_breaks_quality_ties_by_the_other_tasks() -> None:
    archive = _archive()
    archive.offer(1, {"a": 1.0, "b": 0.1, "c": 0.1})
    archive.offer(2, {"a": 1.0, "b": 0.6, "c": 0.3})
    archive.offer(3, {"a": 0.9, "b": 0.9, "c": 0.9})
    assert archive.best().child_id == 2


@pytest.mark.parametrize("older_first", [True, False])
def test_best_breaks_full_ties_in_favour_of_the_older_elite(older_first: bool) -> None:
    """Same quality, same mean over the other tasks: the lower id (older) wins.

    The winner is neither the newest child nor (with ``older_first=False``, as Ray may
    file them) the first one offered.
    """
    archive = _archive()
    older = (4, {"a": 1.0, "b": 0.6, "c": 0.3})
    newer = (9, {"a": 1.0, "b": 0.3, "c": 0.6})
    for child_id, scores in [older, newer] if older_first else [newer, older]:
        assert archive.offer(child_id, scores)  # different cells: both are elites
    assert archive.best().child_id == 4
