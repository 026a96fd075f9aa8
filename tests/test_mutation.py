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


# sha256(b"3\x00model.layers.0.mlp.up_proj.weight"), first 8 bytes little-endian, top bit
# cleared: worked out with hashlib by hand, not with the module under test.
SEED_3_NAME = 6036054793650165166


def test_tensor_seed_hand_computed() -> None:
    from mergekit_cycleqd.merge.mutations.common import tensor_seed

    assert tensor_seed(3, NAME) == SEED_3_NAME


def test_svd_mutation_hand_computed_value() -> None:
    # torch's Mersenne Twister seeded with SEED_3_NAME draws 0.63368, 0.34669 first, so
    # w = 0.1 * those; the mutated diagonal is 0.5 + s_i * w_i with s = (2, 1).
    result = mutate_svd(NAME, torch.full((3, 2), 0.5), _factors(), rate=0.1, seed=3)
    assert result[0, 0].item() == pytest.approx(0.5 + 2.0 * 0.0633680, abs=1e-6)
    assert result[1, 1].item() == pytest.approx(0.5 + 1.0 * 0.0346688, abs=1e-6)
    assert result[0, 1].item() == 0.5 and result[2, 0].item() == 0.5


OTHER = "model.layers.0.mlp.down_proj.weight"


def test_different_tensor_names_get_different_noise() -> None:
    tensor = torch.zeros(64, 32)
    a = mutate_gaussian(NAME, tensor, std=1.0, seed=7)
    b = mutate_gaussian(OTHER, tensor, std=1.0, seed=7)
    # independent draws: not equal, not one a sign flip or shift of the other
    assert not torch.equal(a, b) and not torch.equal(a, -b)
    assert abs(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) < 0.2
    assert not torch.equal(svd_coefficients(NAME, 8, 0.1, 7), svd_coefficients(OTHER, 8, 0.1, 7))


def test_different_seeds_get_different_noise_for_every_tensor() -> None:
    tensor = torch.zeros(16, 8)
    for name in (NAME, OTHER, "model.embed_tokens.weight"):
        draws = [mutate_gaussian(name, tensor, std=1.0, seed=s) for s in range(5)]
        for i in range(5):
            for j in range(i + 1, 5):
                assert not torch.equal(draws[i], draws[j]), (name, i, j)
        assert len({tuple(svd_coefficients(name, 4, 0.1, s).tolist()) for s in range(5)}) == 5
