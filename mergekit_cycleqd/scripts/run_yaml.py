"""``mergekit-cycleqd-yaml``: ``mergekit-yaml`` with the CycleQD plugin loaded.

Plain ``mergekit-yaml`` never imports the plugin, so it cannot resolve the
``cycleqd`` method names. This command has exactly mergekit-yaml's arguments and
options and runs mergekit's own implementation; it only adds the plugin's methods
and a strict check of parameter names (``validate_config``, every method whose
parameters mergekit declares) before merging.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import yaml
from mergekit.options import PrettyPrintHelp
from mergekit.scripts import run_yaml as mergekit_run_yaml

import mergekit_cycleqd  # noqa: F401  (registers the merge methods)
from mergekit_cycleqd.errors import CycleQDError
from mergekit_cycleqd.merge.config_check import resolve_relative_paths, validate_config


def _run(**kwargs: Any) -> None:
    config_file = Path(kwargs["config_file"])
    with open(config_file, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if isinstance(data, dict):
        try:
            validate_config(data)
        except CycleQDError as error:
            raise click.ClickException(f"{config_file}: {error}") from None
        resolved = resolve_relative_paths(data, config_file.resolve().parent)
        if resolved != data:  # mergekit reads the file itself: hand it the resolved copy
            with tempfile.TemporaryDirectory() as folder:
                copy = Path(folder) / config_file.name
                copy.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
                mergekit_run_yaml.main.callback(**{**kwargs, "config_file": str(copy)})
            return
    mergekit_run_yaml.main.callback(**kwargs)


main = PrettyPrintHelp(
    name="mergekit-cycleqd-yaml",
    params=list(mergekit_run_yaml.main.params),
    callback=_run,
    help="Merge models from a YAML config (mergekit-yaml with the CycleQD methods).",
)

if __name__ == "__main__":
    sys.exit(main())
