"""The ``mergekit-cycleqd`` command line.

mergekit-cycleqd RECIPE [--out DIR] [--resume] [--generations N] [--workers N] [--seed S]
mergekit-cycleqd check RECIPE
mergekit-cycleqd materialize RUN CHILD_ID OUT
mergekit-cycleqd report RUN
mergekit-cycleqd similarity BASE A B [...]
mergekit-cycleqd publish RUN --repo-id ORG/NAME [--final | --elite ID | --archive TASK --top K]
mergekit-cycleqd recover RUN
mergekit-cycleqd compare RECIPE... --seeds 0 1 2 --out DIR [--generations N]
"""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import signal
import sys
from pathlib import Path

from mergekit_cycleqd.errors import CommandError, UserFacingError
from mergekit_cycleqd.scripts.publish_cli import cmd_publish

SUBCOMMANDS = (
    "run",
    "check",
    "materialize",
    "report",
    "similarity",
    "publish",
    "recover",
    "compare",
)


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergekit-cycleqd",
        description=(
            "Evolve merged models from expert LLMs with CycleQD, then build the final "
            "aggregated model and a report. Other commands: "
            + ", ".join(SUBCOMMANDS[1:])
            + " (mergekit-cycleqd COMMAND --help)."
        ),
    )
    parser.add_argument("recipe", type=Path, help="the YAML recipe (e.g. recipes/toy.yml)")
    parser.add_argument(
        "--out", type=Path, help="run folder (default: the recipe's output.dir, else runs/<name>)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run already in the run folder where it stopped",
    )
    parser.add_argument(
        "--generations", type=int, help="total number of generations (overrides search.generations)"
    )
    parser.add_argument("--workers", type=int, help="jobs in flight (overrides workers.count)")
    parser.add_argument("--seed", type=int, help="random seed (overrides search.seed)")
    parser.add_argument(
        "--no-final", action="store_true", help="stop after the search (no final models or report)"
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: run generations whose child failed again (failed seeds always are)",
    )
    _add_var_option(parser)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and the libraries' own logs"
    )
    return parser


def _add_var_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a recipe variable used as ${NAME} (e.g. a data path); repeatable",
    )


def _load(recipe_path: Path, assignments: list[str] | None = None):
    from mergekit_cycleqd.recipe import load_recipe

    variables = {}
    for assignment in assignments or []:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise CommandError(f"--var expects NAME=VALUE, got {assignment!r}")
        variables[name] = value
    return load_recipe(recipe_path, variables)


def cmd_run(argv: list[str]) -> int:
    args = _run_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,  # libraries log to root too
        format="%(levelname)s %(name)s: %(message)s",
    )
    from mergekit_cycleqd.search.progress import quiet_libraries

    quiet_libraries(args.verbose)
    recipe = _load(args.recipe, args.var)
    if args.generations is not None:
        recipe.search.generations = args.generations
    if args.workers is not None:
        recipe.workers.count = args.workers
    if args.seed is not None:
        recipe.search.seed = args.seed
    run_dir = args.out or Path(recipe.output.dir or Path("runs") / recipe.name)
    from mergekit_cycleqd.recipe.checks import check_recipe
    from mergekit_cycleqd.search.loop import CycleQD
    from mergekit_cycleqd.search.start_workers import start_early

    early = start_early(recipe)  # local worker processes import while we check and build
    try:
        check_recipe(recipe, source=str(args.recipe))  # before any run folder exists
        run = CycleQD(
            recipe,
            run_dir,
            resume=args.resume,
            retry_failed=args.retry_failed,
            early_workers=early,
        )
    except BaseException:
        if early is not None:
            early.close()
        raise
    try:
        summary = run.run()
        print_summary(summary)
        if summary.interrupted:
            stop = signal.Signals(summary.stop_signal or signal.SIGINT)
            print(f"Stopped by {stop.name}; every finished child is filed in {run_dir}.")
            print(f"Resume with: mergekit-cycleqd {args.recipe} --out {run_dir} --resume")
            return 128 + stop.value
        if not args.no_final:
            from mergekit_cycleqd.results.final import finish_run

            results = finish_run(run)
            print(results.markdown())
            _report(run_dir)
    finally:
        run.close()
    return 0


def _report(run_dir: Path) -> None:
    try:
        from mergekit_cycleqd.results.report import write_report
    except ImportError:  # report module not installed in this build
        return
    html, markdown = write_report(Path(run_dir))
    print(f"Report: {html}\n        {markdown}")


def print_summary(summary) -> None:
    print(f"\nRun folder: {summary.run_dir}")
    print(f"Generations done: {summary.generations_done} ({summary.failed} failed)")
    for task, (child_id, quality) in summary.best.items():
        coverage = summary.coverage.get(task, 0.0)
        print(f"  {task}: best {quality:.3f} (model {child_id}), archive coverage {coverage:.1%}")


def cmd_check(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mergekit-cycleqd check",
        description=(
            "Check a recipe (or a run folder's stored recipe) without running: schema, "
            "evaluator options and data files, every model path or Hub id, that all models "
            "share architecture and shapes (config.json and safetensors headers, no weights "
            "loaded), every lm-eval task, metric and filter name."
        ),
    )
    parser.add_argument("recipe", type=Path, help="a recipe file, or a run folder")
    _add_var_option(parser)
    args = parser.parse_args(argv)
    path = args.recipe / "recipe.yml" if args.recipe.is_dir() else args.recipe
    recipe = _load(path, args.var)
    from mergekit_cycleqd.recipe.checks import check_recipe
    from mergekit_cycleqd.recipe.datasets import dataset_needs, describe

    print(describe(dataset_needs(recipe)))
    report = check_recipe(recipe, source=str(path))
    print(
        f"{path}: OK — {len(recipe.tasks)} tasks ({', '.join(recipe.task_names)}), "
        f"{len(recipe.experts)} experts, {recipe.search.generations} generations, "
        f"{recipe.search.kind} search, {recipe.search.mutation.kind} mutation, "
        f"{recipe.search.sampling.kind} sampling"
    )
    print("experts per task:\n  " + "\n  ".join(report.mapping))
    return 0


def cmd_materialize(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mergekit-cycleqd materialize",
        description="Write any model of a run as a full Hugging Face model folder.",
    )
    parser.add_argument("run", type=Path, help="the run folder")
    parser.add_argument("child_id", help="a model id from the ledger, or 'final'")
    parser.add_argument("out", type=Path, help="output folder (must not exist or be empty)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise CommandError(f"{args.out} exists and is not empty; choose a fresh output folder")
    from mergekit_cycleqd.results.run_models import materialize_child

    child_id = args.child_id if args.child_id == "final" else _int(args.child_id, "CHILD_ID")
    print(materialize_child(args.run, child_id, args.out))
    return 0


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CommandError(f"{what} must be an integer model id, got {text!r}") from None


def cmd_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mergekit-cycleqd report", description="(Re)write a run's HTML and Markdown report."
    )
    parser.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    _report(args.run)
    return 0


def cmd_similarity(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mergekit-cycleqd similarity",
        description=(
            "Mergeability of each pair of models: mean over weight matrices of the cosine "
            "between their task vectors' singular-value vectors (CycleQD paper)."
        ),
    )
    parser.add_argument("base", help="the base model the others were fine-tuned from")
    parser.add_argument("models", nargs="+", help="two or more fine-tuned models")
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        raise CommandError("similarity needs at least two models besides the base")
    from mergekit_cycleqd.results.similarity import similarity_command

    print(similarity_command(args.base, args.models))
    return 0


def cmd_recover(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mergekit-cycleqd recover",
        description=(
            "Replace a damaged or empty ledger by its last consistent backup "
            "(RUN/ledger.backup.sqlite); the damaged file is kept beside it. Continue the "
            "run with --resume afterwards."
        ),
    )
    parser.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    from mergekit_cycleqd.filing.recovery import recover_ledger
    from mergekit_cycleqd.filing.runfolder import RunFolder

    folder = RunFolder(args.run)
    lock = folder.lock()  # never under a running writer
    try:
        kept, count = recover_ledger(folder.ledger_path)
    finally:
        lock.release()
    print(
        f"{folder.ledger_path}: restored from the backup ({count} models filed); the damaged "
        f"ledger is kept as {kept.name}. Continue with: mergekit-cycleqd RECIPE --out "
        f"{args.run} --resume"
    )
    return 0


def _environment_error(error: OSError) -> str | None:
    """A one-line message for a failure of the machine (disk full, read-only)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the device writing {error.filename or 'the run folder'}. Free "
            f"space, then continue with --resume; everything filed so far is kept."
        )
    if error.errno in (errno.EROFS, errno.EACCES):
        return (
            f"cannot write {error.filename or 'the run folder'} ({error.strerror}); use a "
            f"writable run folder (a read-only run can still be read by report/materialize)."
        )
    return None


def cmd_compare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mergekit-cycleqd compare",
        description=(
            "Run every recipe for every seed (reusing finished runs, resuming unfinished "
            "ones) and write OUT/table.md and OUT/table.png: test scores as mean ± standard "
            "error over seeds, experts and fixed merges as reference rows."
        ),
    )
    parser.add_argument("recipes", type=Path, nargs="+", help="recipes (one table row each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True, help="folder for runs/ and the table")
    parser.add_argument("--generations", type=int, help="override every recipe's generations")
    _add_var_option(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    variables = dict(a.partition("=")[::2] for a in args.var)
    from mergekit_cycleqd.results.compare import compare

    args.out.mkdir(parents=True, exist_ok=True)
    print(
        compare(
            args.recipes, args.seeds, args.out, generations=args.generations, variables=variables
        )
    )
    print(f"Table: {args.out / 'table.md'}\nPlot:  {args.out / 'table.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "run": cmd_run,
        "check": cmd_check,
        "materialize": cmd_materialize,
        "report": cmd_report,
        "similarity": cmd_similarity,
        "publish": cmd_publish,
        "recover": cmd_recover,
        "compare": cmd_compare,
    }
    command = commands.get(argv[0]) if argv else None
    if command is not None:
        argv = argv[1:]
    else:
        command = cmd_run
    try:
        return command(argv)
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        message = _environment_error(error)
        if message is None and command is not cmd_similarity:
            raise
        print(f"error: {message or error}", file=sys.stderr)
        return 1
    except ValueError as error:
        if command is cmd_similarity:  # its inputs are plain model folders named by the user
            print(f"error: {error}", file=sys.stderr)
            return 1
        raise


def entry() -> int:
    """The console script: ``main``, then leave without a last garbage collection.

    At exit Python collects cycles over everything the run allocated (lm-eval's
    requests, sample logs, model objects): 1.5 s of the toy run's 90. Frozen objects
    are skipped; the process is ending, so nothing is lost (``main`` has closed and
    flushed everything it wrote). Tests call ``main`` itself.
    """
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(entry())
