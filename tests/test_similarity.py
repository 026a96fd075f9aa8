"""Mergeability score: equals a hand computation and is 1 for a model with itself."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergekit_cycleqd.results.similarity import (
    format_table,
    mergeability,
    similarity_command,
    similarity_matrix,
)


def _save(folder, tensors, shards=1):
    folder.mkdir(parents=True)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
        return folder
    names = sorted(tensors)
    weight_map = {}
    for k in range(shards):
        part = {n: tensors[n] for n in names[k::shards]}
        filename = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(folder / filename))
        weight_map.update(dict.fromkeys(part, filename))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.fixture()
def hand_models(tmp_path):
    g = torch.Generator().manual_seed(7)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).float()

    base = {
        "layers.0.q.weight": rnd(4, 3),
        "layers.1.q.weight": rnd(5, 2),
        "layers.0.input_norm.weight": rnd(3, 3),  # 2-D but named "norm": ignored
        "layers.0.bias": rnd(4),  # 1-D: ignored
    }
    a = {k: v + rnd(*v.shape) for k, v in base.items()}
    b = {k: v + rnd(*v.shape) for k, v in base.items()}
    a["only_in_a.weight"] = rnd(2, 2)  # not shared: ignored
    return (
        _save(tmp_path / "base", base),
        _save(tmp_path / "a", a),
        _save(tmp_path / "b", b, shards=2),
        base,
        a,
        b,
    )


def _hand(base, a, b):
    cosines = []
    for name in ("layers.0.q.weight", "layers.1.q.weight"):
        w = base[name].double().numpy()
        sa = np.linalg.svd(a[name].double().numpy() - w, compute_uv=False)
        sb = np.linalg.svd(b[name].double().numpy() - w, compute_uv=False)
        cosines.append(sa @ sb / (np.linalg.norm(sa) * np.linalg.norm(sb)))
    return float(np.mean(cosines))


def test_mergeability_equals_hand_computation(hand_models):
    base_dir, a_dir, b_dir, base, a, b = hand_models
    expected = _hand(base, a, b)
    assert 0 < expected < 1
    assert mergeability(base_dir, a_dir, b_dir) == pytest.approx(expected, rel=1e-6)
    assert mergeability(base_dir, b_dir, a_dir) == pytest.approx(expected, rel=1e-6)


def test_mergeability_with_itself_is_one(hand_models):
    base_dir, a_dir, *_ = hand_models
    assert mergeability(base_dir, a_dir, a_dir) == pytest.approx(1.0, abs=1e-12)


def test_base_against_itself_is_undefined(hand_models):
    base_dir, a_dir, *_ = hand_models
    with pytest.raises(ValueError, match="identical to the base"):
        mergeability(base_dir, base_dir, a_dir)
    matrix = similarity_matrix(base_dir, [base_dir, a_dir])
    assert math.isnan(matrix[0][0]) and math.isnan(matrix[0][1])
    assert matrix[1][1] == pytest.approx(1.0)


def test_missing_folder_is_a_clear_error(tmp_path, hand_models):
    base_dir, a_dir, *_ = hand_models
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mergeability(base_dir, a_dir, tmp_path / "nope")


def test_pairwise_table_on_tiny_llama_family(tiny_family):
    base, experts = tiny_family
    matrix = similarity_matrix(base, experts)
    n = len(experts)
    for i in range(n):
        assert matrix[i][i] == pytest.approx(1.0, abs=1e-9)
        for j in range(n):
            assert matrix[i][j] == matrix[j][i]
            assert 0.5 < matrix[i][j] <= 1.0 + 1e-9
    assert matrix[0][1] == pytest.approx(mergeability(base, experts[0], experts[1]), abs=1e-12)
    text = similarity_command(str(base), [str(e) for e in experts])
    lines = text.splitlines()
    assert lines[0].startswith("Mergeability") and "base: base" in lines[0]
    assert lines[1].split() == ["expert0", "expert1", "expert2"]
    assert lines[2].split()[0] == "expert0" and lines[2].split()[1] == "1.0000"
    assert lines[2].split()[2] == f"{matrix[0][1]:.4f}"


def test_format_table_marks_undefined_cells():
    text = format_table(["x", "y"], [[1.0, math.nan], [math.nan, 0.25]])
    assert text.splitlines()[1].split() == ["x", "1.0000", "n/a"]
    assert text.splitlines()[2].split() == ["y", "n/a", "0.2500"]


def test_command_needs_two_models(hand_models):
    base_dir, a_dir, *_ = hand_models
    with pytest.raises(ValueError, match="at least two"):
        similarity_command(str(base_dir), [str(a_dir)])
