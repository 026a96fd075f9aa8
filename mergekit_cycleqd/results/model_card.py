"""Hugging Face model cards (README.md) for models published from a CycleQD run.

The front matter is what the Hub indexes: ``base_model`` lists the real Hub ids
of the base and the experts with ``base_model_relation: merge`` (mergekit's own
card leaves the relation out, so the Hub would not show the model as a merge),
the ``cycleqd`` tag marks a repository as ours (publishing refuses to overwrite
a repository without it), and ``model-index`` carries the scores so they show
on the model page. The body tells a reader how the model was made and how to
rebuild it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import yaml

__all__ = ["CYCLEQD_TAG", "CardInfo", "ExpertRef", "render_card", "parse_front_matter"]

CYCLEQD_TAG = "cycleqd"
ARCHIVE_IMAGE = "archive.png"
MERGEKIT_CONFIG = "mergekit_config.yml"
PAPER_URL = "https://arxiv.org/abs/2410.14735"


@dataclass(frozen=True)
class ExpertRef:
    """An expert model: its run-local name, its task, and its Hub id."""

    name: str
    task: str
    hub_id: str | None  # None: published with --no-hub-ids, named only locally


@dataclass
class CardInfo:
    """Everything a card says about one published model.

    ``scores`` maps split ("opt", "test") to {task: score in [0, 1]}. ``kind`` is
    "final" (the aggregated model), "elite" or another ledger role; ``child_id``
    and ``generation`` locate it in the run, ``parents`` are the ids it was bred
    (or aggregated) from. ``archive_image`` is PNG bytes of the archive map;
    ``mergekit_yaml`` the config that rebuilds it with ``mergekit-cycleqd-yaml``.
    """

    base_model: str | None  # None: published with --no-hub-ids
    experts: list[ExpertRef]
    tasks: list[str]
    scores: dict[str, dict[str, float]]
    kind: str = "elite"
    child_id: int | str | None = None
    generation: int | None = None
    parents: list[int] = field(default_factory=list)
    active_task: str | None = None
    archive_image: bytes | None = None
    mergekit_yaml: str | None = None
    extra_tags: list[str] = field(default_factory=list)
    license: str | None = None


_SPLIT_LABELS = {"opt": "optimisation", "test": "test"}


def _front_matter(info: CardInfo, model_name: str) -> dict:
    tags = ["merge", "mergekit", CYCLEQD_TAG, *info.extra_tags]
    results = []
    for split, by_task in info.scores.items():
        for task in info.tasks:
            value = by_task.get(task)
            if value is None or math.isnan(value):
                continue
            label = _SPLIT_LABELS.get(split, split)
            results.append(
                {
                    "task": {"type": "text-generation", "name": task},
                    "dataset": {"name": f"{task} ({label} split)", "type": task, "split": split},
                    "metrics": [
                        {
                            "type": "accuracy",
                            "value": round(float(value), 6),
                            "name": f"{task} score",
                        }
                    ],
                }
            )
    hub_ids = [i for i in [info.base_model, *(e.hub_id for e in info.experts)] if i]
    meta: dict = {"base_model": hub_ids, "base_model_relation": "merge"} if hub_ids else {}
    meta["library_name"] = "transformers"
    meta["tags"] = list(dict.fromkeys(tags))
    if info.license:
        meta["license"] = info.license
    if results:
        meta["model-index"] = [{"name": model_name, "results": results}]
    return meta


def _provenance(info: CardInfo) -> str:
    if info.kind == "final":
        parents = ", ".join(f"#{p}" for p in info.parents) or "the archives' best elites"
        return (
            "This is the run's **final model**: the base plus a softmax(quality)-weighted sum of "
            f"the task vectors of the best elite of each task's archive ({parents}), as in §3.4 "
            "of the paper."
        )
    where = f"child #{info.child_id}" if info.child_id is not None else "a child"
    text = f"This is {where} of the run, an elite of the CycleQD archives"
    if info.generation is not None:
        text += f", bred in generation {info.generation}"
    if info.active_task:
        text += f" while optimising **{info.active_task}**"
    text += "."
    if info.parents:
        text += " Parents: " + ", ".join(f"#{p}" for p in info.parents) + "."
    return text


def _scores_table(info: CardInfo) -> str:
    splits = [s for s in info.scores if info.scores[s]]
    if not splits:
        return "_No scores were recorded._"
    header = "| task | " + " | ".join(_SPLIT_LABELS.get(s, s) for s in splits) + " |"
    lines = [header, "|---|" + "---:|" * len(splits)]
    for task in info.tasks:
        cells = []
        for split in splits:
            value = info.scores[split].get(task)
            cells.append("–" if value is None or math.isnan(value) else f"{value:.4f}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _link(hub_id: str | None, local_name: str) -> str:
    if hub_id is None:
        return f"{local_name} (a local model, not on the Hub)"
    return f"[{hub_id}](https://huggingface.co/{hub_id})"


def render_card(info: CardInfo, model_name: str) -> str:
    """The complete README.md text (front matter + body) for one model."""
    meta = yaml.safe_dump(_front_matter(info, model_name), sort_keys=False, allow_unicode=True)
    experts = "\n".join(
        f"- {_link(e.hub_id, e.name)} — expert for **{e.task}**" for e in info.experts
    )
    parts = [
        f"---\n{meta}---",
        f"# {model_name}",
        "This model is a merge of expert language models fine-tuned from one base, found by "
        f"[CycleQD]({PAPER_URL}) (quality-diversity model merging: one archive per task, whose "
        "axes are the other tasks' scores; children are bred by merging task vectors and "
        "mutated along the experts' singular directions) with "
        "[mergekit](https://github.com/arcee-ai/mergekit) and the mergekit-cycleqd plugin.",
        "## How it was made",
        f"Base model: {_link(info.base_model, 'base')}\n\nExperts:\n\n{experts}",
        "## Lineage",
        _provenance(info),
        "## Scores",
        "Scores are in [0, 1] (higher is better) on the run's own task definitions; the "
        "optimisation split guided the search, the test split was held out.\n\n"
        + _scores_table(info),
    ]
    if info.archive_image is not None:
        parts += [
            "## Archive map",
            f"![Archives at the end of the run, this model's cell marked]({ARCHIVE_IMAGE})",
        ]
    if info.mergekit_yaml:
        parts += [
            "## Rebuild it",
            "The mergekit configuration below (also in "
            f"`{MERGEKIT_CONFIG}`) rebuilds the weights; it needs the plugin, so run it with "
            f"`mergekit-cycleqd-yaml {MERGEKIT_CONFIG} OUTPUT_DIR` rather than plain "
            "`mergekit-yaml`.",
            f"```yaml\n{info.mergekit_yaml.rstrip()}\n```",
        ]
        if "svd_cache" in info.mergekit_yaml:
            parts.append(
                "The `cycleqd_genome` method also needs the SVD factors of the experts' task "
                "vectors: when the `svd_cache` folder does not hold them they are recomputed "
                "from the base and the experts on first use and kept there (point it at the "
                "cache of a mergekit-cycleqd run with the same models to skip that). Paths are "
                "relative to a clone of this repository."
            )
    return "\n\n".join(parts) + "\n"


def parse_front_matter(text: str) -> dict:
    """The YAML front matter of a card (empty when there is none)."""
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    if end < 0:
        return {}
    loaded = yaml.safe_load(text[4:end])
    return loaded if isinstance(loaded, dict) else {}
