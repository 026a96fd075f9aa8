"""What a breeder is asked to do: the crossover and mutation settings, defined once.

The recipe's ``search.crossover`` and ``search.mutation`` sections are these very
models (the recipe adds only the search's own ω distribution), so a setting is
declared, validated and documented in one place.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mergekit_cycleqd.merge.mutations import MUTATIONS


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CrossoverSpec(_Spec):
    """The mergekit merge method used as crossover, and its global parameters."""

    method: str = Field("cycleqd", description="cycleqd, or any mergekit merge method (e.g. ties)")
    parameters: dict[str, float | int | bool | str] = Field(default_factory=dict)


class MutationSpec(_Spec):
    """Which mutation operator a child gets (``merge.mutations``) and its strength."""

    kind: str = Field("svd", description="a key of merge.mutations.MUTATIONS")
    rate: Annotated[float, Field(ge=0)] = 0.1
    rank: Annotated[int, Field(ge=1)] | None = Field(
        None, description="keep the top-r singular directions of each task vector (None: all)"
    )
    gaussian_std: Annotated[float, Field(ge=0)] = 0.0003
    relative_std: Annotated[float, Field(ge=0)] | None = Field(
        None,
        description="gaussian: std as a fraction of the experts' task-vector RMS (overrides "
        "gaussian_std, whose absolute 3e-4 can be far below a small model's task vectors)",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in MUTATIONS:
            raise ValueError(f"mutation {kind!r} is not one of {', '.join(MUTATIONS)}")
        return kind

    @property
    def stays_in_genome_space(self) -> bool:
        return MUTATIONS[self.kind].stays_in_genome_space
