"""Every error the project raises on bad input or a failed outside resource, in one place.

Each names the file, field, model, tensor or value at fault and what to do, so that
a user can act without reading a traceback from deep inside torch. All derive from
``UserFacingError`` (the CLI prints its message, no traceback, and exits with
``exit_code``) and from the matching builtin (``ValueError`` for bad input,
``RuntimeError`` for a failed operation), so callers can catch either.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """An error whose message is the whole story: printed without a traceback."""

    exit_code = 1


# -- plugin core (merging) -------------------------------------------------------
class CycleQDError(UserFacingError, ValueError):
    """Base class of every error the plugin core raises on bad input."""


class ArchitectureMismatchError(CycleQDError):
    """Base and experts are not the same architecture."""


class ShapeMismatchError(CycleQDError):
    """A tensor has different shapes in two models (or in a child and its model)."""


class MissingTensorError(CycleQDError):
    """A tensor present in one model is absent from another (or from a genome/cache)."""


class NonFiniteError(CycleQDError):
    """A merge or materialisation produced NaN or Inf."""


class UnknownParameterError(CycleQDError):
    """A `cycleqd` YAML names a parameter the method does not have (mergekit ignores these)."""


class InvalidParameterError(CycleQDError):
    """A parameter has a value outside its domain (unknown mutation kind, negative rate...)."""


class GenomeError(CycleQDError):
    """A genome file is malformed or does not belong to the given base/experts."""


# -- recipe and command line ------------------------------------------------------
class RecipeError(UserFacingError, ValueError):
    """A recipe that cannot be run; the message names file, field and value."""

    exit_code = 2


class CommandError(UserFacingError, ValueError):
    """A command-line request that cannot be carried out (bad arguments, missing run)."""

    exit_code = 2


# -- runs --------------------------------------------------------------------------
class RunError(UserFacingError, RuntimeError):
    """The run cannot go on (every seed failed, a refused resume...)."""


class RunFolderError(UserFacingError, RuntimeError):
    """The run folder cannot be used as asked (exists, differs, missing)."""

    exit_code = 2


class LedgerError(UserFacingError, RuntimeError):
    """A run's ledger is empty, damaged or cannot be opened; the message says how to recover."""

    exit_code = 2


# -- publishing --------------------------------------------------------------------
class PublishError(UserFacingError, RuntimeError):
    """Publishing failed; the message says why and what to do, never the token."""


# -- evaluators --------------------------------------------------------------------
class SandboxError(UserFacingError, RuntimeError):
    """The sandbox could not be started or stopped responding."""


class TaskFileError(UserFacingError, ValueError):
    """A task file is malformed; the message names the file, the task and the field."""


class TaskServerError(UserFacingError, RuntimeError):
    """The task server could not be reached or answered something unexpected."""
