"""The run's progress line fits the terminal and keeps moving once every best is 1.0;
library chatter is off unless --verbose."""

from __future__ import annotations

import logging
import re

import pytest

from mergekit_cycleqd.filing.archive import Archive
from mergekit_cycleqd.search.jobs import Job, JobResult
from mergekit_cycleqd.search.progress import (
    _BAR_WIDTH,
    RunProgress,
    best_mean,
    fit,
    quiet_libraries,
    status_fields,
)

TASKS = ["reverse", "sort", "double"]


def _archives() -> dict[str, Archive]:
    ranges = {t: (0.0, 1.0) for t in TASKS}
    return {t: Archive(t, [o for o in TASKS if o != t], 4, ranges) for t in TASKS}


def _offer(archives: dict[str, Archive], child_id: int, scores: dict[str, float]) -> None:
    for archive in archives.values():
        archive.offer(child_id, scores)


def _result(generation: int, task: str) -> JobResult:
    job = Job(
        generation=generation, role="child", name=f"g{generation}", model_stem="c", active_task=task
    )
    return JobResult(job=job, status="ok")


def _lines(err: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", err) if line.strip()]


@pytest.mark.parametrize("columns", [80, 100, 160])
def test_the_line_fits_the_terminal(columns, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    archives = _archives()
    _offer(archives, 1, {"reverse": 1.0, "sort": 0.35, "double": 0.4})
    _offer(archives, 2, {"reverse": 0.31, "sort": 0.98, "double": 0.1})
    with RunProgress(TASKS, total=1200, initial=0) as progress:
        progress.update(archives, _result(1, "reverse"))
    lines = _lines(capsys.readouterr().err)
    assert lines and all(len(line) <= columns for line in lines), lines
    last = lines[-1]
    assert "QD 3.14" in last and "mean 0.583" in last and "cov 12%" in last
    if columns >= 160:  # room for every archive's best and the rate too
        assert "task reverse" in last and "sort 0.98" in last and "double 0.40" in last


def test_the_line_still_moves_when_every_best_is_one() -> None:
    archives = _archives()
    for k, task in enumerate(TASKS):  # each expert scores 1.0 on its task, 0.2 elsewhere
        _offer(archives, k, {t: 1.0 if t == task else 0.2 for t in TASKS})

    def shown() -> str:  # what an 80-column line has room for after the bar
        fields = status_fields(TASKS, archives, active="sort", per_minute=1.0, failed=0)
        return fit(fields, 80 - _BAR_WIDTH)

    before = shown()
    _offer(archives, 9, {"reverse": 0.9, "sort": 0.7, "double": 0.5})  # fills new cells
    after = shown()
    assert all(archives[t].best().quality == 1.0 for t in TASKS)
    # by hand: every archive holds its expert (1.0) and the two others (0.2): 3 x 1.4 = 4.2;
    # best mean (1.0 + 0.2 + 0.2) / 3 = 0.467; 3 of 16 cells per archive = 19 %.
    assert before == "QD 4.20  mean 0.467  cov 19%"
    # child 9 lands in an empty cell of each archive: + 0.9 + 0.7 + 0.5 = 6.30 in all;
    # its mean (0.9 + 0.7 + 0.5) / 3 = 0.700; 4 of 16 cells = 25 %.
    assert after == "QD 6.30  mean 0.700  cov 25%"


def test_best_mean_is_over_all_tasks() -> None:
    archives = _archives()
    _offer(archives, 1, {"reverse": 0.5, "sort": 0.25, "double": 0.0})
    assert best_mean(archives) == pytest.approx(0.25)


def test_fit_keeps_leading_fields_only() -> None:
    assert fit(["aaaa", "bb", "cccccc"], 8) == "aaaa  bb"
    assert fit(["aaaa", "bb", "cccccc"], 3) == ""


def test_library_chatter_is_off_by_default(monkeypatch) -> None:
    for name in ("lm_eval", "mergekit", "transformers"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    quiet_libraries(verbose=True)
    assert logging.getLogger("lm_eval.models.huggingface").getEffectiveLevel() < logging.ERROR
    quiet_libraries(verbose=False)
    for name in ("lm_eval.models.huggingface", "mergekit.merge", "transformers.modeling_utils"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.ERROR, name
