"""The recipe: what a user asks for, checked before anything runs.

- ``schema``: the pydantic models of a recipe (frozen, unknown keys are errors).
- ``loading``: YAML text -> variables substituted -> validated ``Recipe``.
- ``models``: resolving the base and expert paths or Hub ids.
- ``assets``: models the project builds itself (the toy family).
"""

from mergekit_cycleqd.errors import RecipeError
from mergekit_cycleqd.recipe.loading import (
    dump_recipe,
    experts_from_mergekit_config,
    format_validation_error,
    load_recipe,
    parse_recipe,
)
from mergekit_cycleqd.recipe.schema import (
    AssetsConfig,
    BackendConfig,
    CrossoverConfig,
    ExpertSpec,
    FinalConfig,
    ModelSpec,
    MutationConfig,
    OutputConfig,
    Recipe,
    SamplingConfig,
    SearchConfig,
    TaskSpec,
    WorkersConfig,
)

__all__ = [
    "AssetsConfig",
    "BackendConfig",
    "CrossoverConfig",
    "ExpertSpec",
    "FinalConfig",
    "ModelSpec",
    "MutationConfig",
    "OutputConfig",
    "Recipe",
    "RecipeError",
    "SamplingConfig",
    "SearchConfig",
    "TaskSpec",
    "WorkersConfig",
    "dump_recipe",
    "experts_from_mergekit_config",
    "format_validation_error",
    "load_recipe",
    "parse_recipe",
]
