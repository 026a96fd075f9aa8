"""A toy CycleQD setting that runs on a CPU in minutes.

Three synthetic string skills (by default three letter ciphers: shift, atbash,
rot13), a tiny character-level Llama base that is middling at all of them, and
one expert fine-tuned from it per skill (good but imperfect on its own skill),
each scored by exact match through local lm-eval tasks. See ``build_toy_assets``.
"""

from mergekit_cycleqd.toy.build import ToyAssets, ToyConfig, build_toy_assets
from mergekit_cycleqd.toy.skills import SKILLS

__all__ = ["SKILLS", "ToyAssets", "ToyConfig", "build_toy_assets"]
