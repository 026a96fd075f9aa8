"""The recipes shipped in recipes/ validate (schema and every evaluator's options)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mergekit_cycleqd import cli
from mergekit_cycleqd.recipe import RecipeError, load_recipe
from mergekit_cycleqd.recipe.datasets import dataset_needs
from tests.mbpp_fixtures import HUMANEVAL_PROBLEMS, write_plus

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


DB_RECORD = {
    "description": "How many rows are there?",
    "add_description": "The name of this table is t, and the headers of this table are a.",
    "table": {
        "table_name": "t",
        "table_info": {"columns": [{"name": "a", "type": "TEXT"}], "rows": [["x"], ["y"]]},
    },
    "type": ["counting"],
    "label": ["2"],
    "sql": {"query": "SELECT COUNT(*) FROM t"},
}
OS_TASK = [
    {
        "description": "How many files are in /etc/skel?",
        "evaluation": {
            "check": [None, {"language": "python", "file": "check/integer-match.py"}],
            "example": {"code": "ls -A /etc/skel | wc -l"},
        },
        "labels": ["file"],
    }
]


def paper_layout(root: Path) -> Path:
    """The data laid out as README "Running the paper's setup" documents, with files the test
    writes in each benchmark's format; returns the recipe copied into root/recipes."""
    checkout = root / "AgentBench"
    for name in ("dev.jsonl", "standard.jsonl"):
        target = checkout / "data/dbbench" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(DB_RECORD) + "\n")
    for name in ("dev.json", "7/bootstrap.json"):
        target = checkout / "data/os_interaction/data" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(OS_TASK))
    (checkout / "data/os_interaction/scripts").mkdir(parents=True)
    evalplus = root / "data" / "evalplus"
    evalplus.mkdir(parents=True)
    write_plus(evalplus, name="MbppPlus.jsonl")
    write_plus(evalplus, name="HumanEvalPlus.jsonl", problems=HUMANEVAL_PROBLEMS)
    (root / "recipes").mkdir()
    recipe = root / "recipes" / "agentbench.yml"
    shutil.copy(RECIPES / "agentbench.yml", recipe)
    return recipe


def test_agentbench_recipe_is_the_papers_setup(tmp_path) -> None:
    recipe = load_recipe(paper_layout(tmp_path))
    assert recipe.task_names == ["mbpp", "db", "os"]
    assert [e.path for e in recipe.experts] == [
        "SakanaAI/Llama-3-8B-Instruct-Coding-Expert",
        "SakanaAI/Llama-3-8B-Instruct-DB-Expert",
        "SakanaAI/Llama-3-8B-Instruct-OS-Expert",
    ]
    assert recipe.search.generations == 1200 and recipe.bins == 15
    assert recipe.search.sampling.kind == "elite" and recipe.search.mutation.kind == "svd"
    assert recipe.backend.kind == "vllm"
    for task in recipe.tasks:
        assert task.split_options("opt")["max_new_tokens"] == 512
        assert task.split_options("opt")["protocol"] == "cycleqd"
    coding = recipe.tasks[0].split_options("opt")
    assert Path(coding["path"]).name == "MbppPlus.jsonl" and coding["tests"] == "base"
    general = {t.name: t for t in recipe.final.generalisation}
    assert list(general) == [
        "humaneval_plus",
        "gsm8k",
        "reasoning",
        "reading_comprehension",
        "common_sense",
    ]
    assert general["humaneval_plus"].evaluator == "mbpp"
    assert general["humaneval_plus"].split_options("test")["tests"] == "plus"
    assert {general[n].split_options("test")["task"] for n in list(general)[1:]} == {
        "gsm8k",
        "arc_challenge",
        "race",
        "hellaswag",
    }


def test_check_lists_every_dataset_of_the_paper_recipe(tmp_path, monkeypatch, capsys) -> None:
    recipe_path = paper_layout(tmp_path)
    # the models are Hub ids (unreachable in tests); this test is about the data
    monkeypatch.setattr(
        "mergekit_cycleqd.recipe.checks.check_models", lambda recipe, source: ({}, [])
    )
    assert cli.main(["check", str(recipe_path)]) == 0
    out = capsys.readouterr().out
    root = tmp_path.resolve()
    expected = {
        f"{root}/data/evalplus/MbppPlus.jsonl": "curl -L https://github.com/evalplus/mbppplus_release/releases/download/v0.1.0/MbppPlus.jsonl.gz | gunzip >",
        f"{root}/data/evalplus/HumanEvalPlus.jsonl": "curl -L https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus.jsonl.gz | gunzip >",
        f"{root}/AgentBench/data/dbbench/dev.jsonl": f"git clone https://github.com/THUDM/AgentBench {root}/AgentBench",
        f"{root}/AgentBench/data/dbbench/standard.jsonl": "git clone",
        f"{root}/AgentBench/data/os_interaction/data/dev.json": "git clone",
        f"{root}/AgentBench/data/os_interaction/data/7/bootstrap.json": "git clone",
        f"{root}/AgentBench/data/os_interaction/scripts": "git clone",
    }
    needs = out.split("\n- ")[1:]
    assert len(needs) == len(expected) + 4  # and the four lm-eval datasets
    for location, fetch in expected.items():
        (entry,) = [n for n in needs if f"at:    {location}\n" in n]
        assert "[found]" in entry and fetch in entry
    for task in ("gsm8k", "arc_challenge", "race", "hellaswag"):
        (entry,) = [n for n in needs if f"lm-eval task {task!r}" in n]
        assert "[fetched on first use]" in entry and f"get_task_dict([{task!r}]" in entry


def test_check_names_a_missing_dataset_and_its_fetch_command(tmp_path) -> None:
    recipe = load_recipe(paper_layout(tmp_path))
    missing = tmp_path / "data" / "evalplus" / "MbppPlus.jsonl"
    missing.unlink()
    (need,) = [n for n in dataset_needs(recipe) if n.location == str(missing.resolve())]
    assert need.present is False and "MISSING" in need.line()
    assert need.fetch.startswith(f"mkdir -p {missing.resolve().parent} && curl -L ")


def test_agentbench_recipe_without_data_names_the_missing_files(tmp_path) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(RECIPES / "agentbench.yml", {"agentbench": str(tmp_path / "nowhere")})
    message = str(info.value)
    assert "tasks[1].options/optimisation.path" in message and "nowhere" in message


def test_unknown_variable_is_reported(tmp_path) -> None:
    (tmp_path / "r.yml").write_text("name: x\nbase_model: ${nope}/base\ntasks: []\n")
    with pytest.raises(RecipeError, match=r"base_model: unknown variable \$\{nope\}"):
        load_recipe(tmp_path / "r.yml")
