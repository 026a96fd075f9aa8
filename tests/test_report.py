"""The run report: exact tables and figures from a hand-made run folder, and a real
headless browser that must render the page with every image decoded."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess

import numpy as np
import pytest
from PIL import Image as PILImage

from mergekit_cycleqd.filing.ledger import Ledger, ScoreRow
from mergekit_cycleqd.results.report import write_report
from mergekit_cycleqd.results.report.data import load_run
from mergekit_cycleqd.results.report.figures import projected_grid, timing_groups
from tests.conftest import require_tool

RECIPE = "# test recipe\nsearch:\n  generations: 24\nbins: 4\n"


def make_run(root, tasks=("code", "db", "os"), children=24, bins=4, with_final=True):
    """A run folder written through the ledger API: seeds, children, a failure, finals."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.yml").write_text(RECIPE)
    with Ledger(root / "ledger.sqlite") as ledger:
        ledger.set_meta(
            tasks=list(tasks),
            bins=bins,
            seed=1,
            recipe=RECIPE,
            bc_ranges={t: [0.0, 0.8] for t in tasks},
            models={
                "base": {"path": "/m/base", "hub_id": "org/base"},
                "experts": [
                    {"name": f"{t}-expert", "path": f"/m/{t}", "hub_id": f"org/{t}", "task": t}
                    for t in tasks
                ],
            },
            similarity={
                "models": [f"{t}-expert" for t in tasks],
                "matrix": [
                    [1.0 if i == j else 0.9 for j in range(len(tasks))] for i in range(len(tasks))
                ],
            },
        )
        for k, task in enumerate(tasks):
            scores = {t: (0.6 if t == task else 0.1) for t in tasks}
            ledger.add_child(
                generation=0,
                role="seed",
                status="ok",
                name=f"{task}-expert",
                scores=[ScoreRow(t, "opt", s) for t, s in scores.items()],
                merge_s=0.0,
                eval_s=2.0 + k,
                file_s=0.1,
            )
        for g in range(1, children + 1):
            if g == 5:
                ledger.add_child(generation=g, role="child", status="failed", error="NaN")
                continue
            scores = {t: float(rng.uniform(0.05, 0.75)) for t in tasks}
            ledger.add_child(
                generation=g,
                role="child",
                status="ok",
                parents=[1, 2],
                active_task=tasks[g % len(tasks)],
                scores=[ScoreRow(t, "opt", s) for t, s in scores.items()],
                merge_s=1.0,
                eval_s=3.0,
                file_s=0.5,
            )
        if with_final:
            ledger.add_child(
                generation=children,
                role="final",
                status="ok",
                name="cycleqd-final",
                parents=[4, 5],
                scores=[ScoreRow(t, "test", 0.5) for t in tasks],
            )
    if with_final:
        (root / "final").mkdir()
        rows = [
            {
                "name": "base",
                "kind": "base",
                "child_id": None,
                "scores": dict.fromkeys(tasks, 0.25),
                "mean": 0.25,
            },
            {
                "name": "cycleqd-final",
                "kind": "final",
                "child_id": 99,
                "scores": {t: 0.5 + 0.1 * i for i, t in enumerate(tasks)},
                "mean": 0.6,
            },
        ]
        results = {
            "split": "test",
            "tasks": list(tasks),
            "rows": rows,
            "generalisation": {
                "tasks": ["gsm8k"],
                "rows": [{"name": "cycleqd-final", "scores": {"gsm8k": 1.05}}],
            },
        }
        (root / "final" / "results.json").write_text(json.dumps(results))
    return root


def test_projected_grid_shapes_and_max_projection():
    strip = np.array([np.nan, 0.2, 0.3])
    assert projected_grid(strip).shape == (1, 3)
    grid = np.array([[0.1, np.nan], [0.3, 0.4]])  # grid[i, j]: BC1 bin i, BC2 bin j
    image = projected_grid(grid)
    assert image[0, 1] == 0.3 and image[1, 0] == pytest.approx(np.nan, nan_ok=True)
    cube = np.full((2, 2, 3), np.nan)
    cube[1, 0, 0], cube[1, 0, 2] = 0.2, 0.7
    cube[0, 1, 1] = 0.4
    image = projected_grid(cube)  # max over the third axis, rows = BC2
    assert image[0, 1] == 0.7 and image[1, 0] == 0.4
    assert math.isnan(image[0, 0]) and math.isnan(image[1, 1])


class _Rec:
    def __init__(self, i, m, e, f, role="child"):
        self.id, self.merge_s, self.eval_s, self.file_s, self.role = i, m, e, f, role


def test_timing_groups_one_bar_per_child_then_means():
    labels, rows = timing_groups(
        [_Rec(1, 1.0, 2.0, None), _Rec(2, 0.0, 4.0, 0.5), _Rec(3, 9, 9, 9, role="final")]
    )
    assert labels == ["1", "2"]
    assert rows.tolist() == [[1.0, 2.0, 0.0], [0.0, 4.0, 0.5]]
    many = [_Rec(i, float(i), 1.0, 0.0) for i in range(1, 122)]  # 121 > 60 bars
    labels, rows = timing_groups(many)
    assert len(labels) == 41 and labels[0] == "1–3" and labels[-1] == "121–121"
    assert rows[0].tolist() == [2.0, 1.0, 0.0] and rows[-1].tolist() == [121.0, 1.0, 0.0]


def archives_by_hand(ledger_path):
    """Each task's archive filled straight from the ledger's rows, in filing order:
    {task: {cell: (score, child id)}}.

    Written from the paper's rule, not with the project's archive code: the cell of a
    model in task T's archive is, per other task, the index of the right-closed bin
    (e_i, e_i+1] of its score (edges lo + (hi - lo) k / bins, clamped), and a model
    replaces a cell's elite only with a strictly higher score on T.
    """
    import sqlite3

    with sqlite3.connect(ledger_path) as db:
        meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
        rows = db.execute(
            "SELECT c.id, s.task, s.score FROM children c JOIN scores s ON s.child_id = c.id "
            "WHERE c.status = 'ok' AND c.role IN ('seed', 'child') AND s.split = 'opt' "
            "ORDER BY c.id"
        ).fetchall()
    tasks, bins = meta["tasks"], int(meta["bins"])
    edges = {
        t: [lo + (hi - lo) * k / bins for k in range(1, bins)]
        for t, (lo, hi) in meta["bc_ranges"].items()
    }
    scores: dict[int, dict[str, float]] = {}
    for child_id, task, score in rows:
        scores.setdefault(child_id, {})[task] = score
    archives: dict[str, dict[tuple, tuple[float, int]]] = {t: {} for t in tasks}
    for child_id in sorted(scores):
        if set(scores[child_id]) != set(tasks):
            continue
        for task in tasks:
            cell = tuple(
                sum(1 for e in edges[o] if e < scores[child_id][o]) for o in tasks if o != task
            )
            held = archives[task].get(cell)
            if held is None or scores[child_id][task] > held[0]:
                archives[task][cell] = (scores[child_id][task], child_id)
    return archives


def _grids_by_hand(ledger_path, bins):
    grids = {}
    for task, cells in archives_by_hand(ledger_path).items():
        grid = np.full((bins,) * len(next(iter(cells))), np.nan)
        for cell, (score, _) in cells.items():
            grid[cell] = score
        grids[task] = grid
    return grids


def test_load_run_history(tmp_path):
    run = make_run(tmp_path / "run")
    data = load_run(run, frame_every=5)
    filed = [r for r in data.records if r.role in ("seed", "child")]
    assert len(filed) == 3 + 23 and len(data.failed) == 1
    assert [f.filed for f in data.frames] == [5, 10, 15, 20, 25, 26]
    assert data.frames[-1].child_id == filed[-1].id
    expected = _grids_by_hand(run / "ledger.sqlite", bins=4)
    for task in ("code", "db", "os"):
        assert np.array_equal(data.frames[-1].grids[task], expected[task], equal_nan=True)
        best = max(r.scores[task] for r in filed)
        assert data.stats[-1].best[task] == pytest.approx(best)
        filled = int(np.count_nonzero(~np.isnan(expected[task])))
        assert data.stats[-1].coverage[task] == filled / 16
    assert [s.generation for s in data.stats] == [0, *range(1, 5), *range(6, 25)]


def test_report_contents(tmp_path):
    run = make_run(tmp_path / "run")
    html_path, md_path = write_report(run, frame_every=4)
    assert (html_path, md_path) == (run / "report" / "report.html", run / "report" / "report.md")
    md = md_path.read_text()
    assert "| cycleqd-final | final | 0.5000 | 0.6000 | 0.7000 | 0.6000 |" in md
    assert "| base | base | 0.2500 | 0.2500 | 0.2500 | 0.2500 |" in md
    assert "| cycleqd-final | 1.050 |" in md
    assert "| code-expert | 1.0000 | 0.9000 | 0.9000 |" in md
    assert "| merge | 0.88 | 1.00 | 23.0 |" in md  # 3 seeds at 0 s, 23 children at 1 s
    assert "Models scored: 23 child, 1 final, 3 seed; failed: 1." in md
    assert "```yaml\n# test recipe\nsearch:\n  generations: 24\nbins: 4\n```" in md
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert images == [
        "archives.png",
        "archives.gif",
        "progress.png",
        "timing.png",
        "similarity.png",
    ]
    for name in images:
        assert PILImage.open(run / "report" / name).size[0] > 100
    gif = PILImage.open(run / "report" / "archives.gif")
    assert gif.n_frames == math.ceil(26 / 4)  # 26 filed models, one frame every 4 (+ last)
    html = html_path.read_text()
    assert html.count('<img src="data:image/') == 5
    assert 'src="archives.png"' not in html and "<script" not in html
    assert "# test recipe" in html


@pytest.mark.parametrize("tasks", [("a", "b"), ("a", "b", "c", "d")])
def test_report_for_two_and_four_tasks(tmp_path, tasks):
    run = make_run(tmp_path / "run", tasks=tasks, children=8, bins=3, with_final=False)
    _, md_path = write_report(run)
    md = md_path.read_text()
    assert "No final results yet" in md
    assert PILImage.open(run / "report" / "archives.png").size[0] > 300
    if len(tasks) == 4:
        assert "colour = the best over the rest" in md
    else:
        assert "drawn as a strip" in md


def test_missing_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        write_report(tmp_path)


_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const good = images.filter(i => i.complete && i.naturalWidth > 0).length;
  const out = document.createElement("div");
  out.id = "img-check";
  out.textContent = `images ${good}/${images.length}`;
  document.body.appendChild(out);
});
</script>"""


def test_report_renders_in_headless_chromium(tmp_path):
    chromium = require_tool("chromium", "chromium-browser")
    run = make_run(tmp_path / "run")
    html_path, _ = write_report(run, frame_every=6)
    probe = html_path.with_name("probe.html")
    probe.write_text(html_path.read_text().replace("</body>", _CHECK + "</body>"))
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert '<div id="img-check">images 5/5</div>' in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,2400", html_path.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(PILImage.open(io.BytesIO(shot.read_bytes())).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # rendered plots, not a blank page
