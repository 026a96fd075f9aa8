"""Which Hub ids a published card credits: the command line, the recipe, or the models' own metadata."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergekit_cycleqd.results.hub import (
    PublishError,
)
from mergekit_cycleqd.results.model_card import (
    ExpertRef,
)


def _hub_ids(
    meta: Mapping[str, Any],
    *,
    base_hub_id: str | None = None,
    expert_hub_ids: Mapping[str, str] | None = None,
    allow_missing: bool = False,
) -> tuple[str | None, list[ExpertRef], dict[str, str]]:
    """Base and expert Hub ids, and a map local path -> Hub id for rewriting configs.

    Each id comes from, in order: the command line (``base_hub_id``, ``expert_hub_ids``
    by expert name), the recipe's ``hub_id``, or the model folder's own metadata
    (``config.json`` ``_name_or_path`` or a ``model_id`` in its README front matter).
    """
    models = meta.get("models") or {}
    base = dict(models.get("base") or {})
    base["hub_id"] = base_hub_id or base.get("hub_id") or _declared_hub_id(base.get("path"))
    given = dict(expert_hub_ids or {})
    entries = []
    for expert in models.get("experts", []):
        expert = dict(expert)
        expert["hub_id"] = (
            given.pop(expert.get("name"), None)
            or expert.get("hub_id")
            or _declared_hub_id(expert.get("path"))
        )
        entries.append(expert)
    if given:
        names = ", ".join(repr(e.get("name")) for e in entries)
        raise PublishError(
            f"--expert-hub-id: no expert named {', '.join(map(repr, given))} in this run "
            f"(got {dict(given)}); its experts: {names}"
        )
    missing = [] if base["hub_id"] else ["the base model (--base-hub-id ID)"]
    missing += [
        f"expert {e.get('name')!r} (--expert-hub-id {e.get('name')}=ID)"
        for e in entries
        if not e["hub_id"]
    ]
    if missing and not allow_missing:
        raise PublishError(
            f"{', '.join(missing)} of this run has no Hugging Face Hub id, and a published "
            "merge credits its base models by Hub id: give them on the command line as shown, "
            "or publish with --no-hub-ids to write a card that names them only locally"
        )
    experts = [ExpertRef(e["name"], e.get("task", ""), e["hub_id"]) for e in entries]
    paths = {str(m["path"]): m["hub_id"] for m in [base, *entries] if m.get("path") and m["hub_id"]}
    return base["hub_id"], experts, paths


def _declared_hub_id(folder: str | None) -> str | None:
    """A Hub id the model folder declares about itself, if any (no network)."""
    if not folder:
        return None
    import json
    import re

    folder_path = Path(folder)
    hub_id = re.compile(r"^[\w.-]+/[\w.-]+$")
    try:
        name = json.loads((folder_path / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError):
        name = None
    if isinstance(name, str) and hub_id.match(name) and not Path(name).exists():
        return name
    readme = folder_path / "README.md"
    if readme.is_file():
        from mergekit_cycleqd.results.model_card import parse_front_matter

        try:
            declared = parse_front_matter(readme.read_text(encoding="utf-8")).get("model_id")
        except Exception:  # a card without front matter says nothing about its id
            declared = None
        if isinstance(declared, str) and hub_id.match(declared):
            return declared
    return None


def default_repo_id(run_dir: Path, org: str, pick_name: str) -> str:
    """``ORG/<run name>-<model name>``: --final and each --elite get a repository of their own."""
    import yaml

    from mergekit_cycleqd.filing.ledger import Ledger

    with Ledger(Path(run_dir) / "ledger.sqlite") as ledger:
        recipe = yaml.safe_load(ledger.meta().get("recipe") or "{}") or {}
    run_name = recipe.get("name") if isinstance(recipe, dict) else None
    return f"{org}/{run_name or Path(run_dir).name}-{pick_name}"
