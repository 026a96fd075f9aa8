"""`mergekit-cycleqd check`: every mistake a run would hit later is caught before any
weight loads, and each message names the file, the field and the bad value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mergekit_cycleqd.cli import main
from mergekit_cycleqd.recipe import RecipeError, load_recipe
from mergekit_cycleqd.recipe.checks import check_recipe
from tests.probe_recipe import probe_recipe, write_recipe
from tests.tiny_models import make_tiny_llama

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{a}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 4}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
"""


@pytest.fixture
def raw(tiny_family):
    return probe_recipe(*tiny_family)


def _check(path: Path) -> str:
    with pytest.raises(RecipeError) as info:
        check_recipe(load_recipe(path), source=str(path))
    return str(info.value)


def _lm_eval_recipe(raw: dict, tmp_path: Path) -> dict:
    """Task t0 scored by a local lm-eval task (one YAML written here)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = folder / "sort.jsonl"
    data.write_text(json.dumps({"q": "cba", "a": "abc"}) + "\n")
    (folder / "toy_sort_opt.yaml").write_text(TASK_YAML.format(name="toy_sort_opt", data=data))
    raw["tasks"][0] = {
        "name": "t0",
        "evaluator": "lm_eval",
        "options": {"include_path": str(folder), "task": "toy_sort_opt", "metric": "exact_match"},
        "bins": 5,
    }
    return raw


def test_every_missing_model_is_reported_at_once(raw, tmp_path) -> None:
    good = raw["experts"][2]["path"]
    raw["experts"][0]["path"] = good[:-1] + "9"  # expert9: does not exist
    raw["experts"][2]["path"] = good.replace("expert2", "exprt2")
    message = _check(write_recipe(tmp_path / "r.yml", raw))
    assert f"r.yml: experts[0].path: model folder does not exist (got '{good[:-1]}9')" in message
    assert "experts[2].path: model folder does not exist" in message
    assert "(got '" + good.replace("expert2", "exprt2") + "'); did you mean 'expert2'?" in message


def test_expert_with_other_shapes_is_caught_from_config_json(raw, tmp_path) -> None:
    odd = make_tiny_llama(tmp_path / "wide", hidden_size=48)
    raw["experts"][1]["path"] = str(odd)
    message = _check(write_recipe(tmp_path / "r.yml", raw))
    assert f"r.yml: experts[1].path: {odd}/config.json: hidden_size is 48" in message
    assert "the base model's is 32" in message


def test_expert_with_other_tensor_shapes_is_caught_from_safetensors_headers(raw, tmp_path) -> None:
    expert = Path(raw["experts"][1]["path"])
    odd = tmp_path / "odd"
    make_tiny_llama(odd, intermediate_size=40)
    config = json.loads((expert / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps(config))  # the lie is only in the weights
    message = _check(
        write_recipe(
            tmp_path / "r.yml",
            raw
            | {
                "experts": [
                    raw["experts"][0],
                    {**raw["experts"][1], "path": str(odd)},
                    raw["experts"][2],
                ]
            },
        )
    )
    assert f"r.yml: experts[1].path: {odd}: tensor model.layers.0.mlp.down_proj.weight" in message
    assert "has shape [32, 40], the base model's is [32, 48]" in message


def test_lm_eval_task_typo(raw, tmp_path) -> None:
    raw = _lm_eval_recipe(raw, tmp_path)
    raw["tasks"][0]["options"]["task"] = "toy_sort_optt"
    message = _check(write_recipe(tmp_path / "r.yml", raw))
    assert "r.yml: tasks[0].options/optimisation.task: no lm-eval task of that name" in message
    assert "(got 'toy_sort_optt'); did you mean 'toy_sort_opt'?" in message


def test_lm_eval_metric_typo(raw, tmp_path) -> None:
    raw = _lm_eval_recipe(raw, tmp_path)
    raw["tasks"][0]["options"]["metric"] = "exact_mach"
    message = _check(write_recipe(tmp_path / "r.yml", raw))
    assert "r.yml: tasks[0].options/optimisation.metric:" in message
    assert "(got 'exact_mach'); it reports: exact_match; did you mean 'exact_match'?" in message


def test_lm_eval_names_that_exist_pass(raw, tmp_path) -> None:
    raw = _lm_eval_recipe(raw, tmp_path)
    report = check_recipe(load_recipe(write_recipe(tmp_path / "r.yml", raw)), source="r.yml")
    assert report.mapping[0].startswith("t0 <- expert 't0'")


def test_hub_ids_not_cached_are_all_named_with_the_fetch_command(raw, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    raw["base_model"] = "someorg/base-7b"
    raw["experts"][1]["path"] = "someorg/expert-db"
    message = _check(write_recipe(tmp_path / "r.yml", raw))
    assert "r.yml: base_model ('someorg/base-7b'), experts[1].path ('someorg/expert-db')" in message
    assert "not in the local Hugging Face cache" in message and "Hub cannot be reached" in message
    assert "huggingface-cli download someorg/base-7b" in message
    assert "huggingface-cli download someorg/expert-db" in message


def test_expert_typo_under_assets_is_caught(raw, tmp_path, monkeypatch) -> None:
    built = []
    monkeypatch.setattr(
        "mergekit_cycleqd.recipe.assets.build_assets", lambda config: built.append(config.dir)
    )
    assets = Path(raw["base_model"]).parent
    raw["assets"] = {"builder": "toy", "dir": str(assets)}
    raw["experts"][1]["path"] = "${assets}/expert11"
    message = _check(write_recipe(tmp_path / "r.yml", raw))
    assert built == [str(assets)]
    assert (
        f"r.yml: experts[1].path: model folder does not exist (got '{assets}/expert11')" in message
    )


def test_misspelt_key_gets_the_nearest_valid_one(raw, tmp_path) -> None:
    raw["serach"] = raw.pop("search")
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path / "r.yml", raw))
    message = str(info.value)
    assert (
        "r.yml: serach: unknown field (got a mapping with keys generations, seed, mutation)"
        in message
    )
    assert "did you mean 'search'?" in message
    raw["search"] = raw.pop("serach")
    raw["search"]["mutation"]["rnak"] = 4
    with pytest.raises(RecipeError, match=r"search\.mutation\.rnak: .* did you mean 'rank'\?"):
        load_recipe(write_recipe(tmp_path / "r.yml", raw))


def test_whole_recipe_errors_do_not_dump_the_recipe(raw, tmp_path) -> None:
    raw["tasks"] = raw["tasks"][:1]
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path / "r.yml", raw))
    assert str(info.value) == (
        f"{tmp_path / 'r.yml'}: CycleQD needs at least two tasks (one archive per task)"
    )


def test_a_run_that_fails_the_checks_leaves_no_run_folder(raw, tmp_path, capsys) -> None:
    raw["experts"][1]["path"] = str(tmp_path / "nowhere")
    recipe = write_recipe(tmp_path / "r.yml", raw)
    out = tmp_path / "run"
    assert main([str(recipe), "--out", str(out)]) == 2
    assert f"experts[1].path: model folder does not exist (got '{tmp_path / 'nowhere'}')" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_check_a_run_folder_checks_its_stored_recipe(raw, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    raw["experts"][2]["path"] = str(tmp_path / "moved")
    (run / "recipe.yml").write_text(yaml.safe_dump(raw))
    assert main(["check", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'recipe.yml'}: experts[2].path: model folder does not exist" in err


def test_lm_eval_task_whose_data_file_is_missing(raw, tmp_path) -> None:
    raw = _lm_eval_recipe(raw, tmp_path)
    (tmp_path / "tasks" / "sort.jsonl").unlink()
    message = _check(write_recipe(tmp_path / "r.yml", raw))
    assert (
        "r.yml: tasks[0].options/optimisation.task: task 'toy_sort_opt' reads data file" in message
    )
    assert f"'{tmp_path / 'tasks' / 'sort.jsonl'}', which does not exist" in message
