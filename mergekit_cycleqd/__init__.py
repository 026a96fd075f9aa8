"""CycleQD (quality-diversity model merging) as a mergekit plugin.

Importing the package registers the ``cycleqd`` and ``cycleqd_genome`` merge
methods into mergekit's registry (once: re-imports and reloads are harmless),
because mergekit has no plugin discovery and resolves method names at planning,
execution and model-card time.
"""

from __future__ import annotations

from mergekit_cycleqd.merge.methods import register_methods

register_methods()

__all__ = ["register_methods"]
