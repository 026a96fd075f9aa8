"""``mergekit-cycleqd publish``: the command line of publishing a run's models to the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from mergekit_cycleqd.errors import CommandError


def cmd_publish(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mergekit-cycleqd publish",
        description="Materialise chosen models of a run and upload them to the Hugging Face Hub.",
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--repo-id", help="ORG/NAME on the Hub (several models: ORG/NAME-<model>)")
    parser.add_argument(
        "--org", help="without --repo-id: publish to ORG/<run name>-final, ORG/<run name>-elite-ID"
    )
    _add_hub_id_options(parser)
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--final", action="store_true", help="the aggregated final model")
    choice.add_argument("--elite", type=int, metavar="CHILD_ID", help="one model of the ledger")
    choice.add_argument("--archive", metavar="TASK", help="the top elites of a task's archive")
    parser.add_argument("--top", type=int, default=1, help="with --archive: how many (default 1)")
    parser.add_argument("--private", action="store_true", help="create private repositories")
    parser.add_argument("--dry-run", action="store_true", help="write the folders, upload nothing")
    parser.add_argument("--endpoint", help="Hub endpoint (default: the usual HF_ENDPOINT)")
    args = parser.parse_args(argv)
    from mergekit_cycleqd.results.publish import publish_run

    if args.final:
        selection = {"final": True}
    elif args.elite is not None:
        selection = {"elite": args.elite}
    else:
        selection = {"archive": args.archive, "top": args.top}
    result = publish_run(
        args.run,
        args.repo_id,
        selection,
        private=args.private,
        dry_run=args.dry_run,
        endpoint=args.endpoint,
        org=args.org,
        **_hub_id_arguments(args),
    )
    print(result)
    return 0


def _add_hub_id_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-hub-id", metavar="ID", help="Hub id of the run's base model")
    parser.add_argument(
        "--expert-hub-id",
        action="append",
        default=[],
        metavar="NAME=ID",
        help="Hub id of the expert NAME (repeatable); default: the recipe's hub_id, else the "
        "model folder's own config.json/README.md metadata",
    )
    parser.add_argument(
        "--no-hub-ids",
        action="store_true",
        help="models without a Hub id are named only locally on the card (no base_model link)",
    )


def _hub_id_arguments(args: argparse.Namespace) -> dict:
    experts = {}
    for assignment in args.expert_hub_id:
        name, sep, hub_id = assignment.partition("=")
        if not sep or not name or not hub_id:
            raise CommandError(f"--expert-hub-id expects NAME=ORG/MODEL, got {assignment!r}")
        experts[name] = hub_id
    return {
        "base_hub_id": args.base_hub_id,
        "expert_hub_ids": experts,
        "allow_missing_hub_ids": args.no_hub_ids,
    }
