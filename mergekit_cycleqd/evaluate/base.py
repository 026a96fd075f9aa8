"""Protocols shared by the driver, the model backends and the evaluators.

A *backend* holds one model resident (transformers, vLLM, or a scripted stand-in)
and takes each new child's weights in place. An *evaluator* scores whatever model
the backend currently holds on one task split and returns a TaskResult.
Evaluators are looked up by kind name; their options are pydantic models with
``extra="forbid"`` so that a recipe typo is reported with its field path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    from mergekit_cycleqd.merge.weights import WeightSource

Message = dict[str, str]
"""One chat turn: ``{"role": "system"|"user"|"assistant", "content": str}``."""

Prompt = str | list[Message]
"""A raw text prompt, or a chat conversation rendered with the model's chat template."""


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings; greedy unless temperature > 0."""

    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    temperature: float = 0.0


@runtime_checkable
class ModelBackend(Protocol):
    """A resident model that generates in batches and swaps weights in place."""

    name: str

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[str]:
        """One completion per prompt, in order, with stop strings removed."""
        ...

    def load_child(self, weights: WeightSource) -> None:
        """Replace the resident weights with the child's, without reloading the model."""
        ...

    def lm_eval_model(self) -> Any:
        """An ``lm_eval.api.model.LM`` over the resident model (for the lm-eval adapter)."""
        ...

    def close(self) -> None:
        """Release the model (GPU memory, engine processes)."""
        ...


@dataclass
class TaskResult:
    """Score of one model on one task split.

    ``score`` is the number CycleQD optimises and bins (in [0, 1]); ``metrics``
    holds every metric the evaluator reports (the score included); ``samples``
    holds JSON-serialisable per-sample details (prompt, reply, verdict...).
    """

    score: float
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


class EvaluatorOptions(BaseModel):
    """Base for evaluator options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Evaluator(ABC):
    """Scores the model resident in a backend on one task split.

    Subclasses set ``Options`` (a pydantic model) and implement ``evaluate``.
    One evaluator instance is built per (task, split) from the recipe.
    """

    Options: ClassVar[type[EvaluatorOptions]] = EvaluatorOptions
    api_version: ClassVar[int] = 1
    """The evaluator contract this class implements (see docs/evaluator-api.md)."""

    def __init__(self, options: EvaluatorOptions):
        self.options = options

    @classmethod
    def preflight(
        cls, options: EvaluatorOptions, *, where: str, cache: dict[str, Any]
    ) -> list[str]:
        """Problems a run would hit later that can be seen now, before any model loads
        (``mergekit-cycleqd check`` and every run call it): unknown task names, missing
        files. Each problem reads ``WHERE.field: what is wrong (got VALUE)``, with
        ``where`` prefixed. ``cache`` is shared by every call of one check (an index
        built once). Never trains, downloads or starts a server. Default: none."""
        return []

    @abstractmethod
    def evaluate(self, backend: ModelBackend) -> TaskResult:
        """Score the backend's current model."""

    def close(self) -> None:
        """Release resources (servers, sandboxes); default: nothing."""


# kind name -> "module:ClassName" for kinds registered in this process
# (``register_evaluator``). The project's own evaluators are not listed here: they come
# from the ``mergekit-cycleqd-evaluators`` distribution's entry points, as a third
# party's would, and are imported only when a recipe names them.
_REGISTRY: dict[str, str] = {}


def register_evaluator(kind: str, target: str) -> None:
    """Register an evaluator class by import path, e.g. ``"pkg.mod:MyEvaluator"``."""
    if kind in _REGISTRY and _REGISTRY[kind] != target:
        raise ValueError(f"evaluator kind {kind!r} is already registered as {_REGISTRY[kind]}")
    _REGISTRY[kind] = target


def evaluator_kinds() -> list[str]:
    """Built-in kinds, kinds registered at run time, and installed packages' entry points."""
    from mergekit_cycleqd.evaluate.plugins import entry_point_kinds

    return sorted(set(_REGISTRY) | set(entry_point_kinds()))


def evaluator_class(kind: str) -> type[Evaluator]:
    """The class a recipe's ``evaluator:`` names: a registered kind, an installed
    package's entry point (group ``mergekit_cycleqd.evaluators``), or an import path
    ``package.module:ClassName``. Raises ValueError naming close matches."""
    from mergekit_cycleqd.evaluate.plugins import resolve_evaluator

    return resolve_evaluator(kind, _REGISTRY, Evaluator)


def build_evaluator(kind: str, options: dict[str, Any]) -> Evaluator:
    """Validate options (pydantic ValidationError on a mistake) and build the evaluator."""
    cls = evaluator_class(kind)
    return cls(cls.Options.model_validate(options))
