"""``python -m mergekit_cycleqd.search.process_worker IN_FD OUT_FD``: one local worker.

Reads its setup (recipe text, run folder, base, experts) and then jobs from
``IN_FD``; answers ``("ready", pid)`` once its model is resident, then
``("result", JobResult)`` per job, or ``("error", message)`` when it cannot go on
(its setup failed, the disk is full). End-of-file on ``IN_FD`` (the driver is
gone or done) ends it.
"""

from __future__ import annotations

import logging
import os
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from mergekit_cycleqd.errors import UserFacingError
from mergekit_cycleqd.process_lifetime import die_with_parent


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # no orphan keeps a model (or a GPU) after its driver is gone
    in_fd, out_fd = (int(a) for a in (sys.argv[1:] if argv is None else argv))
    inbox, outbox = Connection(in_fd, writable=False), Connection(out_fd, readable=False)
    logging.basicConfig(level=logging.WARNING)
    try:
        import torch  # noqa: F401  (imported while the driver still prepares the run)
        import transformers  # noqa: F401

        from mergekit_cycleqd.merge.methods import register_methods
        from mergekit_cycleqd.recipe import parse_recipe
        from mergekit_cycleqd.search.worker import Worker

        register_methods()  # mergekit resolves the plugin's method names in this process too
        recipe_text, run_dir, base, experts = inbox.recv()
        recipe = parse_recipe(recipe_text, "recipe.yml", Path(run_dir))
        worker = Worker(recipe, Path(run_dir), Path(base), [Path(e) for e in experts])
    except EOFError:
        return 0
    except (UserFacingError, OSError) as error:
        outbox.send(("error", str(error)))
        return 1
    except Exception as error:  # e.g. an evaluator that cannot start: say what, not where
        outbox.send(("error", f"its setup failed: {type(error).__name__}: {error}"))
        return 1
    outbox.send(("ready", os.getpid()))
    while True:
        try:
            job = inbox.recv()
        except EOFError:
            return 0
        try:
            result = worker.run(job)
        except UserFacingError as error:  # e.g. a full disk: the run stops, --resume redoes it
            outbox.send(("error", str(error)))
            return 1
        try:
            outbox.send(("result", result))
        except (BrokenPipeError, OSError):
            return 0


if __name__ == "__main__":
    sys.exit(main())
