"""``mergekit-cycleqd-yaml``: ``mergekit-yaml`` with the CycleQD plugin loaded.

Plain ``mergekit-yaml`` never imports the plugin, so it cannot resolve the
``cycleqd`` method names. This command has exactly mergekit-yaml's arguments and
options and runs mergekit's own implementation; it only adds the plugin's methods
and a strict check of parameter names (``validate_config``, every method whose
parameters mergekit declares) before merging.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import yaml
from mergekit.options import PrettyPrintHelp
from mergekit.scripts import run_yaml as mergekit_run_yaml

import mergekit_cycleqd  # noqa: F401  (registers the merge methods)
from mergekit_cycleqd.errors import CycleQDError
from mergekit_cycleqd.merge.config_check import validate_config


def _run(**kwargs: Any) -> None:
    with open(kwargs["config_file"], encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if isinstance(data, dict):
        try:
            validate_config(data)
        except CycleQDError as error:
            raise click.ClickException(f"{kwargs['config_file']}: {error}") from None
    mergekit_run_yaml.main.callback(**kwargs)


main = PrettyPrintHelp(
    name="mergekit-cycleqd-yaml",
    params=list(mergekit_run_yaml.main.params),
    callback=_run,
    help="Merge models from a YAML config (mergekit-yaml with the CycleQD methods).",
)

if __name__ == "__main__":
    sys.exit(main())
