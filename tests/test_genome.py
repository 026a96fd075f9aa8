"""Genomes: exact against weight-space evolution, compact, and materialised three ways."""

from __future__ import annotations

import random
from unittest import mock

import pytest
import torch
from mergekit.merge_methods import merge_state_dicts
from transformers import LlamaForCausalLM

from mergekit_cycleqd.merge.breeder import (
    Breeder,
    CrossoverSpec,
    GenomeChild,
    MutationSpec,
    WeightsChild,
)
from mergekit_cycleqd.merge.genome import Genome
from mergekit_cycleqd.merge.materialize import state_dict
from mergekit_cycleqd.merge.modelset import SafetensorsModel
from tests.tiny_models import make_family


@pytest.fixture(scope="module")
def wide_family(tmp_path_factory):
    """hidden 64 so that genome headers do not dominate the size ratio."""
    root = tmp_path_factory.mktemp("wide")
    return make_family(root, n_experts=3, hidden_size=64, intermediate_size=128, vocab_size=256)


def _load(path) -> dict[str, torch.Tensor]:
    model = SafetensorsModel(path)
    return {name: model.tensor(name) for name in model.names}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("rank", [4, None])
def test_twenty_generations_genome_equals_weight_space(wide_family, tmp_path, rank):
    base, experts = wide_family
    breeder = Breeder(
        base, experts, CrossoverSpec(), MutationSpec(kind="svd", rate=0.1, rank=rank), tmp_path
    )
    assert breeder.stores_genomes
    base_sd = _load(base)
    genomes = [breeder.expert(k) for k in range(3)]
    weights = [_load(path) for path in experts]
    rng = random.Random(0)
    for generation in range(20):
        i, j = rng.sample(range(len(genomes)), 2)
        omega = [rng.gauss(1.0, 0.01), rng.gauss(1.0, 0.01)]
        task, seed = generation % 3, 1000 + generation
        genomes.append(breeder.breed([genomes[i], genomes[j]], omega, task, seed))
        params = {
            "weight": {"p0": omega[0], "p1": omega[1]},
            "mutation": "svd",
            "mutation_rate": 0.1,
            "mutation_seed": seed,
            "svd_factors": str(breeder.svd.factors(task, rank).path),
        }
        inputs = {"base": base_sd, "p0": weights[i], "p1": weights[j]}
        weights.append(merge_state_dicts(inputs, "cycleqd", parameters=params, base="base"))
    final = state_dict(breeder.weights(genomes[-1]))
    errors = {name: _relative_error(final[name], weights[-1][name]) for name in final}
    print(f"\nmax relative error genome vs weight space, rank {rank}: {max(errors.values()):.2e}")
    assert max(errors.values()) < 1e-5, max(errors.items(), key=lambda kv: kv[1])
    # the mutation really moved the child off the linear span of the experts
    assert any(bool(block.abs().sum() > 0) for block in genomes[-1].genome.d.values())

    path = breeder.save(genomes[-1], tmp_path / "elite")
    model_bytes = sum(t.numel() * t.element_size() for t in base_sd.values())
    ratio = path.stat().st_size / model_bytes
    print(
        f"\ngenome bytes / model bytes at rank {rank}: {path.stat().st_size} / "
        f"{model_bytes} = {ratio:.4%}"
    )
    if rank is not None:
        assert ratio < 0.01
    breeder.close()


def test_seed_genomes_materialise_bit_exactly(tiny_family, tmp_path):
    base, experts = tiny_family
    breeder = Breeder(base, experts, CrossoverSpec(), MutationSpec(rank=2), tmp_path)
    for k, path in enumerate(experts):
        got = state_dict(breeder.weights(breeder.expert(k)))
        assert all(torch.equal(got[n], t) for n, t in _load(path).items())
    got = state_dict(breeder.weights(breeder.base()))
    assert all(torch.equal(got[n], t) for n, t in _load(base).items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copy_into_writes_in_place(tiny_family, tmp_path, dtype):
    base, experts = tiny_family
    breeder = Breeder(base, experts, CrossoverSpec(), MutationSpec(rank=2), tmp_path)
    child = breeder.breed([breeder.expert(0), breeder.expert(2)], [1.0, 0.97], 1, 4)
    expected = state_dict(breeder.weights(child))
    model = LlamaForCausalLM.from_pretrained(base).to(dtype)
    pointers = {n: p.data_ptr() for n, p in model.state_dict(keep_vars=True).items()}
    breeder.weights(child).copy_into(model)
    resident = model.state_dict(keep_vars=True)
    assert {n: p.data_ptr() for n, p in resident.items()} == pointers
    for name, tensor in expected.items():
        assert torch.equal(resident[name].detach(), tensor.to(dtype)), name


def test_genome_save_load_roundtrip(tiny_family, tmp_path):
    base, experts = tiny_family
    breeder = Breeder(base, experts, CrossoverSpec(), MutationSpec(rank=3), tmp_path)
    child = breeder.breed([breeder.expert(0), breeder.expert(1)], [1.01, 0.99], 2, 17)
    path = breeder.save(child, tmp_path / "elites" / "c1")
    assert path.name == "c1.genome.safetensors"
    loaded = breeder.load(path)
    assert isinstance(loaded, GenomeChild)
    assert torch.equal(loaded.genome.a, child.genome.a)
    assert loaded.genome.factor_keys == child.genome.factor_keys and loaded.genome.rank == 3
    assert set(loaded.genome.d) == set(child.genome.d)
    assert all(torch.equal(loaded.genome.d[n], b) for n, b in child.genome.d.items())


def test_combine_is_unnormalised_task_arithmetic(tiny_family, tmp_path):
    base, experts = tiny_family
    breeder = Breeder(base, experts, CrossoverSpec(), MutationSpec(rank=2), tmp_path)
    combined = breeder.combine([breeder.expert(0), breeder.expert(1)], [0.3, 0.5])
    assert torch.equal(combined.genome.a, torch.tensor([0.3, 0.5, 0.0], dtype=torch.float64))
    got = state_dict(breeder.weights(combined))
    b, e0, e1 = _load(base), _load(experts[0]), _load(experts[1])
    for name, tensor in got.items():
        ref = (
            b[name].double()
            + 0.3 * (e0[name].double() - b[name].double())
            + 0.5 * (e1[name].double() - b[name].double())
        )
        assert torch.allclose(tensor.double(), ref, rtol=0, atol=1e-6), name


def test_genome_crossover_and_mutation_arithmetic(tiny_family, tmp_path):
    base, experts = tiny_family
    breeder = Breeder(base, experts, CrossoverSpec(), MutationSpec(rate=0.1, rank=2), tmp_path)
    g0, g1 = breeder.expert(0).genome, breeder.expert(1).genome
    crossed = Genome.weighted_sum([g0, g1], [1.0, 3.0], normalize=True)
    assert torch.equal(crossed.a, torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64))
    factors = breeder.svd.factors(2, 2)
    mutated = crossed.mutate_svd(2, factors, rate=0.1, seed=8)
    from mergekit_cycleqd.merge.mutations import svd_coefficients

    for name in factors.names():
        _, s, _ = factors.require(name)
        w = svd_coefficients(name, 2, 0.1, 8)
        expected = torch.zeros(3, 2, dtype=torch.float64)
        expected[2] = w.double() * s.double()
        assert torch.equal(mutated.d[name], expected)


def test_svd_cache_built_once_keyed_by_content_and_truncated(tiny_family, tmp_path):
    base, experts = tiny_family
    first = Breeder(base, experts, CrossoverSpec(), MutationSpec(rank=None), tmp_path)
    full = first.svd.factors(0, None)
    stamp = full.path.stat().st_mtime_ns
    again = Breeder(base, experts, CrossoverSpec(), MutationSpec(rank=None), tmp_path)
    assert again.svd.factors(0, None).path == full.path
    assert full.path.stat().st_mtime_ns == stamp  # reused, not rebuilt
    top = first.svd.factors(0, 3)
    assert top.path != full.path
    name = "model.layers.0.mlp.down_proj.weight"
    u, s, vh = top.require(name)
    assert u.shape == (32, 3) and s.shape == (3,) and vh.shape == (3, 48)
    assert torch.allclose(s, full.require(name)[1][:3], rtol=1e-4)
    tau = _load(experts[0])[name] - _load(base)[name]
    fu, fs, fvh = full.require(name)
    assert torch.allclose((fu * fs) @ fvh, tau, atol=1e-5)
    assert "model.norm.weight" not in full.names()
    assert first.svd.key(0, None) != first.svd.key(1, None)


def test_svd_cache_key_follows_content_not_path(tiny_family, tmp_path):
    import shutil

    base, experts = tiny_family
    copy = shutil.copytree(experts[0], tmp_path / "renamed")
    moved = Breeder(base, [copy, experts[1]], CrossoverSpec(), MutationSpec(rank=2), tmp_path)
    original = Breeder(base, experts[:2], CrossoverSpec(), MutationSpec(rank=2), tmp_path)
    assert moved.svd.key(0, 2) == original.svd.key(0, 2)
    from safetensors.torch import save_file

    tensors = _load(copy)
    tensors = {n: t.clone() for n, t in tensors.items()}
    tensors["model.norm.weight"] += 1.0
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    changed = Breeder(base, [copy, experts[1]], CrossoverSpec(), MutationSpec(rank=2), tmp_path)
    assert changed.svd.key(0, 2) != original.svd.key(0, 2)


@pytest.mark.parametrize(
    "crossover, mutation",
    [
        (CrossoverSpec(), MutationSpec(kind="svd_child", rate=0.1)),
        (CrossoverSpec(), MutationSpec(kind="gaussian", gaussian_std=0.001)),
        (
            CrossoverSpec(method="ties", parameters={"density": 0.5}),
            MutationSpec(kind="svd", rate=0.1, rank=2),
        ),
        (CrossoverSpec(method="dare_ties", parameters={"density": 0.5}), MutationSpec(kind="none")),
    ],
)
def test_non_linear_runs_store_weights_behind_the_same_api(
    tiny_family, tmp_path, crossover, mutation
):
    base, experts = tiny_family
    breeder = Breeder(base, experts, crossover, mutation, tmp_path)
    assert not breeder.stores_genomes
    parents = [breeder.expert(0), breeder.expert(1)]
    torch.manual_seed(0)
    before = torch.rand(2)
    torch.manual_seed(0)
    child = breeder.breed(parents, [1.0, 1.01], 2, 21)
    assert torch.equal(torch.rand(2), before)  # global RNG untouched
    assert isinstance(child, WeightsChild)
    again = state_dict(breeder.weights(breeder.breed(parents, [1.0, 1.01], 2, 21)))
    got = state_dict(breeder.weights(child))
    assert all(torch.equal(got[n], again[n]) for n in got)
    other = state_dict(breeder.weights(breeder.breed(parents, [1.0, 1.01], 2, 22)))
    if mutation.kind != "none" or crossover.method == "dare_ties":
        assert any(not torch.equal(got[n], other[n]) for n in got)
    folder = breeder.save(child, tmp_path / "elite")
    assert (folder / "config.json").exists()
    loaded = state_dict(breeder.weights(breeder.load(folder)))
    assert all(torch.equal(got[n], loaded[n]) for n in got)
    grandchild = breeder.breed([breeder.load(folder), parents[0]], [1.0, 1.0], 0, 3)
    assert set(state_dict(breeder.weights(grandchild))) == set(got)


def test_bf16_swaps_reuse_one_scratch_buffer_per_shape_across_children(tiny_family, tmp_path):
    """A bf16 resident model: every child goes through the same fp32 buffers, and each
    child still lands bit-exactly (the buffer holds nothing of the previous child)."""
    from mergekit_cycleqd.merge import materialize

    base, experts = tiny_family
    breeder = Breeder(base, experts, CrossoverSpec(), MutationSpec(rank=2), tmp_path)
    children = [
        breeder.breed([breeder.expert(0), breeder.expert(2)], [1.0, 0.97], 1, 4),
        breeder.breed([breeder.expert(1), breeder.expert(0)], [0.9, 1.05], 0, 5),
    ]
    model = LlamaForCausalLM.from_pretrained(base).to(torch.bfloat16)
    shapes = {tuple(p.shape) for p in model.state_dict().values() if p.is_floating_point()}
    buffers, allocations = None, []
    for child in children + children[:1]:
        with mock.patch.object(torch, "empty", wraps=torch.empty) as allocate:
            breeder.weights(child).copy_into(model)
        allocations.append(allocate.call_count)
        kept = {key: t.data_ptr() for key, t in materialize._SCRATCH[model].items()}
        assert buffers is None or kept == buffers
        buffers = kept
        expected = state_dict(breeder.weights(child))
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, expected[name].to(torch.bfloat16)), name
    assert {shape for shape, _ in buffers} == shapes
    assert allocations == [len(shapes), 0, 0]  # buffers made by the first child only
