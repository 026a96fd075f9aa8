"""CycleQD (quality-diversity model merging) as a mergekit plugin.

Importing the package registers the ``cycleqd`` and ``cycleqd_genome`` merge
methods into mergekit's registry (once: re-imports and reloads are harmless),
because mergekit has no plugin discovery and resolves method names at planning,
execution and model-card time. ``validate_config(config)`` refuses misspelt merge
parameters, which mergekit itself ignores: call it before ``run_merge``.
"""

from __future__ import annotations

from mergekit_cycleqd.merge.config_check import validate_config
from mergekit_cycleqd.merge.methods import register_methods

register_methods()

__all__ = ["register_methods", "validate_config"]
