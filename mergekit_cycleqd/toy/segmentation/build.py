"""Build (once) the segmentation toy: a tiny SegFormer base and one expert per domain.

The base learns to segment generic solid shapes; each expert is a short fine-tune of
it on one synthetic domain (``domains.py``) with replay of the base's data, so task
vectors stay small as real fine-tunes' do. Held-out optimisation and test images per
domain are written as ``.npz`` files for the ``iou`` evaluator. Everything is cached
under the output folder with a stamp; a later call with the same settings returns at once.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mergekit_cycleqd.toy.segmentation.domains import EXPERT_DOMAINS, draw
from mergekit_cycleqd.toy.training import deterministic_torch

STAMP = "segmentation-toy.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SegmentationToyConfig:
    """Sizes and budgets (defaults: about 70 s of CPU time on one core; ~50k parameters)."""

    image_size: int = 48
    hidden_sizes: tuple[int, int] = (24, 48)
    decoder_hidden_size: int = 48
    batch_size: int = 32
    base_steps: int = 600
    base_lr: float = 3e-3
    expert_steps: int = 300
    expert_lr: float = 1e-3
    expert_replay: float = 0.25
    n_opt: int = 64
    n_test: int = 128
    seed: int = 0


def new_segformer(config: SegmentationToyConfig):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    hf = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=list(config.hidden_sizes),
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=config.decoder_hidden_size,
        num_labels=2,
    )
    return SegformerForSemanticSegmentation(hf)


def upsampled_logits(model, images: torch.Tensor) -> torch.Tensor:
    """Per-pixel class logits at the input resolution (SegFormer predicts at 1/4)."""
    logits = model(pixel_values=images).logits
    return torch.nn.functional.interpolate(
        logits, size=images.shape[-2:], mode="bilinear", align_corners=False
    )


def _batches(domains: list[str], weights: list[float], config: SegmentationToyConfig, stream: int):
    """Endless mixed batches: each step's domain counts drawn from ``weights``."""
    rng = np.random.default_rng([config.seed, stream])
    step = 0
    while True:
        counts = rng.multinomial(config.batch_size, weights)
        parts = [
            draw(
                d,
                int(n),
                seed=config.seed * 1_000_003 + stream * 10_007 + step,
                size=config.image_size,
            )
            for d, n in zip(domains, counts)
            if n
        ]
        step += 1
        yield (
            torch.from_numpy(np.concatenate([p[0] for p in parts])),
            torch.from_numpy(np.concatenate([p[1] for p in parts])),
        )


def _train(model, batches, steps: int, lr: float, label: str) -> None:
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    bar = tqdm(range(steps), desc=label, leave=False)
    for _ in bar:
        images, masks = next(batches)
        loss = torch.nn.functional.cross_entropy(upsampled_logits(model, images), masks)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


def build_segmentation_assets(out_dir: Path, config: SegmentationToyConfig | None = None) -> Path:
    """Build (or reuse) base, experts and evaluation data under ``out_dir``."""
    config = config or SegmentationToyConfig()
    out_dir = Path(out_dir)
    # through JSON once, so tuples compare equal to the lists a stamp file holds
    wanted = json.loads(json.dumps({"version": FORMAT_VERSION, "config": asdict(config)}))
    stamp = out_dir / STAMP
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return out_dir
    final_dir, out_dir = out_dir, out_dir.with_name(out_dir.name + ".building")
    if out_dir.exists():  # a build that was interrupted
        shutil.rmtree(out_dir)
    data = out_dir / "data"
    data.mkdir(parents=True)
    for index, domain in enumerate(EXPERT_DOMAINS):
        for split, count in (("opt", config.n_opt), ("test", config.n_test)):
            seed = 7_000_000 + 1000 * index + (0 if split == "opt" else 500)
            images, masks = draw(domain, count, seed=seed, size=config.image_size)
            np.savez_compressed(data / f"{domain}.{split}.npz", images=images, masks=masks)
    with deterministic_torch(config.seed):
        base = new_segformer(config)
        _train(
            base, _batches(["generic"], [1.0], config, 0), config.base_steps, config.base_lr, "base"
        )
        base.save_pretrained(out_dir / "base")
    for index, domain in enumerate(tqdm(EXPERT_DOMAINS, desc="segmentation experts")):
        with deterministic_torch(config.seed + index + 1):
            expert = type(base).from_pretrained(out_dir / "base")
            mix = _batches(
                [domain, "generic"],
                [1 - config.expert_replay, config.expert_replay],
                config,
                index + 1,
            )
            _train(expert, mix, config.expert_steps, config.expert_lr, domain)
            expert.save_pretrained(out_dir / "experts" / domain)
    (out_dir / STAMP).write_text(json.dumps(wanted, indent=1))
    # appear whole or not at all: an interrupted build never leaves a half folder behind
    if final_dir.exists():
        shutil.rmtree(final_dir)
    out_dir.rename(final_dir)
    return final_dir
