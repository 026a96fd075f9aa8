"""Mutation operators: each equals its formula, rate 0 is a no-op, seeds are private."""

from __future__ import annotations

import pytest
import torch

from mergekit_cycleqd.errors import InvalidParameterError
from mergekit_cycleqd.merge.mutations import (
    check_mutation,
    mutate_gaussian,
    mutate_svd,
    mutate_svd_child,
    svd_coefficients,
    tensor_generator,
)

NAME = "model.layers.0.mlp.up_proj.weight"


def _factors():
    # tau = diag(2, 1) embedded in a 3x2 matrix: U = first two unit vectors, Vh = I.
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    s = torch.tensor([2.0, 1.0])
    vh = torch.eye(2)
    return u, s, vh


def test_svd_mutation_hand_checked():
    tensor = torch.full((3, 2), 0.5)
    w = svd_coefficients(NAME, 2, 0.1, seed=3)
    assert torch.all((w >= 0) & (w <= 0.1))
    result = mutate_svd(NAME, tensor, _factors(), rate=0.1, seed=3)
    expected = torch.tensor(
        [[0.5 + 2.0 * w[0].item(), 0.5], [0.5, 0.5 + 1.0 * w[1].item()], [0.5, 0.5]]
    )
    assert torch.allclose(result, expected, rtol=0, atol=1e-7)


def test_svd_coefficients_are_uniform_draws_of_the_named_generator():
    w = svd_coefficients(NAME, 5, 0.3, seed=11)
    reference = torch.rand(5, generator=tensor_generator(11, NAME)) * 0.3
    assert torch.equal(w, reference)


def test_svd_child_mutation_scales_own_singular_values():
    base = torch.zeros(2, 2)
    child = torch.diag(torch.tensor([3.0, 1.0]))
    w = svd_coefficients(NAME, 2, 0.2, seed=5)
    result = mutate_svd_child(NAME, child, base, rate=0.2, seed=5)
    expected = torch.diag(torch.tensor([3.0 * (1 + w[0].item()), 1.0 * (1 + w[1].item())]))
    assert torch.allclose(result, expected, rtol=0, atol=1e-6)


def test_gaussian_mutation_adds_scaled_private_noise():
    tensor = torch.ones(4, 3)
    result = mutate_gaussian(NAME, tensor, std=0.01, seed=9)
    noise = torch.randn((4, 3), generator=tensor_generator(9, NAME))
    assert torch.equal(result, tensor + noise * 0.01)


@pytest.mark.parametrize("kind", ["svd", "svd_child", "gaussian"])
def test_rate_zero_changes_nothing(kind):
    tensor = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    if kind == "svd":
        result = mutate_svd(NAME, tensor, _factors(), rate=0.0, seed=1)
    elif kind == "svd_child":
        result = mutate_svd_child(NAME, tensor, torch.zeros(3, 2), rate=0.0, seed=1)
    else:
        result = mutate_gaussian(NAME, tensor, std=0.0, seed=1)
    assert torch.equal(result, tensor)


@pytest.mark.parametrize("kind", ["svd", "svd_child", "gaussian"])
def test_same_seed_identical_other_seed_differs(kind):
    tensor = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))

    def run(seed: int) -> torch.Tensor:
        if kind == "svd":
            return mutate_svd(NAME, tensor, _factors(), rate=0.1, seed=seed)
        if kind == "svd_child":
            return mutate_svd_child(NAME, tensor, torch.zeros(3, 2), rate=0.1, seed=seed)
        return mutate_gaussian(NAME, tensor, std=0.01, seed=seed)

    torch.manual_seed(123)
    first = run(4)
    torch.manual_seed(999)  # global state must not matter
    assert torch.equal(first, run(4))
    assert not torch.equal(first, run(5))


def test_mutation_leaves_global_rng_alone():
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    mutate_gaussian(NAME, torch.ones(2, 2), std=0.1, seed=1)
    mutate_svd(NAME, torch.ones(3, 2), _factors(), rate=0.1, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_svd_kinds_skip_vectors_and_norms():
    vector = torch.ones(2)
    norm = torch.ones(3, 2)
    assert mutate_svd("model.layers.0.mlp.up_proj.bias", vector, _factors(), 0.1, 1) is vector
    assert mutate_svd("model.norm.weight2d", norm, _factors(), 0.1, 1) is norm
    assert mutate_svd_child("model.norm.weight2d", norm, torch.zeros(3, 2), 0.1, 1) is norm


def test_invalid_kind_and_rate_are_named():
    with pytest.raises(InvalidParameterError, match="'svdd' is not one of"):
        check_mutation("svdd", 0.1)
    with pytest.raises(InvalidParameterError, match="mutation_rate must be >= 0; got -0.5"):
        check_mutation("svd", -0.5)
