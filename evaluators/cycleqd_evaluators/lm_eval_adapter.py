"""Score any lm-evaluation-harness task on the backend's resident model.

The backend hands out an lm-eval LM over its resident model (HFLM for
transformers, a generation-only adapter otherwise); this evaluator scores it on
one task and split as ``lm_eval.simple_evaluate`` would and returns the chosen
metric as the CycleQD score. The task, its documents and its requests are built
once per evaluator (``lm_eval_prepared``); each child only runs the model and is
scored by lm-eval's own filters, metrics and aggregation.

What matters when the same resident model is re-scored for thousands of
merged children:

- no answer cache: lm-eval's request cache keys on the request only, so it would
  hand a child the previous child's answers; it is never enabled here;
- no global reseeding: ``simple_evaluate`` would reseed python/numpy/torch by
  default, which would make the driver's own random draws repeat after every
  evaluation; only the task-local few-shot seed is set;
- no per-call environment report (see ``_no_env_report``);
- the task index is built once per evaluator (``include_defaults=False`` when a
  local task folder is given, which also avoids lm-eval's ~7 s default index).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from mergekit_cycleqd.evaluate import Evaluator, EvaluatorOptions, ModelBackend, TaskResult

OFFLINE_ENV: dict[str, str] = {
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}

GenValue = str | int | float | bool


def set_offline_env() -> None:
    """Keep datasets/hub/transformers from reaching the network (read at their import)."""
    os.environ.update(OFFLINE_ENV)


class LMEvalOptions(EvaluatorOptions):
    """Options of the ``lm_eval`` evaluator (one task, one split)."""

    task: str = Field(description="lm-eval task name (one task or a group with an aggregate)")
    include_path: str | None = Field(
        default=None,
        description="folder of local task YAMLs; when set, lm-eval's built-in tasks are not indexed",
    )
    include_defaults: bool | None = Field(
        default=None,
        description="index lm-eval's built-in tasks too (default: only when include_path is unset)",
    )
    metric: str = Field(default="exact_match", description="metric reported as the score")
    filter: str = Field(
        default="none", description="filter name of that metric ('none' if unfiltered)"
    )
    split: str | None = Field(
        default=None,
        description="dataset split to score instead of the task's test_split (e.g. 'validation')",
    )
    limit: int | float | None = Field(
        default=None, description="first N documents (int) or a fraction of them (float < 1)"
    )
    num_fewshot: int | None = Field(default=None, description="override the task's few-shot count")
    fewshot_seed: int = Field(default=1234, description="seed of the few-shot example sampler")
    batch_size: int | None = Field(
        default=None, ge=1, description="generation batch size for this task (default: backend's)"
    )
    gen_kwargs: dict[str, GenValue] | None = Field(
        default=None, description="override the task's generation_kwargs (e.g. max_gen_toks)"
    )
    apply_chat_template: bool = Field(default=False, description="render prompts as chats")
    fewshot_as_multiturn: bool = Field(
        default=False, description="few-shot examples as chat turns (needs apply_chat_template)"
    )
    system_instruction: str | None = None
    log_samples: bool = Field(default=True, description="return per-sample logs")
    confirm_run_unsafe_code: bool = Field(
        default=False, description="allow tasks that execute model-written code"
    )
    offline: bool = Field(default=True, description="set the HF offline environment variables")


class LMEvalEvaluator(Evaluator):
    """Scores the backend's resident model on one lm-eval task split."""

    Options = LMEvalOptions

    def __init__(self, options: LMEvalOptions):
        super().__init__(options)
        self.options: LMEvalOptions = options
        if options.include_path is not None and not Path(options.include_path).is_dir():
            raise ValueError(
                f"lm_eval option include_path: {options.include_path!r} is not a folder"
            )
        if options.offline:
            set_offline_env()
        self._task_manager: Any = None
        self._prepared: dict[str, Any] | None = None
        self._prepared_for: Any = None

    @property
    def metric_key(self) -> str:
        """The key lm-eval files the selected score under, e.g. ``exact_match,none``."""
        return f"{self.options.metric},{self.options.filter}"

    def task_manager(self) -> Any:
        """lm-eval's task index, built on first use and kept (it is the slow part)."""
        if self._task_manager is None:
            from lm_eval.tasks import TaskManager

            options = self.options
            include_defaults = (
                options.include_defaults
                if options.include_defaults is not None
                else options.include_path is None
            )
            self._task_manager = TaskManager(
                include_path=options.include_path, include_defaults=include_defaults
            )
            if options.task not in self._task_manager.all_tasks:
                where = options.include_path or "lm-eval's built-in tasks"
                raise ValueError(
                    f"lm_eval task {options.task!r} is not defined in {where}; "
                    f"known tasks there: {', '.join(self._task_manager.all_tasks[:40]) or 'none'}"
                )
        return self._task_manager

    def prepared(self, lm: Any) -> dict[str, Any]:
        """The task dict with its documents and requests, built for ``lm`` once and kept.

        A split override replaces the test split of the loaded task objects; that
        is only defined for single tasks, not groups.
        """
        if self._prepared is not None and self._prepared_for is lm:
            return self._prepared
        from cycleqd_evaluators.lm_eval_prepared import prepare_tasks

        options = self.options
        loaded = prepare_tasks(
            self.task_manager(),
            [options.task],
            gen_kwargs=dict(options.gen_kwargs) if options.gen_kwargs else None,
            num_fewshot=options.num_fewshot,
            fewshot_seed=options.fewshot_seed,
        )
        if options.split is not None:
            if loaded["groups"]:
                raise ValueError(
                    f"lm_eval option split: {options.split!r} cannot be applied to "
                    f"{options.task!r}, which is a group; name one of its tasks instead"
                )
            for task in loaded["tasks"].values():
                available = sorted(getattr(task, "dataset", None) or {})
                if options.split not in available:
                    raise ValueError(
                        f"lm_eval task {task.task_name!r} has no split {options.split!r}; "
                        f"available splits: {', '.join(available) or 'none'}"
                    )
                task.set_config(key="test_split", value=options.split)
        self._prepared, self._prepared_for = loaded, lm
        return loaded

    @classmethod
    def preflight(cls, options: LMEvalOptions, *, where: str, cache: dict[str, Any]) -> list[str]:
        """Task, metric and filter names in lm-eval's own task index; local data files."""
        from cycleqd_evaluators.lm_eval_checks import check_lm_eval_task

        return check_lm_eval_task(options, where=where, managers=cache.setdefault("lm_eval", {}))

    def evaluate(self, backend: ModelBackend) -> TaskResult:
        from cycleqd_evaluators.lm_eval_prepared import run_prepared

        options = self.options
        lm = backend.lm_eval_model()
        with _batch_size(lm, options.batch_size), _quiet_lm_eval(), _no_env_report():
            loaded = self.prepared(lm)
            results = run_prepared(
                lm,
                loaded,
                limit=options.limit,
                cache_requests=False,
                bootstrap_iters=0,
                log_samples=options.log_samples,
                apply_chat_template=options.apply_chat_template,
                fewshot_as_multiturn=options.fewshot_as_multiturn,
                system_instruction=options.system_instruction,
                confirm_run_unsafe_code=options.confirm_run_unsafe_code,
            )
        return self.task_result(results)

    def task_result(self, results: dict[str, Any]) -> TaskResult:
        """Pick the selected metric; keep every numeric metric and the per-sample logs."""
        options = self.options
        task_results = results["results"].get(options.task)
        if task_results is None:
            raise ValueError(
                f"lm_eval task {options.task!r} produced no results "
                f"(results for: {', '.join(results['results']) or 'nothing'})"
            )
        metrics = {
            key: float(value)
            for key, value in task_results.items()
            if "," in key and isinstance(value, int | float) and not isinstance(value, bool)
        }
        if self.metric_key not in metrics:
            available = sorted(k for k in metrics if "_stderr," not in k)
            raise ValueError(
                f"lm_eval task {options.task!r} reports no metric {options.metric!r} with filter "
                f"{options.filter!r} (key {self.metric_key!r}); available metric,filter pairs: "
                f"{', '.join(available) or 'none'}"
            )
        score = metrics[self.metric_key]
        if math.isnan(score):
            raise ValueError(f"lm_eval task {options.task!r}: metric {self.metric_key!r} is NaN")
        samples = []
        for task_samples in (results.get("samples") or {}).values():
            samples.extend(sample_log(s) for s in task_samples if s.get("filter") == options.filter)
        return TaskResult(score=score, metrics=metrics, samples=samples)


def sample_log(sample: dict[str, Any]) -> dict[str, Any]:
    """One lm-eval sample as a small JSON-friendly dict: doc, prompt, response, target, metrics."""
    arguments = sample.get("arguments") or [()]
    first = arguments[0] if arguments else ()
    prompt = first[0] if isinstance(first, tuple | list) and first else first
    responses = sample.get("filtered_resps") or [None]
    log = {
        "doc_id": sample.get("doc_id"),
        "doc": sample.get("doc"),
        "prompt": prompt,
        "response": responses[0] if len(responses) == 1 else responses,
        "target": sample.get("target"),
    }
    for name in sample.get("metrics", []):
        value = sample.get(name)
        log[name] = float(value) if isinstance(value, int | float) else value
    return log


class _batch_size:
    """Temporarily set the generation batch size of an lm-eval model (HFLM or BackendLM).

    The backend builds its lm-eval model once and shares it between evaluators,
    so a per-task batch size is applied for the call and then restored.
    """

    def __init__(self, lm: Any, batch_size: int | None):
        self.lm = lm
        self.batch_size = batch_size
        self.attribute = next(
            (a for a in ("batch_size_per_gpu", "batch_size") if _settable(lm, a)), None
        )
        self.previous: Any = None

    def __enter__(self) -> None:
        if self.batch_size is not None and self.attribute is not None:
            self.previous = getattr(self.lm, self.attribute)
            setattr(self.lm, self.attribute, self.batch_size)

    def __exit__(self, *exc: object) -> None:
        if self.batch_size is not None and self.attribute is not None:
            setattr(self.lm, self.attribute, self.previous)


def _settable(obj: Any, attribute: str) -> bool:
    """True for a plain instance attribute (HFLM's batch_size is a read-only property)."""
    return attribute in getattr(obj, "__dict__", {})


@contextlib.contextmanager
def _no_env_report() -> Iterator[None]:
    """Skip the environment report simple_evaluate attaches to every result, and
    lm-eval's progress bars.

    It runs torch's collect_env, which shells out to pip (about 0.45 s of a
    0.5 s evaluation of a small task, paid again for every child and task), and
    git, which prints "fatal: not a git repository" outside a checkout. The run
    records its environment once; per child it is of no use.
    """
    from unittest import mock

    import lm_eval.api.model
    import lm_eval.api.task
    import lm_eval.evaluator
    import lm_eval.models.huggingface
    from tqdm import tqdm

    # lm-eval's own progress bars would print several lines per child and task;
    # the driver shows one bar for the whole run instead.
    def silent_tqdm(*args: Any, **kwargs: Any) -> tqdm:
        return tqdm(*args, **{**kwargs, "disable": True})

    with (
        mock.patch.object(lm_eval.evaluator, "add_env_info", lambda results: None),
        mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None),
        mock.patch.object(lm_eval.api.task, "tqdm", silent_tqdm),
        mock.patch.object(lm_eval.api.model, "tqdm", silent_tqdm),
        mock.patch.object(lm_eval.models.huggingface, "tqdm", silent_tqdm),
    ):
        yield


class _quiet_lm_eval:
    """Silence lm-eval's per-run INFO/WARNING chatter (it would print per child)."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("lm_eval")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)
