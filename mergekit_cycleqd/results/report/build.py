"""Assemble a run's report (tables, figures, recipe) and write HTML + Markdown."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

from mergekit_cycleqd.results.report import figures
from mergekit_cycleqd.results.report.data import RunData, load_run
from mergekit_cycleqd.results.report.document import (
    Block,
    Code,
    Heading,
    Image,
    Paragraph,
    Table,
    to_html,
    to_markdown,
    write_images,
)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _summary(data: RunData) -> list[Block]:
    roles: dict[str, int] = {}
    for record in data.records:
        roles[record.role] = roles.get(record.role, 0) + 1
    generations = max((r.generation for r in data.records if r.role == "child"), default=0)
    counts = ", ".join(f"{n} {role}" for role, n in sorted(roles.items()))
    text = (
        f"Tasks (archive order): {', '.join(data.tasks)}. Bins per axis: {data.meta.get('bins')}. "
        f"Seed: {data.meta.get('seed')}. Generations run: {generations}. "
        f"Models scored: {counts or 'none'}; failed: {len(data.failed)}."
    )
    blocks: list[Block] = [Paragraph(text)]
    models = data.meta.get("models") or {}
    if models:
        rows = [["base", "–", models.get("base", {}).get("hub_id") or "(local)"]]
        rows += [
            [e.get("name", "?"), e.get("task", "?"), e.get("hub_id") or "(local)"]
            for e in models.get("experts", [])
        ]
        blocks.append(Table(["model", "task", "Hub id"], rows, align_right_from=99))
    return blocks


def _results(data: RunData) -> list[Block]:
    blocks: list[Block] = [Heading("Results")]
    if data.results is None:
        blocks.append(Paragraph("No final results yet (final/results.json is missing)."))
    else:
        tasks = list(data.results.get("tasks", data.tasks))
        split = data.results.get("split", "test")
        rows = [
            [
                row["name"],
                row.get("kind", ""),
                *(_fmt(row.get("scores", {}).get(t)) for t in tasks),
                _fmt(row.get("mean")),
            ]
            for row in data.results.get("rows", [])
        ]
        blocks.append(Paragraph(f"Scores on the {split} split."))
        blocks.append(Table(["model", "kind", *tasks, "mean"], rows, align_right_from=2))
        general = data.results.get("generalisation")
        if general and general.get("rows"):
            gtasks = list(general.get("tasks", []))
            blocks.append(Paragraph("Generalisation (scores normalised to the base model)."))
            blocks.append(
                Table(
                    ["model", *gtasks],
                    [
                        [r["name"], *(_fmt(r.get("scores", {}).get(t), 3) for t in gtasks)]
                        for r in general["rows"]
                    ],
                )
            )
    by_id = {r.id: r for r in data.records}
    rows = []
    for task, archive in data.archives.items():
        best = archive.best()
        if best is None:
            continue
        record = by_id.get(best.child_id)
        scores = record.scores if record else {}
        rows.append(
            [
                task,
                str(best.child_id),
                *(_fmt(scores.get(t)) for t in data.tasks),
                _fmt(archive.coverage(), 3),
                _fmt(archive.qd_score(), 3),
            ]
        )
    if rows:
        blocks.append(Paragraph("Best elite of each archive (optimisation split)."))
        blocks.append(
            Table(
                ["archive", "child", *data.tasks, "coverage", "QD score"], rows, align_right_from=1
            )
        )
    return blocks


def _archives(data: RunData) -> list[Block]:
    if not data.archives:
        return [Heading("Archives"), Paragraph("No archive yet: no model has been filed.")]
    k = len(data.tasks)
    if k == 2:
        shape = "each archive has one axis (the other task's score), drawn as a strip"
    elif k == 3:
        shape = "x = the first other task's score, y = the second's"
    else:
        shape = "x, y = the first two other tasks' scores; colour = the best over the rest"
    blocks: list[Block] = [
        Heading("Archives at the end"),
        Paragraph(
            f"One archive per task; colour = score on the archive's task (quality); {shape}. "
            "Grey cells are empty."
        ),
        Image(
            "archives.png", "Archives at the end of the run", figures.archives_png(data.archives)
        ),
    ]
    if data.frames:
        blocks += [
            Heading("Archives development"),
            Paragraph(
                f"One frame every {data.frame_every} filed models; all archives side by side."
            ),
            Image(
                "archives.gif",
                "Archives developing over the run",
                figures.animation_gif(data.archives, data.frames),
                mime="image/gif",
            ),
        ]
    return blocks


def _progress(data: RunData) -> list[Block]:
    if not data.stats:
        return []
    last = data.stats[-1]
    rows = [
        [t, _fmt(last.best[t]), _fmt(last.qd_score[t], 3), _fmt(last.coverage[t], 3)]
        for t in data.tasks
    ]
    return [
        Heading("Progress per generation"),
        Image(
            "progress.png",
            "Best score, QD score and coverage per generation",
            figures.progress_png(data.stats, data.tasks),
        ),
        Table(["archive", "best", "QD score", "coverage"], rows),
    ]


def _timing(data: RunData) -> list[Block]:
    timed = [r for r in data.records if r.role in ("seed", "child")]
    if not timed:
        return []
    rows = []
    for attr, label in figures.TIMING_PARTS:
        values = [getattr(r, attr) for r in timed if getattr(r, attr) is not None]
        if values:
            rows.append(
                [
                    label,
                    _fmt(statistics.fmean(values), 2),
                    _fmt(statistics.median(values), 2),
                    _fmt(sum(values), 1),
                ]
            )
    return [
        Heading("Time per model"),
        Image(
            "timing.png",
            "Time per model split into merge, evaluation and filing",
            figures.timing_png(timed),
        ),
        Table(["part", "mean s", "median s", "total s"], rows),
    ]


def _similarity(data: RunData) -> list[Block]:
    similarity = data.similarity
    if similarity is None:
        return []
    names = list(similarity["models"])
    matrix = similarity["matrix"]
    return [
        Heading("Model similarity of the experts"),
        Paragraph(
            "Mergeability: mean over weight matrices of the cosine between the singular "
            "values of two experts' task vectors (CycleQD paper)."
        ),
        Image(
            "similarity.png",
            "Pairwise mergeability of the experts",
            figures.similarity_png(names, matrix),
        ),
        Table(
            ["", *names],
            [[n, *(_fmt(v) for v in row)] for n, row in zip(names, matrix, strict=True)],
        ),
    ]


def build_blocks(data: RunData) -> list[Block]:
    """The whole report, in reading order."""
    blocks: list[Block] = [
        *_summary(data),
        *_results(data),
        *_archives(data),
        *_progress(data),
        *_timing(data),
        *_similarity(data),
    ]
    blocks += [Heading("Recipe"), Code(data.recipe or "(no recipe stored)", "yaml")]
    return blocks


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_report(run_dir: Path, frame_every: int | None = None) -> tuple[Path, Path]:
    """Write ``RUN/report/report.html`` (self-contained) and ``report.md`` (+ images).

    Safe to call while a run is going on: it reads the ledger as it stands.
    Returns (html_path, markdown_path).
    """
    run_dir = Path(run_dir)
    data = load_run(run_dir, frame_every=frame_every)
    blocks = build_blocks(data)
    title = f"CycleQD run report: {run_dir.resolve().name}"
    folder = run_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    write_images(blocks, folder)
    html_path, md_path = folder / "report.html", folder / "report.md"
    _write_atomically(html_path, to_html(title, blocks))
    _write_atomically(md_path, to_markdown(title, blocks))
    return html_path, md_path
