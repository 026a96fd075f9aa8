"""The CycleQD recipe: a YAML file validated by a pydantic schema.

It is shaped like a mergekit config (``base_model``, ``experts``) plus the
search settings. Every mistake is reported as ``FILE: field.path: what is wrong
(got VALUE)``; unknown keys are errors. Evaluator options are validated by each
evaluator's own options model, so their typos are caught too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mergekit_cycleqd.merge.specs import CrossoverSpec, MutationSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """A model: a local folder or a Hub id, optionally with the Hub id to credit."""

    path: str
    hub_id: str | None = None


class ExpertSpec(ModelSpec):
    name: str | None = None
    task: str | None = Field(None, description="the task this expert is the specialist of")


class TaskSpec(_Strict):
    name: str
    evaluator: str
    options: dict[str, Any] = Field(default_factory=dict)
    optimisation: dict[str, Any] = Field(
        default_factory=dict, description="options overriding `options` for the optimisation split"
    )
    test: dict[str, Any] | None = Field(
        default_factory=dict,
        description="options overriding `options` for the held-out test split; null: no test split",
    )
    validation: dict[str, Any] | None = Field(
        None,
        description="options for a validation split (final.select: validated); null: none",
    )
    bins: Annotated[int, Field(ge=1, le=1000)] = 15
    range: tuple[float, float] | None = Field(
        None, description="[lo, hi] of this task's BC axis; null: 85 %/115 % of the experts' scores"
    )

    @field_validator("range")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"range must be [lo, hi] with lo < hi, got {list(value)}")
        return value

    def split_options(self, split: Literal["opt", "test", "validation"]) -> dict[str, Any]:
        extras = {"opt": self.optimisation, "test": self.test, "validation": self.validation}
        return {**self.options, **(extras[split] or {})}


class SamplingConfig(_Strict):
    kind: Literal["elite", "random"] = "elite"
    alpha_low: float = 0.5
    alpha_high: float = 0.8
    variant: Literal["paper", "reference"] = Field(
        "paper", description="reference: the reference code's a_lo + norm*a_hi over BC bin indices"
    )


class CrossoverConfig(CrossoverSpec):
    """The merge method plus the search's ω ~ N(mu, sigma²) per parent."""

    mu: float = 1.0
    sigma: Annotated[float, Field(ge=0)] = 0.01
    scale: tuple[float, float] | None = Field(
        None,
        description="[lo, hi]: multiply each child's crossover result (every a_k and d_k) by a "
        "factor drawn uniformly per child, so children can leave the simplex; null: no scale",
    )

    @field_validator("scale")
    @classmethod
    def _scale_ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError(f"scale must be [lo, hi] with 0 < lo <= hi, got {list(value)}")
        return value


MutationConfig = MutationSpec


class SearchConfig(_Strict):
    kind: Literal["cycleqd", "cma_es", "nsga2", "random"] = Field(
        "cycleqd",
        description="cycleqd, or a baseline searching the experts' merge coefficients "
        "(search.kinds.SEARCHES); every kind files its children in the same ledger",
    )
    coefficient_range: tuple[float, float] = Field(
        (0.0, 1.0), description="cma_es/nsga2/random: [lo, hi] of each expert's coefficient"
    )
    population: Annotated[int, Field(ge=2)] | None = Field(
        None, description="cma_es/nsga2: population size; null: the library's default"
    )
    generations: Annotated[int, Field(ge=0)] = 1200
    cycle: bool = Field(
        True,
        description="false: QD without cycling (Table 2 ablation): parents always come from one "
        "extra archive whose quality is the mean over all tasks and whose BCs are every task's "
        "score; the per-task archives are still filled (report, final aggregation)",
    )
    seed: int = 0
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    crossover: CrossoverConfig = Field(default_factory=CrossoverConfig)
    mutation: MutationConfig = Field(default_factory=MutationConfig)
    seed_base: bool = Field(False, description="also score the base model and file it as a seed")
    child_timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="a child whose merge + evaluation takes longer is marked failed"
    )


class BackendConfig(_Strict):
    kind: Literal["transformers", "vllm", "none"] = "transformers"
    options: dict[str, Any] = Field(default_factory=dict)


class WorkersConfig(_Strict):
    count: Annotated[int, Field(ge=1)] = Field(
        1, description="jobs in flight: worker processes, each with its own resident model"
    )
    executor: Literal["local", "ray"] = Field(
        "local",
        description="local: worker processes on this machine (count 1: in the driver's own "
        "process); ray: Ray actors on a local or remote Ray cluster",
    )
    order: Literal["generation", "completion"] | None = Field(
        None,
        description="file results in generation order (child g is bred right after child "
        "g - count is filed: the run does not depend on timing; the default with local) or "
        "as they complete (no worker waits on a slow child; the default with ray)",
    )
    ray_address: str | None = Field(
        None, description="an existing Ray cluster (e.g. ray://head:10001); default RAY_ADDRESS"
    )
    ray_start_timeout_s: Annotated[float, Field(gt=0)] = Field(
        300, description="how long to keep trying to start or reach Ray before giving up"
    )
    gpus_per_worker: Annotated[float, Field(ge=0)] = Field(
        0,
        description="GPUs each worker owns (Ray resources; local workers with a whole "
        "number get their own CUDA_VISIBLE_DEVICES)",
    )
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1


class OutputConfig(_Strict):
    dir: str | None = Field(None, description="run folder; default runs/<name>")
    keep_children: bool = Field(True, description="keep every child's genome/weights file")


class FinalConfig(_Strict):
    temperature: Annotated[float, Field(gt=0)] = 1.0
    select: Literal["aggregate", "best_mean", "validated"] | None = Field(
        None,
        description="the delivered model: the paper's aggregate, the best mean optimisation "
        "score, or the best of several candidates on the validation split; null: aggregate "
        "for cycleqd, best_mean for the other search kinds",
    )
    validate_top: Annotated[int, Field(ge=0)] = Field(
        5, description="validated: also re-score this many top models by mean optimisation score"
    )
    baselines: list[Literal["task_arithmetic", "ties", "linear", "dare_ties"]] = Field(
        default_factory=lambda: ["task_arithmetic", "ties"]
    )
    evaluate_test: bool = True
    materialize: bool = Field(True, description="write the aggregated model as a model folder")
    similarity: bool = Field(
        True, description="store the experts' pairwise mergeability for the report"
    )
    generalisation: list[TaskSpec] = Field(
        default_factory=list,
        description="extra tasks scored only at the end, normalised to the base",
    )


class AssetsConfig(_Strict):
    builder: Literal["toy", "segmentation"]
    dir: str = ".cache/mergekit-cycleqd/toy"
    quick: bool = Field(False, description="smaller/faster assets (tests)")


class MergekitSource(_Strict):
    """An existing mergekit config whose base and models become the recipe's experts."""

    path: str
    tasks: dict[str, str] = Field(
        default_factory=dict,
        description="model as written in the config -> task it is the expert of; "
        "needed when the model names do not name the tasks",
    )


class Recipe(_Strict):
    name: str = "cycleqd"
    assets: AssetsConfig | None = None
    base_model: ModelSpec | None = None
    experts: list[ExpertSpec] = Field(default_factory=list)
    from_mergekit_config: str | MergekitSource | None = None
    tasks: list[TaskSpec]
    backend: BackendConfig = Field(default_factory=BackendConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    final: FinalConfig = Field(default_factory=FinalConfig)

    @field_validator("base_model", mode="before")
    @classmethod
    def _model_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("experts", mode="before")
    @classmethod
    def _expert_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if len(self.tasks) < 2:
            raise ValueError("CycleQD needs at least two tasks (one archive per task)")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        if self.from_mergekit_config and (self.experts or self.base_model):
            raise ValueError("give either from_mergekit_config or base_model/experts, not both")
        if not self.from_mergekit_config:
            if self.base_model is None:
                raise ValueError("base_model is required (or from_mergekit_config)")
            self._map_experts_to_tasks()
        bins = {t.bins for t in self.tasks}
        if len(bins) > 1:
            raise ValueError(
                f"all tasks must use the same number of bins (one grid per archive), got "
                f"{ {t.name: t.bins for t in self.tasks} }"
            )
        if self.search.sampling.alpha_low > self.search.sampling.alpha_high:
            raise ValueError("search.sampling.alpha_low must not exceed alpha_high")
        if self.final.select == "validated":
            missing = [t.name for t in self.tasks if t.validation is None]
            if missing:
                raise ValueError(
                    f"final.select: validated needs a `validation:` split on every task; "
                    f"tasks without one: {missing}"
                )
        lo, hi = self.search.coefficient_range
        if not lo < hi:
            raise ValueError(
                f"search.coefficient_range must be [lo, hi] with lo < hi, got {[lo, hi]}"
            )
        return self

    @property
    def final_select(self) -> str:
        """final.select, with its per-search-kind default resolved."""
        if self.final.select is not None:
            return self.final.select
        return "aggregate" if self.search.kind == "cycleqd" else "best_mean"

    def _map_experts_to_tasks(self) -> None:
        names = [t.name for t in self.tasks]
        if len(self.experts) != len(self.tasks):
            raise ValueError(
                f"one expert per task is needed: {len(self.tasks)} tasks {names} but "
                f"{len(self.experts)} experts"
            )
        for index, expert in enumerate(self.experts):
            if expert.task is None:
                expert.task = names[index]
            elif expert.task not in names:
                raise ValueError(
                    f"experts[{index}].task {expert.task!r} is not a task; tasks: {names}"
                )
            if expert.name is None:
                expert.name = expert.task
        tasks = [e.task for e in self.experts]
        if sorted(tasks) != sorted(names):
            raise ValueError(f"each task needs exactly one expert; experts' tasks are {tasks}")
        order = {n: i for i, n in enumerate(names)}
        self.experts.sort(key=lambda e: order[e.task])

    def expert_for(self, task: str) -> int:
        return next(i for i, e in enumerate(self.experts) if e.task == task)

    @property
    def bins(self) -> int:
        return self.tasks[0].bins

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]
