"""What a person watching a run sees: one progress line per phase, no library chatter.

The cycle's line is laid out for the terminal's width (80 columns and up): tqdm draws
a short bar, and the status after it is filled field by field in order of interest
(QD score, best mean, coverage, the active task, each archive's best, the rate),
dropping what does not fit rather than letting the terminal cut it. QD score,
coverage and the best mean keep moving after every archive's best reached 1.0.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from collections.abc import Mapping

from tqdm.auto import tqdm

from mergekit_cycleqd.filing.archive import Archive
from mergekit_cycleqd.search.jobs import JobResult

# before the status: "CycleQD |####      | 111/300 [00:42<01:11], " (50 with hour-long times)
_BAR_FORMAT = "{desc} |{bar:10}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}"
_BAR_WIDTH = 50
CHATTY_LOGGERS = (
    "lm_eval",
    "lm-eval",
    "mergekit",
    "transformers",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "httpx",
    "urllib3",
    "filelock",
    "fsspec",
    "ray",
    "torch",
    "vllm",
    "matplotlib",
    "PIL",
)


def quiet_libraries(verbose: bool = False) -> None:
    """Silence the libraries' INFO logs and known warnings unless ``verbose``.

    lm-eval's "do not launch via accelerate" warning (we hand it a loaded model on
    purpose), mergekit's per-merge INFO lines and transformers' ``torch_dtype``
    deprecation are noise to a user; real errors still surface. The environment
    variables carry the same choice into worker processes.
    """
    if verbose:
        return
    logging.getLogger("mergekit_cycleqd").setLevel(logging.INFO)  # ours, above a WARNING root
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" per model load
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass


def best_mean(archives: Mapping[str, Archive]) -> float | None:
    """The best mean over all tasks of any elite (quality and BCs are the other scores)."""
    means = [
        (e.quality + sum(e.bcs.values())) / (1 + len(e.bcs))
        for archive in archives.values()
        for e in archive.elites.values()
    ]
    return max(means) if means else None


def status_fields(
    tasks: list[str],
    archives: Mapping[str, Archive],
    *,
    active: str | None,
    per_minute: float | None,
    failed: int,
) -> list[str]:
    """The status fields, most interesting first: what moves on every improvement."""
    fields = []
    if archives:
        fields.append(f"QD {sum(a.qd_score() for a in archives.values()):.2f}")
    mean = best_mean(archives)
    if mean is not None:
        fields.append(f"mean {mean:.3f}")
    if archives:
        coverage = sum(a.coverage() for a in archives.values()) / len(archives)
        fields.append(f"cov {coverage:.0%}")
    if failed:
        fields.append(f"failed {failed}")
    if active:
        fields.append(f"task {active}")
    for task in tasks:
        elite = archives[task].best() if task in archives else None
        fields.append(f"{task} {elite.quality:.2f}" if elite is not None else f"{task} -")
    if per_minute is not None:
        fields.append(f"{per_minute:.1f}/min")
    return fields


def fit(fields: list[str], width: int) -> str:
    """As many leading fields as fit in ``width`` characters, joined by two spaces."""
    text = ""
    for item in fields:
        candidate = f"{text}  {item}" if text else item
        if len(candidate) > width:
            break
        text = candidate
    return text


class RunProgress:
    """The cycle's progress line (tqdm, sized to the terminal)."""

    def __init__(self, tasks: list[str], total: int, initial: int = 0):
        self.tasks = tasks
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc="CycleQD",
            unit="child",
            bar_format=_BAR_FORMAT,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self.started = time.monotonic()
        self.finished_here = 0
        self.failed = 0

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.bar.close()

    def update(self, archives: Mapping[str, Archive], result: JobResult | None) -> None:
        if result is not None and result.job.role == "child":
            self.bar.update(1)
            self.finished_here += 1
            self.failed += result.status != "ok"
        minutes = (time.monotonic() - self.started) / 60
        active = result.job.active_task if result is not None else None
        fields = status_fields(
            self.tasks,
            archives,
            active=active,
            per_minute=self.finished_here / minutes if minutes > 0.05 else None,
            failed=self.failed,
        )
        width = shutil.get_terminal_size((80, 24)).columns
        self.bar.set_postfix_str(fit(fields, max(width - _BAR_WIDTH, 20)), refresh=True)


class StepProgress:
    """Progress over named steps, for phases without children: seed scoring, the final step."""

    def __init__(self, desc: str, total: int):
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit="step",
            bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}]{postfix}",
            dynamic_ncols=True,
            disable=total == 0,
        )

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.bar.close()

    def step(self, name: str) -> None:
        """Show what is being done now."""
        width = shutil.get_terminal_size((80, 24)).columns
        self.bar.set_postfix_str(name[: max(width - 30, 20)], refresh=True)

    def done(self) -> None:
        self.bar.update(1)

    def add(self, steps: int) -> None:
        """Steps that became known on the way (e.g. the rows to score)."""
        self.bar.total += steps
        self.bar.refresh()
