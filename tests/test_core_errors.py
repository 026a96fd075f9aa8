"""Every input error of the plugin core is raised with a message naming its culprit."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from click.testing import CliRunner
from mergekit.merge_methods import merge_tensors
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from mergekit_cycleqd.errors import (
    ArchitectureMismatchError,
    GenomeError,
    InvalidParameterError,
    MissingTensorError,
    NonFiniteError,
    ShapeMismatchError,
    UnknownParameterError,
)
from mergekit_cycleqd.merge.breeder import Breeder
from mergekit_cycleqd.merge.config_check import check_config
from mergekit_cycleqd.merge.modelset import SafetensorsModel
from mergekit_cycleqd.merge.specs import CrossoverSpec, MutationSpec
from mergekit_cycleqd.scripts.run_yaml import main
from tests.tiny_models import make_family, make_tiny_llama

TENSOR = "model.layers.1.mlp.up_proj.weight"


def _edited_copy(source, target, edit):
    """Copy a model folder, then rewrite its tensors through ``edit(dict)``."""
    shutil.copytree(source, target)
    model = SafetensorsModel(target)
    tensors = {name: model.tensor(name).clone() for name in model.names}
    model.close()
    edit(tensors)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def _breeder(base, experts, tmp_path, **mutation):
    return Breeder(base, experts, CrossoverSpec(), MutationSpec(**mutation), tmp_path / "cache")


def test_architecture_mismatch_names_field_and_model(tiny_family, tmp_path):
    base, experts = tiny_family
    other = make_tiny_llama(tmp_path / "wide", hidden_size=48)
    with pytest.raises(
        ArchitectureMismatchError, match=r"wide differs from base .* 'hidden_size': 48 vs 32"
    ):
        _breeder(base, [experts[0], other], tmp_path)


def test_shape_mismatch_names_tensor_and_model(tiny_family, tmp_path):
    base, experts = tiny_family
    bad = _edited_copy(
        experts[0], tmp_path / "bad", lambda t: t.update({TENSOR: torch.zeros(48, 33)})
    )
    with pytest.raises(
        ShapeMismatchError,
        match=rf"tensor '{TENSOR}' has shape \[48, 33\] in expert .*bad but \[48, 32\] in base",
    ):
        _breeder(base, [bad], tmp_path)


def test_missing_tensor_names_tensor_and_model(tiny_family, tmp_path):
    base, experts = tiny_family
    bad = _edited_copy(experts[1], tmp_path / "holey", lambda t: t.pop(TENSOR))
    with pytest.raises(
        MissingTensorError, match=rf"tensor '{TENSOR}' of base .* is missing from expert .*holey"
    ):
        _breeder(base, [experts[0], bad], tmp_path)


def test_no_safetensors_is_explained(tmp_path, tiny_family):
    base, _ = tiny_family
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingTensorError, match="has no \\*.safetensors file"):
        _breeder(base, [empty], tmp_path)


def test_non_finite_results_name_the_tensor(tiny_family, tmp_path):
    base, experts = tiny_family

    def poison(tensors):
        tensors[TENSOR][0, 0] = float("nan")

    bad = _edited_copy(experts[0], tmp_path / "nan", poison)
    breeder = _breeder(base, [bad, experts[1]], tmp_path, rank=2)
    child = breeder.breed([breeder.expert(0), breeder.expert(1)], [1.0, 1.0], 1, 0)
    with pytest.raises(
        NonFiniteError, match=rf"genome materialisation: tensor '{TENSOR}' contains NaN or Inf"
    ):
        dict(breeder.weights(child).named_tensors())
    weights = _breeder(base, [bad, experts[1]], tmp_path, kind="gaussian")
    with pytest.raises(NonFiniteError, match=rf"cycleqd merge: tensor '{TENSOR}'"):
        weights.breed([weights.expert(0), weights.expert(1)], [1.0, 1.0], 1, 0)
    with pytest.raises(NonFiniteError, match="tensor 'x.weight' contains NaN or Inf"):
        merge_tensors(
            [torch.zeros(2, 2), torch.full((2, 2), float("inf"))],
            "cycleqd",
            base_index=0,
            name="x.weight",
        )


def test_unknown_parameters_are_refused():
    config = {
        "merge_method": "cycleqd",
        "base_model": "b",
        "models": [{"model": "e", "parameters": {"weight": 1.0}}],
        "parameters": {"mutation_rte": 0.2},
    }
    with pytest.raises(
        UnknownParameterError,
        match=r"parameters.mutation_rte: unknown parameter 'mutation_rte' for merge method cycleqd",
    ):
        check_config(config)
    config["parameters"] = {}
    config["models"][0]["parameters"] = {"wieght": 1.0}
    with pytest.raises(
        UnknownParameterError, match=r"models\[0\].parameters.wieght: unknown parameter 'wieght'"
    ):
        check_config(config)
    config["models"][0]["parameters"] = {"normalize": False}
    with pytest.raises(
        UnknownParameterError,
        match=r"models\[0\].parameters.normalize: 'normalize' is a global parameter",
    ):
        check_config(config)
    # mergekit's own methods are checked against the parameters they declare
    with pytest.raises(
        UnknownParameterError,
        match=r"parameters.densty: unknown parameter 'densty' for merge method task_arithmetic "
        r"\(known: .*\); did you mean 'density'\?",
    ):
        check_config({"merge_method": "task_arithmetic", "parameters": {"densty": 0.5}})
    with pytest.raises(
        UnknownParameterError,
        match=r"models\[0\].parameters.weigth: unknown parameter 'weigth' for merge method ties",
    ):
        check_config(
            {"merge_method": "ties", "models": [{"model": "e", "parameters": {"weigth": 1}}]}
        )
    check_config({"merge_method": "ties", "parameters": {"density": 0.5, "weight": 1.0}})
    with pytest.raises(InvalidParameterError, match=r"parameters.genome: cycleqd_genome needs"):
        check_config({"merge_method": "cycleqd_genome", "models": [{"model": "e"}]})


def test_invalid_values_in_yaml_are_refused():
    base = {"merge_method": "cycleqd", "base_model": "b", "models": [{"model": "e"}]}
    with pytest.raises(InvalidParameterError, match="parameters.mutation: 'svdd' is not one of"):
        check_config(dict(base, parameters={"mutation": "svdd"}))
    with pytest.raises(InvalidParameterError, match="parameters.svd_factors is required"):
        check_config(dict(base, parameters={"mutation": "svd"}))


def test_cli_reports_unknown_parameter_without_merging(tiny_family, tmp_path):
    base, experts = tiny_family
    config = {
        "merge_method": "cycleqd",
        "base_model": str(base),
        "models": [{"model": str(experts[0])}],
        "parameters": {"normalise": True},
    }
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, [str(path), str(tmp_path / "out"), "--no-copy-tokenizer"])
    assert result.exit_code != 0
    assert "parameters.normalise: unknown parameter 'normalise'" in result.output
    assert not (tmp_path / "out").exists()


def test_breeder_rejects_bad_specs(tiny_family, tmp_path):
    base, experts = tiny_family
    with pytest.raises(InvalidParameterError, match="crossover method 'tiez' is not a registered"):
        Breeder(base, experts, CrossoverSpec(method="tiez"), MutationSpec(), tmp_path)
    with pytest.raises(
        UnknownParameterError,
        match="crossover parameter 'densty' is not a parameter of merge method 'ties'",
    ):
        Breeder(
            base,
            experts,
            CrossoverSpec(method="ties", parameters={"densty": 0.5}),
            MutationSpec(),
            tmp_path,
        )
    with pytest.raises(ValueError, match="mutation 'svdd' is not one of none, svd, svd_child"):
        MutationSpec(kind="svdd")
    breeder = _breeder(base, experts, tmp_path, rank=2)
    with pytest.raises(
        InvalidParameterError, match="mutation_task 3 is out of range: there are 3 experts"
    ):
        breeder.breed([breeder.expert(0), breeder.expert(1)], [1.0, 1.0], 3, 0)
    with pytest.raises(GenomeError, match="crossover weights \\[1.0, -1.0\\] sum to zero"):
        breeder.breed([breeder.expert(0), breeder.expert(1)], [1.0, -1.0], 0, 0)


def test_genome_from_another_family_is_refused(tiny_family, tmp_path):
    base, experts = tiny_family
    other_base, other_experts = make_family(tmp_path / "other", n_experts=3, seed=7)
    stranger = _breeder(other_base, other_experts, tmp_path, rank=2)
    path = stranger.save(stranger.expert(0), tmp_path / "stranger")
    with pytest.raises(GenomeError, match="was bred from other base/expert models"):
        _breeder(base, experts, tmp_path, rank=2).load(path)
    (tmp_path / "junk.genome.safetensors").write_bytes(b"not a genome")
    with pytest.raises(GenomeError, match="junk.genome.safetensors is not a readable safetensors"):
        _breeder(base, experts, tmp_path, rank=2).load(tmp_path / "junk.genome.safetensors")


def test_copy_into_a_different_architecture_is_refused(tiny_family, tmp_path):
    base, experts = tiny_family
    breeder = _breeder(base, experts, tmp_path, rank=2)
    wide = LlamaForCausalLM.from_pretrained(make_tiny_llama(tmp_path / "wide", hidden_size=48))
    with pytest.raises(
        ShapeMismatchError,
        match="tensor '(lm_head|model.embed_tokens).weight': child has shape \\[64, 32\\], resident model has \\[64, 48\\]",
    ):
        breeder.weights(breeder.expert(0)).copy_into(wide)
