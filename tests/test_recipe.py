"""Recipe validation: every mistake names the file, the field path, the value and what is allowed."""

from __future__ import annotations

import pytest
import yaml

from mergekit_cycleqd.cli import main
from mergekit_cycleqd.recipe import RecipeError, load_recipe, parse_recipe
from tests.probe_recipe import probe_recipe, write_recipe


def _error(raw: dict) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(yaml.safe_dump(raw), "my.yml")
    return str(info.value)


@pytest.fixture
def raw(tiny_family):
    return probe_recipe(*tiny_family)


def test_valid_recipe_parses(raw) -> None:
    recipe = parse_recipe(yaml.safe_dump(raw), "my.yml")
    assert recipe.task_names == ["t0", "t1", "t2"]
    assert [e.task for e in recipe.experts] == ["t0", "t1", "t2"]
    assert recipe.search.sampling.kind == "elite" and recipe.search.mutation.rank == 4


def test_unknown_key_is_an_error(raw) -> None:
    raw["search"]["generation"] = 5
    assert "my.yml: search.generation: unknown field (got 5)" in _error(raw)


def test_bad_enum_names_allowed_values(raw) -> None:
    raw["search"]["sampling"] = {"kind": "elit"}
    message = _error(raw)
    assert "my.yml: search.sampling.kind:" in message
    assert "'elite' or 'random'" in message and "(got 'elit')" in message


def test_bad_number(raw) -> None:
    raw["search"]["mutation"]["rate"] = -1
    assert "search.mutation.rate: Input should be greater than or equal to 0 (got -1)" in _error(
        raw
    )


def test_evaluator_option_typo_names_task_and_split(raw) -> None:
    raw["tasks"][1]["options"]["referense"] = "x"
    message = _error(raw)
    assert "my.yml: tasks[1].options/optimisation.referense: unknown field (got 'x')" in message


def test_unknown_evaluator_lists_known_ones(raw) -> None:
    raw["tasks"][0]["evaluator"] = "mbbp"
    message = _error(raw)
    assert "tasks[0].evaluator: unknown evaluator 'mbbp'" in message and "mbpp" in message


def test_expert_task_mismatch(raw) -> None:
    raw["experts"][2]["task"] = "nope"
    assert "experts[2].task 'nope' is not a task" in _error(raw)
    raw["experts"] = raw["experts"][:2]
    assert "one expert per task is needed: 3 tasks" in _error(raw)


def test_range_and_bins(raw) -> None:
    raw["tasks"][0]["range"] = [0.5, 0.2]
    assert "tasks[0].range" in _error(raw) and "lo < hi" in _error(raw)
    raw["tasks"][0]["range"] = None
    raw["tasks"][0]["bins"] = 7
    assert "same number of bins" in _error(raw)


def test_not_a_mapping_and_bad_yaml() -> None:
    with pytest.raises(RecipeError, match="my.yml: a recipe is a YAML mapping"):
        parse_recipe("- a\n- b\n", "my.yml")
    with pytest.raises(RecipeError, match="my.yml: not valid YAML"):
        parse_recipe("a: [1, 2\n", "my.yml")


def _mergekit_config(tmp_path, base, models) -> None:
    config = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in models],
    }
    (tmp_path / "merge.yml").write_text(yaml.safe_dump(config))


def test_from_mergekit_config_maps_experts_by_name_not_order(tiny_family, tmp_path) -> None:
    base, experts = tiny_family
    named = {}
    for skill, expert in zip(["sort", "reverse", "double"], experts):
        named[skill] = tmp_path / f"llama-{skill}-expert"
        named[skill].symlink_to(expert)
    # the config lists sort, reverse, double; the recipe's tasks are reverse, sort, double
    _mergekit_config(tmp_path, base, [named["sort"], named["reverse"], named["double"]])
    raw = probe_recipe(base, experts)
    raw.pop("base_model")
    raw.pop("experts")
    for task, name in zip(raw["tasks"], ["reverse", "sort", "double"]):
        task["name"] = name
    raw["from_mergekit_config"] = "merge.yml"
    recipe = load_recipe(write_recipe(tmp_path / "r.yml", raw))
    assert recipe.base_model.path == str(base)
    assert [(e.task, e.path) for e in recipe.experts] == [
        ("reverse", str(named["reverse"])),
        ("sort", str(named["sort"])),
        ("double", str(named["double"])),
    ]


def test_from_mergekit_config_needs_a_mapping_when_names_do_not_tell(
    tiny_family, tmp_path, raw
) -> None:
    base, experts = tiny_family
    _mergekit_config(tmp_path, base, experts)  # expert0..2 name none of t0..t2
    raw.pop("base_model")
    raw.pop("experts")
    raw["from_mergekit_config"] = "merge.yml"
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path / "r.yml", raw))
    message = str(info.value)
    assert "r.yml: from_mergekit_config: cannot tell which model of" in message
    assert f"{experts[1]}: TASK" in message
    raw["from_mergekit_config"] = {
        "path": "merge.yml",
        "tasks": {str(experts[0]): "t2", str(experts[1]): "t0", str(experts[2]): "t1"},
    }
    recipe = load_recipe(write_recipe(tmp_path / "r.yml", raw))
    assert [e.path for e in recipe.experts] == [str(experts[1]), str(experts[2]), str(experts[0])]
    raw["from_mergekit_config"]["tasks"][str(experts[0])] = "t9"
    with pytest.raises(RecipeError, match=r"from_mergekit_config.tasks.* not a task \(got 't9'\)"):
        load_recipe(write_recipe(tmp_path / "r.yml", raw))


def test_check_command(tiny_family, tmp_path, raw, capsys) -> None:
    assert main(["check", str(write_recipe(tmp_path / "ok.yml", raw))]) == 0
    assert "OK — 3 tasks (t0, t1, t2), 3 experts" in capsys.readouterr().out
    raw["base_model"] = str(tmp_path / "missing")
    assert main(["check", str(write_recipe(tmp_path / "bad.yml", raw))]) == 2
    assert (
        f"bad.yml: base_model: model folder does not exist (got '{tmp_path / 'missing'}')"
        in capsys.readouterr().err
    )
    raw["search"]["sampling"] = {"alpha": 1}
    assert main(["check", str(write_recipe(tmp_path / "bad2.yml", raw))]) == 2
    assert "bad2.yml: search.sampling.alpha: unknown field (got 1)" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "nope.yml")]) == 2
    assert "nope.yml: recipe file not found" in capsys.readouterr().err


def test_backend_option_typo_is_caught_before_loading(raw) -> None:
    raw["backend"] = {"kind": "transformers", "options": {"batchsize": 8}}
    message = _error(raw)
    assert (
        "my.yml: backend.options.batchsize: unknown option for the transformers backend (got 8)"
        in message
    )
    assert "batch_size" in message
    raw["backend"] = {"kind": "none", "options": {"x": 1}}
    assert "backend kind 'none' takes no options" in _error(raw)
