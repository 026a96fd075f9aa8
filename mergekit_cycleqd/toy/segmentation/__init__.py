"""The segmentation toy: tiny SegFormer experts on four synthetic domains (the paper's SAM study)."""

from mergekit_cycleqd.toy.segmentation.build import SegmentationToyConfig, build_segmentation_assets
from mergekit_cycleqd.toy.segmentation.domains import EXPERT_DOMAINS

__all__ = ["EXPERT_DOMAINS", "SegmentationToyConfig", "build_segmentation_assets"]
