"""Jobs and results exchanged between the driver and its workers.

Jobs are small and serialisable (ids, paths relative to the run folder,
scalars): never tensors, so that any executor (in-process, Ray) can carry them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mergekit_cycleqd.filing.ledger import ScoreRow


@dataclass(frozen=True, kw_only=True)
class Job:
    """Build one model (a seed, or a child of two parents) and score it."""

    generation: int
    role: Literal["seed", "child"]
    name: str
    model_stem: str  # run-relative path stem where the model file is written
    active_task: str | None = None
    expert_index: int | None = None  # seeds: which expert (None with role seed = the base)
    parents: tuple[int, ...] = ()
    parent_paths: tuple[str, ...] = ()  # run-relative model files of the parents
    weights: tuple[float, ...] = ()
    mutation_task: int | None = None
    mutation_seed: int | None = None
    scale: float = 1.0  # factor on the crossover result (search.crossover.scale)
    combine: bool = False  # weights are exact task-vector coefficients: no normalising, no mutation


@dataclass
class JobResult:
    job: Job
    status: Literal["ok", "failed"]
    model_path: str | None = None
    scores: list[ScoreRow] = field(default_factory=list)
    error: str | None = None
    merge_s: float = 0.0
    eval_s: float = 0.0
