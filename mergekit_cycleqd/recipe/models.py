"""Resolving the recipe's model references to local folders."""

from __future__ import annotations

from pathlib import Path

from mergekit_cycleqd.errors import RecipeError
from mergekit_cycleqd.recipe.schema import ModelSpec, Recipe


def resolve_model(spec: ModelSpec, field: str) -> Path:
    """A local model folder for ``spec``: the path itself, or a Hub snapshot.

    Hub ids are downloaded once into the usual Hugging Face cache.
    """
    local = Path(spec.path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise RecipeError(f"{field}: {spec.path} has no config.json; is it a model folder?")
        return local.resolve()
    if spec.path.count("/") == 1 and not spec.path.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec.path))
        except Exception as error:  # network down, gated repo, unknown id...
            raise RecipeError(
                f"{field}: {spec.path!r} is not a local folder and could not be fetched "
                f"from the Hub: {error}"
            ) from None
    raise RecipeError(f"{field}: model folder {spec.path!r} does not exist")


def resolve_models(recipe: Recipe) -> tuple[Path, list[Path]]:
    """Local folders of the recipe's base model and experts (errors name the field)."""
    base = resolve_model(recipe.base_model, "base_model")
    experts = [resolve_model(e, f"experts[{i}]") for i, e in enumerate(recipe.experts)]
    return base, experts


def hub_id(spec: ModelSpec) -> str | None:
    """The Hub id to credit in model cards: explicit, or the path when it is one."""
    if spec.hub_id:
        return spec.hub_id
    if not Path(spec.path).expanduser().exists() and spec.path.count("/") == 1:
        return spec.path
    return None
