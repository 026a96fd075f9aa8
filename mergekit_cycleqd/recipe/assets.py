"""Building the assets a recipe asks for before it runs (the toy experts)."""

from __future__ import annotations

from pathlib import Path

from mergekit_cycleqd.recipe.schema import AssetsConfig


def build_assets(config: AssetsConfig) -> Path:
    """Build (or reuse) the recipe's assets; returns their folder."""
    folder = Path(config.dir).expanduser().absolute()
    if config.builder == "toy":
        from mergekit_cycleqd.toy import build_toy_assets
        from mergekit_cycleqd.toy.build import ToyConfig

        # quick: small splits, for tests and smoke runs
        quick = ToyConfig(n_opt=12, n_val=12, n_test=24)  # the default training: it must learn
        build_toy_assets(folder, config=quick if config.quick else None)
    elif config.builder == "segmentation":
        from mergekit_cycleqd.toy.segmentation import (
            SegmentationToyConfig,
            build_segmentation_assets,
        )

        quick = SegmentationToyConfig(base_steps=150, expert_steps=60, n_opt=16, n_test=24)
        build_segmentation_assets(folder, quick if config.quick else None)
    return folder
