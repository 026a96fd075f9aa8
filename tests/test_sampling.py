"""Parent selection: elite-sampling probabilities against the formula, statistically."""

from __future__ import annotations

import numpy as np
import pytest

from mergekit_cycleqd.filing.archive import empty_archives
from mergekit_cycleqd.recipe import SamplingConfig
from mergekit_cycleqd.search.sampling import sample_parents, selection_probabilities

SCORES = {
    1: {"a": 0.9, "b": 0.1, "c": 0.2},
    2: {"a": 0.5, "b": 0.5, "c": 0.9},
    3: {"a": 0.3, "b": 0.9, "c": 0.5},
    4: {"a": 0.7, "b": 0.3, "c": 0.7},
}


def _archives():
    archives = empty_archives(["a", "b", "c"], 3, {t: (0.0, 1.0) for t in "abc"})
    for child_id, scores in SCORES.items():
        for archive in archives.values():
            archive.offer(child_id, scores)
    return archives


def _minmax(values):
    values = np.asarray(values, float)
    return (values - values.min()) / (values.max() - values.min())


def test_paper_elite_weights_match_formula() -> None:
    archive = _archives()["a"]
    members, p = selection_probabilities(archive, SamplingConfig())
    ids = [m.child_id for m in members]
    assert ids == [1, 2, 3, 4]
    q = _minmax([SCORES[i]["a"] for i in ids])
    b = _minmax([SCORES[i]["b"] for i in ids])
    c = _minmax([SCORES[i]["c"] for i in ids])
    w = (0.5 + 0.3 * q) * (0.5 + 0.3 * b) * (0.5 + 0.3 * c)
    np.testing.assert_allclose(p, w / w.sum(), rtol=1e-12)


def test_reference_variant_uses_bin_indices_and_alpha_high() -> None:
    archive = _archives()["a"]
    members, p = selection_probabilities(archive, SamplingConfig(variant="reference"))
    ids = [m.child_id for m in members]
    q = _minmax([SCORES[i]["a"] for i in ids])
    # 3 bins over [0, 1]: b 0.1->0, 0.5->1, 0.9->2, 0.3->0 ; c 0.2->0, 0.9->2, 0.5->1, 0.7->2
    b = _minmax([0, 1, 2, 0])
    c = _minmax([0, 2, 1, 2])
    w = (0.5 + 0.8 * q) * (0.5 + 0.8 * b) * (0.5 + 0.8 * c)
    np.testing.assert_allclose(p, w / w.sum(), rtol=1e-12)


def test_equal_values_normalise_to_one() -> None:
    archives = empty_archives(["a", "b"], 5, {"a": (0, 1), "b": (0, 1)})
    archives["a"].offer(1, {"a": 0.5, "b": 0.1})
    archives["a"].offer(2, {"a": 0.5, "b": 0.9})
    _, p = selection_probabilities(archives["a"], SamplingConfig())
    # quality equal -> factor 0.8 for both; b normalised 0 and 1 -> 0.5 and 0.8
    np.testing.assert_allclose(p, np.array([0.8 * 0.5, 0.8 * 0.8]) / (0.8 * 1.3))


def test_first_draw_frequencies_match_probabilities() -> None:
    archives = _archives()
    _, p = selection_probabilities(archives["a"], SamplingConfig())
    rng = np.random.default_rng(1)
    n = 20000
    firsts = np.array([sample_parents(archives, "a", SamplingConfig(), rng)[0] for _ in range(n)])
    counts = np.array([(firsts == i).sum() for i in [1, 2, 3, 4]])
    expected = p * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001


def test_random_sampling_is_uniform_and_parents_distinct() -> None:
    archives = _archives()
    _, p = selection_probabilities(archives["b"], SamplingConfig(kind="random"))
    np.testing.assert_allclose(p, 0.25)
    rng = np.random.default_rng(2)
    for _ in range(200):
        first, second = sample_parents(archives, "b", SamplingConfig(kind="random"), rng)
        assert first != second


def test_sparse_archive_borrows_from_other_archives() -> None:
    archives = empty_archives(["a", "b"], 2, {"a": (0, 1), "b": (0, 1)})
    archives["a"].offer(1, {"a": 0.9, "b": 0.1})
    archives["b"].offer(2, {"a": 0.1, "b": 0.95})
    assert sorted(sample_parents(archives, "a", SamplingConfig(), np.random.default_rng(0))) == [
        1,
        2,
    ]
    empty = empty_archives(["a", "b"], 2, {"a": (0, 1), "b": (0, 1)})
    empty["a"].offer(1, {"a": 0.9, "b": 0.1})
    with pytest.raises(RuntimeError, match="two distinct parents"):
        sample_parents(empty, "a", SamplingConfig(), np.random.default_rng(0))
