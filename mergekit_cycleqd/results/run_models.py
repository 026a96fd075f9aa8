"""Any model of a finished or running run, rebuilt from its stored recipe and model file.

Read-only on the run folder: these helpers never write into it, so they work while
another process is running the search.
"""

from __future__ import annotations

from pathlib import Path

from mergekit_cycleqd.errors import RunFolderError
from mergekit_cycleqd.filing.runfolder import RunFolder, model_file
from mergekit_cycleqd.merge.breeder import Breeder
from mergekit_cycleqd.recipe.models import resolve_models
from mergekit_cycleqd.search.worker import make_breeder


def run_breeder(run_dir: Path, device: str | None = None) -> Breeder:
    """A Breeder for an existing run, built from its stored recipe."""
    recipe = RunFolder(run_dir).load_recipe()
    base, experts = resolve_models(recipe)
    return make_breeder(recipe, base, experts, device)


def materialize_child(run_dir: Path, child_id: int | str, out_dir: Path) -> Path:
    """Write any model of a run (a child id, or ``"final"``) as a full model folder."""
    path = model_file(run_dir, child_id)
    if not path.exists():
        raise RunFolderError(
            f"model {child_id}'s file {path} is missing from the run folder (deleted, or the "
            f"folder was copied without children/). Copy it back from the original run folder."
        )
    breeder = run_breeder(run_dir)
    try:
        return breeder.materialize(breeder.load(path), Path(out_dir))
    finally:
        breeder.close()
