"""``python -m mergekit_cycleqd.toy OUT_DIR``: build the toy family and print its score table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mergekit_cycleqd.toy.build import build_toy_assets
from mergekit_cycleqd.toy.scoring import format_table, reference_models, score_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for the models and tasks (cached)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--split", choices=("opt", "val", "test"), default="test")
    parser.add_argument("--no-score", action="store_true", help="build only")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    assets = build_toy_assets(args.out_dir, seed=args.seed, force=args.force)
    print(f"toy family ready in {time.perf_counter() - started:.1f} s: {assets.base.parent}")
    if not args.no_score:
        started = time.perf_counter()
        table = score_table(assets, reference_models(assets), split=args.split)
        print(f"\n{args.split} split, {assets.metric}:\n{format_table(table)}")
        print(f"\nscored in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
