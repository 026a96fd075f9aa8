"""Publish models from a CycleQD run to the Hugging Face Hub.

One repository per model: a single model goes to ``repo_id`` itself; several go
to ``<repo_id>-<name>`` each (e.g. ``org/run-final``, ``org/run-elite-812``), so
every repository holds exactly one model and its card.

Each model is uploaded in **one atomic commit** (weights, README.md card, archive
map, mergekit config, and deletions of stale files of an earlier publication), so
a failure can never leave a repository half-updated: re-running the same command
re-commits what failed, and skips a model whose repository already holds
identical files. A repository that holds files but no CycleQD card belongs to
somebody else's work and is never touched.

The token comes from the ``token`` argument, ``HF_TOKEN`` or the stored login
(``huggingface_hub.get_token``); it is never printed, logged or written, and is
scrubbed from any error text that passes through here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_cycleqd.results.hub import (
    PublishedModel,
    PublishError,
    PublishItem,
    PublishResult,
    publish_models,
    repo_ids_for,
    stage_item,
)
from mergekit_cycleqd.results.hub_ids import _hub_ids, default_repo_id
from mergekit_cycleqd.results.model_card import (
    CardInfo,
)

__all__ = [
    "PublishError",
    "PublishItem",
    "PublishResult",
    "PublishedModel",
    "publish_models",
    "publish_run",
    "repo_ids_for",
    "stage_item",
]

logger = logging.getLogger(__name__)


# ---- picking models from a run -------------------------------------------------------


@dataclass(frozen=True)
class _Pick:
    name: str
    child_id: int | str  # an id, or "final" for the aggregated model
    record: object


def _pick_models(ledger, archives, selection: Mapping[str, Any]) -> list[_Pick]:
    """Resolve ``{"final": True}``, ``{"elite": ID}`` or ``{"archive": TASK, "top": K}``."""
    chosen = [
        key for key in ("final", "elite", "archive") if selection.get(key) not in (None, False)
    ]
    if len(chosen) != 1:
        raise PublishError("choose exactly one of --final, --elite CHILD_ID, --archive TASK")
    if chosen[0] == "final":
        from mergekit_cycleqd.results.final import FINAL_NAME

        finals = [r for r in ledger.children(role="final") if r.name == FINAL_NAME]
        if not finals:
            raise PublishError("the run has no final model yet; finish the run first")
        return [_Pick("final", "final", finals[-1])]
    if chosen[0] == "elite":
        child_id = int(selection["elite"])
        try:
            record = ledger.child(child_id)
        except KeyError:
            raise PublishError(f"the run has no model with id {child_id}") from None
        if record.status != "ok":
            raise PublishError(f"model {child_id} failed during the run ({record.error})")
        if record.role == "seed":
            raise PublishError(
                f"model {child_id} is {record.name.removeprefix('seed:')} itself (a seed, not a "
                f"merge); it is already published where the recipe took it from"
            )
        return [_Pick(f"elite-{child_id}", child_id, record)]
    task, top = selection["archive"], int(selection.get("top") or 1)
    if task not in archives:
        raise PublishError(f"no archive {task!r}; the run's tasks are {sorted(archives)}")
    if top < 1:
        raise PublishError("--top must be at least 1")
    elites = sorted(archives[task].elites.values(), key=lambda e: (-e.quality, e.child_id))
    if not elites:
        raise PublishError(f"archive {task!r} is empty")
    picks = []
    for elite in elites:  # seeds are the unmodified expert/base: never republished as merges
        record = ledger.child(elite.child_id)
        if record.role == "seed":
            logger.warning(
                "skipping model %d of archive %r: it is %s itself (a seed), not a merge",
                record.id,
                task,
                record.name.removeprefix("seed:"),
            )
            continue
        picks.append(_Pick(f"elite-{elite.child_id}", elite.child_id, record))
        if len(picks) == top:
            break
    if not picks:
        raise PublishError(f"archive {task!r} holds only seeds (the experts themselves)")
    return picks


def _card_config(config_path: Path, paths: Mapping[str, str]) -> tuple[str | None, Path | None]:
    """The run's mergekit YAML rewritten for the Hub, and the genome file it needs (if any).

    Local base/expert paths become Hub ids; a genome parameter is pointed at the copy
    shipped in the repository under ``cycleqd/``.
    """
    if not config_path.is_file():
        return None, None
    import yaml

    config = yaml.safe_load(config_path.read_text())
    if not isinstance(config, dict):
        return None, None

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return paths.get(value, value) if isinstance(value, str) else value

    config = rewrite(config)
    genome: Path | None = None
    parameters = config.get("parameters")
    if isinstance(parameters, dict) and isinstance(parameters.get("genome"), str):
        genome = (config_path.parent / parameters["genome"]).resolve()  # relative to the YAML
        if not genome.is_file():  # ship every file the YAML names, or nothing
            raise PublishError(
                f"{config_path} names the genome {genome}, which is missing; copy the run "
                f"folder's children/ back before publishing"
            )
        parameters["genome"] = f"cycleqd/{genome.name}"
        if "svd_cache" in parameters:
            parameters["svd_cache"] = "svd_cache"
    return yaml.safe_dump(config, sort_keys=False), genome


def verify_rebuild(config_path: Path, model_dir: Path) -> None:
    """Rebuild the model from the YAML its card ships, with mergekit, and compare bit for bit.

    A card whose recipe does not rebuild the uploaded weights would be a false claim, so
    nothing is uploaded then.
    """
    import copy
    import tempfile

    import torch
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from mergekit_cycleqd.merge.config_check import resolve_relative_paths
    from mergekit_cycleqd.merge.methods import register_methods

    register_methods()
    config = resolve_relative_paths(yaml.safe_load(config_path.read_text()), config_path.parent)
    with tempfile.TemporaryDirectory() as out:
        run_merge(
            MergeConfiguration.model_validate(copy.deepcopy(config)),
            out,
            options=MergeOptions(copy_tokenizer=False, write_model_card=False, lazy_unpickle=True),
        )
        rebuilt, shipped = _folder_tensors(Path(out)), _folder_tensors(model_dir)
    differing = sorted(
        n
        for n in rebuilt.keys() | shipped.keys()
        if n not in rebuilt or n not in shipped or not torch.equal(rebuilt[n], shipped[n])
    )
    if differing:
        raise PublishError(
            f"{config_path} does not rebuild the weights in {model_dir} (tensors differ: "
            f"{', '.join(differing[:3])}{'...' if len(differing) > 3 else ''}); nothing uploaded"
        )


def _folder_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def _materialize(run_dir: Path, child_id: int | str, out_dir: Path) -> Path:
    from mergekit_cycleqd.results.run_models import materialize_child

    return materialize_child(run_dir, child_id, out_dir)


def publish_run(
    run_dir: Path,
    repo_id: str | None,
    selection: Mapping[str, Any],
    *,
    private: bool = False,
    dry_run: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    staging_dir: Path | None = None,
    base_hub_id: str | None = None,
    expert_hub_ids: Mapping[str, str] | None = None,
    allow_missing_hub_ids: bool = False,
    org: str | None = None,
) -> PublishResult:
    """Pick models from a run, materialise them, write their cards and publish them.

    ``selection`` is ``{"final": True}``, ``{"elite": CHILD_ID}`` or
    ``{"archive": TASK, "top": K}`` (the K best elites of TASK's archive). Folders
    are staged under ``staging_dir`` (default ``RUN/publish/``), which a dry run
    leaves for inspection. Hub ids of the base and experts: see ``_hub_ids``. Without
    ``repo_id``, each model goes to ``ORG/<run name>-<model name>`` (``org``).
    """
    from mergekit_cycleqd.filing.archive import archives_from_ledger
    from mergekit_cycleqd.filing.ledger import Ledger
    from mergekit_cycleqd.results.report.figures import archives_png

    run_dir = Path(run_dir)
    if not (run_dir / "ledger.sqlite").is_file():
        raise PublishError(f"{run_dir} is not a run folder (no ledger.sqlite)")
    staging_dir = Path(staging_dir) if staging_dir else run_dir / "publish"
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        meta = ledger.meta()
        archives = archives_from_ledger(ledger)
        picks = _pick_models(ledger, archives, selection)
    base, experts, paths = _hub_ids(
        meta,
        base_hub_id=base_hub_id,
        expert_hub_ids=expert_hub_ids,
        allow_missing=allow_missing_hub_ids,
    )
    if not repo_id:
        if not org:
            raise PublishError("give --repo-id ORG/NAME, or --org ORG for ORG/<run>-<model> names")
        repo_id = default_repo_id(run_dir, org, picks[0].name) if len(picks) == 1 else ""
        repo_id = repo_id or default_repo_id(run_dir, org, "").rstrip("-")
    repo_ids_for(repo_id, [pick.name for pick in picks])  # refuse a bad id before any work
    tasks = list(meta["tasks"])
    items = []
    for pick in picks:
        record = pick.record
        model_dir = _materialize(run_dir, pick.child_id, staging_dir / "models" / pick.name)
        config_path = run_dir / "elites" / f"{record.id}.yml"
        yaml_text, genome = _card_config(config_path, paths)
        if yaml_text is not None:
            verify_rebuild(config_path, model_dir)
        highlight = record.parents if pick.child_id == "final" else [record.id]
        card = CardInfo(
            base_model=base,
            experts=experts,
            tasks=tasks,
            scores={
                split: {t: by_task[t] for t in tasks if t in by_task}
                for split, by_task in (("opt", record.scores), ("test", record.test_scores))
                if any(t in by_task for t in tasks)
            },
            kind="final" if pick.child_id == "final" else "elite",
            child_id=record.id,
            generation=record.generation,
            parents=list(record.parents),
            active_task=record.active_task,
            archive_image=archives_png(archives, highlight=highlight) if archives else None,
            mergekit_yaml=yaml_text,
        )
        extra = {f"cycleqd/{genome.name}": genome} if genome else {}
        items.append(PublishItem(pick.name, model_dir, card, extra_files=extra))
    return publish_models(
        items,
        repo_id,
        private=private,
        dry_run=dry_run,
        endpoint=endpoint,
        token=token,
        staging_dir=staging_dir / "repos",
    )
