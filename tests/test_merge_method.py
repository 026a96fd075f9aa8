"""The `cycleqd` merge method: registration, crossover formula, mutation dispatch."""

from __future__ import annotations

import importlib

import pytest
import torch
from mergekit import merge_methods
from mergekit.merge_methods import merge_state_dicts, merge_tensors

import mergekit_cycleqd
from mergekit_cycleqd.merge.methods import register_methods
from mergekit_cycleqd.merge.mutations import mutate_gaussian, mutate_svd, mutate_svd_child
from mergekit_cycleqd.merge.svd_cache import SVDFactors

NAME = "model.layers.1.self_attn.q_proj.weight"


def _tensors(n: int, shape=(5, 4)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(n)
    return [torch.randn(shape, generator=generator) for _ in range(n)]


def _merge(base, parents, weights, **parameters):
    ids = ["base"] + [f"p{i}" for i in range(len(parents))]
    parameters["weight"] = dict(zip(ids[1:], weights, strict=True))
    return merge_tensors(
        [base, *parents], "cycleqd", parameters=parameters, ids=ids, base_index=0, name=NAME
    )


def test_registered_once_and_reimport_is_harmless():
    assert merge_methods.get("cycleqd").spec.name == "cycleqd"
    assert merge_methods.get("cycleqd_genome").spec.name == "cycleqd_genome"
    register_methods()
    importlib.reload(mergekit_cycleqd)
    names = [m.spec.name for m in merge_methods.registered_methods()]
    assert names.count("cycleqd") == 1 and names.count("cycleqd_genome") == 1


@pytest.mark.parametrize("n_parents", [2, 3])
@pytest.mark.parametrize("normalize", [True, False])
def test_crossover_equals_formula_exactly(n_parents, normalize):
    base, *parents = _tensors(n_parents + 1)
    weights = [0.7, 1.3, 0.45][:n_parents]
    result = _merge(base, parents, weights, normalize=normalize)
    tau = sum((p - base) * w for p, w in zip(parents, weights, strict=True))
    expected = base + (tau / sum(weights) if normalize else tau)
    assert result.dtype == torch.float32
    assert torch.equal(result, expected)
    # and the formula itself, in float64
    tau64 = sum((p.double() - base.double()) * w for p, w in zip(parents, weights, strict=True))
    ref = base.double() + (tau64 / sum(weights) if normalize else tau64)
    assert torch.allclose(result.double(), ref, rtol=0, atol=1e-6)


def test_mutations_through_the_method_match_the_operators(tmp_path):
    base, p0, p1 = _tensors(3)
    crossed = _merge(base, [p0, p1], [1.0, 0.5])
    u, s, vh = torch.linalg.svd(p0 - base, full_matrices=False)
    factors_path = tmp_path / "f.safetensors"
    from safetensors.torch import save_file

    save_file(
        {f"{NAME}::U": u.contiguous(), f"{NAME}::S": s, f"{NAME}::Vh": vh.contiguous()},
        str(factors_path),
    )
    svd = _merge(
        base,
        [p0, p1],
        [1.0, 0.5],
        mutation="svd",
        mutation_rate=0.1,
        mutation_seed=3,
        svd_factors=str(factors_path),
    )
    factors = SVDFactors.load(factors_path).get(NAME)
    assert torch.equal(svd, mutate_svd(NAME, crossed, factors, 0.1, 3))
    child = _merge(
        base, [p0, p1], [1.0, 0.5], mutation="svd_child", mutation_rate=0.1, mutation_seed=3
    )
    assert torch.equal(child, mutate_svd_child(NAME, crossed, base, 0.1, 3))
    noisy = _merge(
        base, [p0, p1], [1.0, 0.5], mutation="gaussian", gaussian_std=0.01, mutation_seed=3
    )
    assert torch.equal(noisy, mutate_gaussian(NAME, crossed, 0.01, 3))
    unchanged = _merge(
        base, [p0, p1], [1.0, 0.5], mutation="svd", mutation_rate=0.0, svd_factors=str(factors_path)
    )
    assert torch.equal(unchanged, crossed)


def test_merge_is_independent_of_tensor_order_and_global_seed(tiny_family):
    from mergekit_cycleqd.merge.modelset import SafetensorsModel

    base_path, experts = tiny_family
    models = [SafetensorsModel(p) for p in (base_path, *experts[:2])]
    names = models[0].names
    params = {"weight": {"a": 1.0, "b": 0.8}, "mutation": "gaussian", "mutation_seed": 5}

    def run(order):
        sds = {key: {n: m.tensor(n) for n in order} for key, m in zip("xab", models, strict=True)}
        return merge_state_dicts(sds, "cycleqd", parameters=params, base="x")

    torch.manual_seed(1)
    forward = run(names)
    torch.manual_seed(2)
    backward = run(list(reversed(names)))
    assert all(torch.equal(forward[n], backward[n]) for n in names)


def test_bf16_inputs_are_merged_in_fp32_and_returned_in_input_dtype():
    base, p0, p1 = (t.to(torch.bfloat16) for t in _tensors(3))
    result = _merge(base, [p0, p1], [1.0, 1.0])
    expected = base.float() + ((p0.float() - base.float()) + (p1.float() - base.float())) / 2.0
    assert result.dtype == torch.bfloat16
    assert torch.equal(result, expected.to(torch.bfloat16))
