"""The console script and mergekit's YAML path agree bit for bit with the in-memory paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from mergekit.merge_methods import merge_state_dicts
from mergekit.scripts.run_yaml import main as mergekit_main

from mergekit_cycleqd.merge.breeder import Breeder
from mergekit_cycleqd.merge.materialize import state_dict
from mergekit_cycleqd.merge.modelset import SafetensorsModel
from mergekit_cycleqd.merge.specs import CrossoverSpec, MutationSpec
from mergekit_cycleqd.scripts.run_yaml import main

FLAGS = ["--no-copy-tokenizer", "--quiet"]


def _load(path) -> dict[str, torch.Tensor]:
    model = SafetensorsModel(path)
    return {name: model.tensor(name).clone() for name in model.names}


def _run(command, config: dict, out: Path, tmp_path: Path):
    config_path = tmp_path / f"{out.name}.yml"
    config_path.write_text(yaml.safe_dump(config))
    return CliRunner().invoke(command, [str(config_path), str(out), *FLAGS])


def _assert_identical(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def test_builtin_methods_behave_exactly_like_mergekit_yaml(tiny_family, tmp_path):
    base, experts = tiny_family
    config = {
        "merge_method": "linear",
        "models": [
            {"model": str(experts[0]), "parameters": {"weight": 0.3}},
            {"model": str(experts[1]), "parameters": {"weight": 0.7}},
        ],
        "dtype": "float32",
    }
    ours = _run(main, config, tmp_path / "ours", tmp_path)
    theirs = _run(mergekit_main, config, tmp_path / "theirs", tmp_path)
    assert ours.exit_code == 0 and theirs.exit_code == 0, (ours.output, theirs.output)
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == sorted(
        p.name for p in (tmp_path / "theirs").iterdir()
    )
    _assert_identical(_load(tmp_path / "ours"), _load(tmp_path / "theirs"))


def test_help_lists_mergekit_options():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--copy-tokenizer", "--out-shard-size", "--cuda", "--random-seed"):
        assert flag in result.output


@pytest.mark.parametrize("mutation", ["none", "svd", "gaussian", "svd_child"])
def test_cycleqd_yaml_equals_merge_state_dicts(tiny_family, tmp_path, mutation):
    base, experts = tiny_family
    breeder = Breeder(base, experts, CrossoverSpec(), MutationSpec(rank=3), tmp_path / "cache")
    globals_ = {
        "normalize": True,
        "mutation": mutation,
        "mutation_seed": 12345,
        "mutation_rate": 0.1,
        "gaussian_std": 0.001,
    }
    if mutation == "svd":
        globals_["svd_factors"] = str(breeder.svd.factors(2, 3).path)
    config = {
        "merge_method": "cycleqd",
        "base_model": str(base),
        "models": [
            {"model": str(experts[0]), "parameters": {"weight": 0.993}},
            {"model": str(experts[1]), "parameters": {"weight": 1.012}},
        ],
        "parameters": globals_,
        "dtype": "float32",
    }
    result = _run(main, config, tmp_path / "yaml", tmp_path)
    assert result.exit_code == 0, result.output
    inputs = {"base": _load(base), "e0": _load(experts[0]), "e1": _load(experts[1])}
    params = dict(globals_, weight={"e0": 0.993, "e1": 1.012})
    in_memory = merge_state_dicts(inputs, "cycleqd", parameters=params, base="base")
    _assert_identical(_load(tmp_path / "yaml"), in_memory)


@pytest.mark.parametrize("rank", [2, None])
def test_genome_yaml_reproduces_weights_bit_for_bit(tiny_family, tmp_path, rank):
    base, experts = tiny_family
    breeder = Breeder(
        base,
        experts,
        CrossoverSpec(),
        MutationSpec(kind="svd", rate=0.1, rank=rank),
        tmp_path / "c",
    )
    child = breeder.breed([breeder.expert(0), breeder.expert(1)], [1.0, 1.02], 0, 3)
    child = breeder.breed([child, breeder.expert(2)], [0.98, 1.0], 2, 4)
    path = breeder.save(child, tmp_path / "elite")
    config = breeder.mergekit_config(path)
    assert config["merge_method"] == "cycleqd_genome"
    assert config["parameters"]["genome"] == str(path)
    result = _run(main, config, tmp_path / "out", tmp_path)
    assert result.exit_code == 0, result.output
    _assert_identical(_load(tmp_path / "out"), state_dict(breeder.weights(child)))
    folder = breeder.materialize(child, tmp_path / "folder")
    assert (folder / "config.json").exists()
    _assert_identical(_load(folder), state_dict(breeder.weights(child)))


def _gaussian_child_by_hand(base: Path, experts: list[Path], weights, seed: int, std: float):
    """theta_b + sum_i w_i (theta_i - theta_b) / sum_i w_i + std * N(0, 1), the noise drawn
    from torch's generator seeded with sha256(f"{seed}\\0{name}")[:8] (little-endian, top
    bit cleared): the documented formulas, computed here from the model files."""
    import hashlib

    b, parents = _load(base), [_load(e) for e in experts]
    expected = {}
    for name, tensor in b.items():
        acc = sum(((p[name] - tensor) * w for p, w in zip(parents, weights)), torch.zeros(()))
        merged = tensor + acc / sum(weights)
        digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
        generator = torch.Generator().manual_seed(
            int.from_bytes(digest[:8], "little") & (2**63 - 1)
        )
        expected[name] = merged + torch.randn(tensor.shape, generator=generator) * std
    return expected


def test_weights_child_yaml_reproduces_weights(tiny_family, tmp_path):
    base, experts = tiny_family
    breeder = Breeder(
        base,
        experts,
        CrossoverSpec(),
        MutationSpec(kind="gaussian", gaussian_std=0.01),
        tmp_path / "c",
    )
    child = breeder.breed([breeder.expert(0), breeder.expert(1)], [1.0, 1.02], 0, 3)
    folder = breeder.save(child, tmp_path / "elite")
    result = _run(main, breeder.mergekit_config(folder), tmp_path / "out", tmp_path)
    assert result.exit_code == 0, result.output
    rebuilt = _load(tmp_path / "out")
    expected = _gaussian_child_by_hand(base, experts[:2], [1.0, 1.02], seed=3, std=0.01)
    assert set(rebuilt) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(rebuilt[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_genome_yaml_rejects_experts_in_the_wrong_order(tiny_family, tmp_path):
    base, experts = tiny_family
    breeder = Breeder(base, experts, CrossoverSpec(), MutationSpec(rank=2), tmp_path / "c")
    path = breeder.save(breeder.expert(0), tmp_path / "e0")
    config = breeder.mergekit_config(path)
    config["models"] = list(reversed(config["models"]))
    result = _run(main, config, tmp_path / "out", tmp_path)
    assert result.exit_code != 0
    assert "is not expert 0 of genome" in str(result.exception)


@pytest.mark.parametrize("rank", [2, None])
def test_genome_yaml_rebuilds_a_missing_svd_cache(tiny_family, tmp_path, rank):
    """A genome shipped without its SVD cache (e.g. from the Hub) still rebuilds exactly."""
    base, experts = tiny_family
    breeder = Breeder(
        base,
        experts,
        CrossoverSpec(),
        MutationSpec(kind="svd", rate=0.1, rank=rank),
        tmp_path / "c",
    )
    child = breeder.breed([breeder.expert(0), breeder.expert(1)], [1.0, 1.02], 1, 7)
    path = breeder.save(child, tmp_path / "elite")
    expected = state_dict(breeder.weights(child))
    config = breeder.mergekit_config(path)
    config["parameters"]["svd_cache"] = str(tmp_path / "fresh-cache")
    result = _run(main, config, tmp_path / "out", tmp_path)
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "fresh-cache").glob("svd-*.safetensors"))
    _assert_identical(_load(tmp_path / "out"), expected)


@pytest.mark.parametrize(
    "method, where, key",
    [("task_arithmetic", "parameters", "densty"), ("ties", "models[0].parameters", "weigth")],
)
def test_builtin_method_typos_are_refused_with_file_field_and_value(
    tiny_family, tmp_path, method, where, key
):
    base, experts = tiny_family
    model = {"model": str(experts[0]), "parameters": {"weight": 1.0}}
    config = {
        "merge_method": method,
        "base_model": str(base),
        "models": [model],
        "dtype": "float32",
    }
    if where == "parameters":
        config["parameters"] = {key: 0.5}
    else:
        model["parameters"] = {key: 1.0}
    result = _run(main, config, tmp_path / "out", tmp_path)
    assert result.exit_code != 0
    assert (
        f"{tmp_path / 'out.yml'}: {where}.{key}: unknown parameter {key!r} for merge method {method}"
        in (result.output)
    )
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
