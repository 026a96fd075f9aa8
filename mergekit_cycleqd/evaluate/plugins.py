"""Evaluators that live outside this project: entry points and import paths.

A recipe's ``evaluator:`` is resolved in this order:
1. a kind registered in this process (the built-in table, ``register_evaluator``);
2. an entry point of an installed distribution in the group ``mergekit_cycleqd.evaluators``
   (``pip install my-evals`` then makes ``evaluator: my_kind`` available);
3. an import path ``package.module:ClassName``.
Whatever is found must be an ``Evaluator`` subclass whose ``api_version`` this release
supports; anything else is refused with a message that says what was found instead.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points

from pydantic import BaseModel

ENTRY_POINT_GROUP = "mergekit_cycleqd.evaluators"
EVALUATORS_DISTRIBUTION = "mergekit-cycleqd-evaluators"
PROJECT_KINDS = frozenset(
    {"lm_eval", "mbpp", "dbbench", "os_interaction", "agentbench_server", "weight_probe", "iou"}
)
"""Kinds that ``mergekit-cycleqd-evaluators`` provides: named but not installed, they get
the install line instead of a close match."""
SUPPORTED_API_VERSIONS = frozenset({1})
"""Evaluator contract versions this release can drive (docs/evaluator-api.md)."""


def entry_point_kinds() -> dict[str, str]:
    """kind -> ``module:Class`` for every installed distribution's evaluator entry point."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _import_target(target: str, kind: str, where: str) -> object:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"evaluator {kind!r}: {where} {target!r} is not of the form 'package.module:ClassName'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"evaluator {kind!r}: cannot import module {module_name!r} ({where} {target!r}): "
            f"{error}. Is the package that provides it installed in this environment?"
        ) from None
    found = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(
                f"evaluator {kind!r}: module {module_name!r} has no attribute {attribute!r} "
                f"({where} {target!r})"
            )
        found = getattr(found, part)
    return found


def _checked(found: object, kind: str, target: str, base: type) -> type:
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ValueError(
            f"evaluator {kind!r}: {target!r} is {found!r}, not a subclass of "
            "mergekit_cycleqd.evaluate.Evaluator"
        )
    if not (isinstance(found.Options, type) and issubclass(found.Options, BaseModel)):
        raise ValueError(f"evaluator {kind!r}: {target}.Options must be a pydantic model")
    version = getattr(found, "api_version", None)
    if version not in SUPPORTED_API_VERSIONS:
        raise ValueError(
            f"evaluator {kind!r}: {target!r} implements evaluator API version {version!r}; "
            f"this mergekit-cycleqd supports {sorted(SUPPORTED_API_VERSIONS)}. "
            "Upgrade whichever of the two is older."
        )
    return found


def resolve_evaluator(kind: str, registry: dict[str, str], base: type) -> type:
    """The evaluator class for ``kind`` (see the module docstring for the order); it must
    subclass ``base`` (the ``Evaluator`` ABC, passed in so this module needs no import of it)."""
    if kind in registry:
        return _checked(
            _import_target(registry[kind], kind, "registered as"), kind, registry[kind], base
        )
    plugins = entry_point_kinds()
    if kind in plugins:
        where = f"entry point ({ENTRY_POINT_GROUP})"
        return _checked(_import_target(plugins[kind], kind, where), kind, plugins[kind], base)
    if ":" in kind:
        return _checked(_import_target(kind, kind, "import path"), kind, kind, base)
    if kind in PROJECT_KINDS:
        raise ValueError(
            f"evaluator {kind!r} is provided by the {EVALUATORS_DISTRIBUTION} distribution, "
            "which is not installed in this environment: run `pip install -e ./evaluators` "
            "from the mergekit-cycleqd checkout"
        )
    known = sorted(set(registry) | set(plugins))
    close = difflib.get_close_matches(kind, known, n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown evaluator {kind!r}{hint} Known evaluators: {', '.join(known)}; "
        "or name a class as 'package.module:ClassName'"
    )
