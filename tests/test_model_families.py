"""Beyond causal LMs: the genome/crossover/mutation path and in-place swaps on a vision model.

SegFormer is the case that breaks name-based swaps: transformers 5 renames its checkpoint
tensors on load, so the resident module and the safetensors files disagree on names.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from mergekit_cycleqd.evaluate.backends.transformers_backend import TransformersBackend
from mergekit_cycleqd.merge.breeder import Breeder
from mergekit_cycleqd.merge.specs import CrossoverSpec, MutationSpec

SEGFORMER = dict(
    num_channels=3,
    num_encoder_blocks=2,
    depths=[1, 1],
    sr_ratios=[2, 1],
    hidden_sizes=[16, 32],
    patch_sizes=[7, 3],
    strides=[4, 2],
    num_attention_heads=[1, 2],
    mlp_ratios=[2, 2],
    decoder_hidden_size=32,
    num_labels=2,
)


@pytest.fixture(scope="module")
def segformer_family(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("segformer")
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(SegformerConfig(**SEGFORMER)).save_pretrained(root / "base")
    experts = []
    for k in range(2):
        model = SegformerForSemanticSegmentation.from_pretrained(root / "base")
        generator = torch.Generator().manual_seed(k + 1)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
        model.save_pretrained(root / f"expert{k}")
        experts.append(root / f"expert{k}")
    return root / "base", experts


def test_a_segformer_child_swapped_in_place_equals_the_materialised_child(
    segformer_family, tmp_path
):
    base, experts = segformer_family
    breeder = Breeder(
        base, experts, CrossoverSpec(), MutationSpec(kind="svd", rate=0.1, rank=2), tmp_path / "svd"
    )
    child = breeder.breed([breeder.expert(0), breeder.expert(1)], [1.0, 0.5], 0, 7)
    backend = TransformersBackend(
        base, device="cpu", model_class="SegformerForSemanticSegmentation"
    )
    assert backend.tokenizer is None
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = backend.model(image).logits
    backend.load_child(breeder.weights(child))
    folder = breeder.materialize(child, tmp_path / "child")
    fresh = SegformerForSemanticSegmentation.from_pretrained(folder).eval()
    with torch.no_grad():
        swapped, expected = backend.model(image).logits, fresh(image).logits
    assert not torch.equal(before, swapped)  # the swap changed the model...
    assert torch.equal(swapped, expected)  # ...into exactly the materialised child
    with pytest.raises(ValueError, match="generate needs a text-generating model with a tokenizer"):
        backend.generate(["hello"], None)


def test_an_unknown_model_class_is_named(segformer_family):
    base, _ = segformer_family
    with pytest.raises(ValueError, match="model_class: 'SegformerForSegmentation' is not a trans"):
        TransformersBackend(base, device="cpu", model_class="SegformerForSegmentation")
