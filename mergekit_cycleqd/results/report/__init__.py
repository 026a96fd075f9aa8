"""The run report: results, archive heat maps and their development, progress,
timing, expert similarity and the recipe, as one self-contained HTML page and a
Markdown file with its images (``RUN/report/``)."""

from __future__ import annotations

from mergekit_cycleqd.results.report.build import write_report

__all__ = ["write_report"]
