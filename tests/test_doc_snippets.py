"""Every YAML snippet in README.md and docs/*.md is loaded, so the docs cannot drift.

A recipe snippet goes through the real loader (schema, every evaluator's options, backend
options); a fragment holding only ``tasks:`` is completed with a base model and one expert
per task first. A mergekit config goes through mergekit's own schema and
``validate_config``. Only one kind of problem is allowed: a data file or model that the
snippet names and this machine does not have.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mergekit_cycleqd.recipe import RecipeError, parse_recipe

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```ya?ml\n(.*?)^```", re.S | re.M)
# what a snippet may name without this machine having it
_ABSENT = re.compile(r"does not exist|is not a file|not a folder|no such file", re.I)


def _snippets() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            found.append((f"{doc.relative_to(ROOT)}:{line}", match.group(1)))
    return found


SNIPPETS = _snippets()


def test_the_docs_have_yaml_snippets() -> None:
    names = {where.split(":")[0] for where, _ in SNIPPETS}
    assert {"README.md", "docs/recipe.md", "docs/evaluators-os.md"} <= names


def _as_recipe(data: dict) -> dict:
    if "tasks" in data and "base_model" not in data and "from_mergekit_config" not in data:
        tasks = list(data["tasks"])
        if len(tasks) == 1:  # CycleQD needs two archives; the copy is the same check again
            tasks.append({**tasks[0], "name": f"{tasks[0]['name']}-copy"})
        data = {
            **data,
            "tasks": tasks,
            "base_model": "org/base",
            "experts": [{"path": f"org/{t['name']}", "task": t["name"]} for t in tasks],
        }
    return data


@pytest.mark.parametrize("where, text", SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_snippet_loads(where: str, text: str) -> None:
    data = yaml.safe_load(text)
    assert isinstance(data, dict), f"{where}: a snippet is a YAML mapping"
    if "merge_method" in data:
        from mergekit.config import MergeConfiguration

        from mergekit_cycleqd import validate_config

        validate_config(data)
        MergeConfiguration.model_validate(data)
        return
    try:
        parse_recipe(yaml.safe_dump(_as_recipe(data)), where)
    except RecipeError as error:
        unexpected = [line for line in str(error).splitlines() if not _ABSENT.search(line)]
        assert not unexpected, "\n".join(unexpected)


def test_a_rejected_snippet_fails_this_test() -> None:
    """The check itself: the block the OS doc used to show is refused."""
    stale = "evaluators:\n  os:\n    kind: os_interaction\n    options: {data: x.json}\n"
    with pytest.raises(AssertionError, match="evaluators: unknown field"):
        test_snippet_loads("stale.md:1", stale)
