"""Model files are as readable as any other output: the umask decides, not safetensors."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from mergekit_cycleqd.merge.weights import save_tensors


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_saved_tensors_follow_the_umask(tmp_path, umask, expected) -> None:
    previous = os.umask(umask)
    try:
        save_tensors(
            {"w": torch.zeros(2)}, tmp_path / "model.safetensors", metadata={"format": "pt"}
        )
        (tmp_path / "config.json").write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == expected


def test_a_materialised_model_is_readable(tiny_family, tmp_path) -> None:
    from mergekit_cycleqd.merge.breeder import Breeder
    from mergekit_cycleqd.merge.specs import CrossoverSpec, MutationSpec

    base, experts = tiny_family
    breeder = Breeder(base, experts, CrossoverSpec(), MutationSpec(kind="none"), tmp_path / "svd")
    previous = os.umask(0o022)
    try:
        out = breeder.materialize(breeder.expert(0), tmp_path / "out")
    finally:
        os.umask(previous)
        breeder.close()
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
