"""Matplotlib figures of a CycleQD run, returned as PNG/GIF bytes.

Heat maps follow the paper's archive figures: for task q's archive, x is the
first behaviour characteristic's score, y the second, colour the quality on q.
With K = 2 tasks an archive has one axis and is drawn as a strip; with K > 3 it
has more than two, and the map shows the maximum over the others (the best
elite at each (BC1, BC2) whatever its remaining scores).
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers without displays

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from mergekit_cycleqd.filing.archive import Archive  # noqa: E402
from mergekit_cycleqd.filing.ledger import ChildRecord  # noqa: E402
from mergekit_cycleqd.results.report.data import Frame, GenerationStats  # noqa: E402

_CMAP = matplotlib.colormaps["viridis"].with_extremes(bad="#e8e8e8")


def projected_grid(grid: np.ndarray) -> np.ndarray:
    """A 2-D image of an archive grid: rows = BC2 bins (bottom up), columns = BC1 bins.

    1 BC axis: one row. 2 axes: the grid transposed (grid[i, j] has BC1 bin i).
    More axes: the maximum over axes 3.. ignoring empty cells (NaN where all empty).
    """
    if grid.ndim == 1:
        return grid[None, :]
    if grid.ndim > 2:
        grid = np.fmax.reduce(grid, axis=tuple(range(2, grid.ndim)))
    return grid.T


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _limits(grids: Sequence[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([g[np.isfinite(g)] for g in grids]) if grids else np.array([])
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.01, hi + 0.01
    return lo, hi


def _draw_archive(ax, archive: Archive, grid: np.ndarray, limits: tuple[float, float]):
    image = projected_grid(grid)
    bc = archive.bc_tasks
    x_lo, x_hi = archive.ranges[bc[0]]
    if len(bc) == 1:
        extent = (x_lo, x_hi, 0.0, 1.0)
    else:
        y_lo, y_hi = archive.ranges[bc[1]]
        extent = (x_lo, x_hi, y_lo, y_hi)
    artist = ax.imshow(
        np.ma.masked_invalid(image),
        origin="lower",
        extent=extent,
        aspect="auto",
        cmap=_CMAP,
        vmin=limits[0],
        vmax=limits[1],
        interpolation="nearest",
    )
    ax.set_xlabel(f"{bc[0]} score")
    if len(bc) == 1:
        ax.set_yticks([])
    else:
        label = f"{bc[1]} score"
        if len(bc) > 2:
            label += f"\n(max over {', '.join(bc[2:])})"
        ax.set_ylabel(label)
    ax.set_title(f"{archive.task} archive")
    return artist


def _cell_centre(archive: Archive, cell: tuple[int, ...]) -> tuple[float, float]:
    def centre(task: str, index: int) -> float:
        lo, hi = archive.ranges[task]
        return lo + (index + 0.5) * (hi - lo) / archive.bins

    x = centre(archive.bc_tasks[0], cell[0])
    y = centre(archive.bc_tasks[1], cell[1]) if len(cell) > 1 else 0.5
    return x, y


def _height(archives: Mapping[str, Archive], full: float) -> float:
    """Strips (one BC axis, K = 2) need far less height than 2-D maps."""
    return full * 0.55 if len(next(iter(archives.values())).bc_tasks) == 1 else full


def archives_png(archives: Mapping[str, Archive], highlight: Collection[int] = ()) -> bytes:
    """All archives side by side as they stand; ``highlight`` marks those children's cells."""
    tasks = list(archives)
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(4.2 * len(tasks), _height(archives, 3.6)), squeeze=False
    )
    for ax, task in zip(axes[0], tasks, strict=True):
        archive = archives[task]
        grid = archive.grid()
        artist = _draw_archive(ax, archive, grid, _limits([grid]))
        fig.colorbar(artist, ax=ax, label=f"{task} score (quality)")
        for cell, elite in archive.elites.items():
            if elite.child_id in highlight:
                x, y = _cell_centre(archive, cell)
                ax.plot(x, y, marker="*", markersize=16, color="#d62728", markeredgecolor="white")
    fig.tight_layout()
    return _png(fig)


def animation_gif(archives: Mapping[str, Archive], frames: Sequence[Frame], fps: int = 4) -> bytes:
    """The archives developing over the run (the paper's "Archives Development")."""
    tasks = list(archives)
    if not frames:
        raise ValueError("no filed children: nothing to animate")
    fig, axes = plt.subplots(
        1,
        len(tasks),
        figsize=(3.6 * len(tasks), _height(archives, 3.3)),
        squeeze=False,
        dpi=72,
    )
    artists = []
    for ax, task in zip(axes[0], tasks, strict=True):
        limits = _limits([f.grids[task] for f in frames])
        artists.append(_draw_archive(ax, archives[task], frames[0].grids[task], limits))
        fig.colorbar(artists[-1], ax=ax)
    title = fig.suptitle("")
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    images = _blitted_frames(
        fig,
        artists,
        title,
        [
            (
                [projected_grid(frame.grids[task]) for task in tasks],
                f"after {frame.filed} models (generation {frame.generation})",
            )
            for frame in frames
        ],
    )
    plt.close(fig)
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
    )
    return buffer.getvalue()


def _blitted_frames(fig, artists, title, frames) -> list[PILImage.Image]:
    """Each frame drawn over one cached background (axes, labels, colour bars).

    Redrawing the whole figure per frame (what ``FuncAnimation`` does when saving)
    cost ~70 ms a frame, seconds per report; only the images and the title change.
    """
    for artist in (*artists, title):
        artist.set_visible(False)
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    for artist in (*artists, title):
        artist.set_visible(True)
    images = []
    for grids, text in frames:
        fig.canvas.restore_region(background)
        for artist, grid in zip(artists, grids, strict=True):
            artist.set_data(np.ma.masked_invalid(grid))
            artist.axes.draw_artist(artist)
        title.set_text(text)
        fig.draw_artist(title)
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
        images.append(PILImage.fromarray(rgb.copy()).quantize(colors=255))
    return images


def progress_png(stats: Sequence[GenerationStats], tasks: Sequence[str]) -> bytes:
    """Best quality, QD score and coverage of every archive per generation."""
    generations = [s.generation for s in stats]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (
        ("best", "best score"),
        ("qd_score", "QD score (sum of elite qualities)"),
        ("coverage", "coverage (fraction of cells filled)"),
    )
    for ax, (attribute, label) in zip(axes, panels, strict=True):
        for task in tasks:
            ax.plot(
                generations,
                [getattr(s, attribute)[task] for s in stats],
                label=task,
                drawstyle="steps-post",
            )
        ax.set_xlabel("generation")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(title="archive")
    fig.tight_layout()
    return _png(fig)


TIMING_PARTS = (("merge_s", "merge"), ("eval_s", "evaluation"), ("file_s", "filing"))
MAX_BARS = 60


def timing_groups(records: Sequence[ChildRecord]) -> tuple[list[str], np.ndarray]:
    """Labels and (groups × 3) mean seconds of merge/eval/filing per child.

    Up to MAX_BARS children are shown one bar each; more are averaged in
    consecutive groups of equal size so the chart stays readable.
    """
    timed = [r for r in records if r.role in ("seed", "child")]
    rows = np.array(
        [[(getattr(r, attr) or 0.0) for attr, _ in TIMING_PARTS] for r in timed], dtype=float
    ).reshape(-1, len(TIMING_PARTS))
    if len(timed) <= MAX_BARS:
        return [str(r.id) for r in timed], rows
    size = math.ceil(len(timed) / MAX_BARS)
    labels, means = [], []
    for start in range(0, len(timed), size):
        chunk = timed[start : start + size]
        labels.append(f"{chunk[0].id}–{chunk[-1].id}")
        means.append(rows[start : start + size].mean(axis=0))
    return labels, np.array(means)


def timing_png(records: Sequence[ChildRecord]) -> bytes:
    """Stacked bars of time per child split into merge, evaluation and filing."""
    labels, rows = timing_groups(records)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(labels) + 3), 3.6))
    bottom = np.zeros(len(labels))
    positions = np.arange(len(labels))
    for column, (_, label) in enumerate(TIMING_PARTS):
        values = rows[:, column] if len(labels) else np.zeros(0)
        ax.bar(positions, values, bottom=bottom, label=label, width=0.85)
        bottom = bottom + values
    step = max(1, len(labels) // 15)
    ax.set_xticks(
        positions[::step], [labels[i] for i in range(0, len(labels), step)], rotation=45, ha="right"
    )
    ax.set_xlabel("model id (seeds and children, in filing order)")
    ax.set_ylabel("seconds")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def similarity_png(names: Sequence[str], matrix: Sequence[Sequence[float]]) -> bytes:
    """The experts' pairwise mergeability as an annotated heat map."""
    values = np.array(matrix, dtype=float)
    size = 1.2 + 0.9 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    artist = ax.imshow(
        np.ma.masked_invalid(values), cmap=_CMAP, vmin=np.nanmin(values), vmax=np.nanmax(values)
    )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            text = "n/a" if math.isnan(values[i, j]) else f"{values[i, j]:.3f}"
            ax.text(j, i, text, ha="center", va="center", color="white", fontsize=9)
    fig.colorbar(artist, ax=ax, label="mergeability")
    fig.tight_layout()
    return _png(fig)
