"""The ``vtfusion`` command line.

Examples::

    vtfusion data toy                      # generate the toy dataset (data/toy)
    vtfusion data shots --dataset mvtec    # write data/shots/mvtec/<category>/k<k>_seed<s>.json
    vtfusion data download mvtec --root data/mvtec_ad
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vtfusion import __version__


def _cmd_download(args: argparse.Namespace) -> int:
    from vtfusion.data.download import DownloadError, download_dataset
    from vtfusion.data.datasets import dataset_root

    root = dataset_root(args.name, args.root)
    try:
        out = download_dataset(args.name, root, force=args.force, progress=not args.quiet)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.name} is ready in {out}")
    return 0


def _cmd_toy(args: argparse.Namespace) -> int:
    from vtfusion.data import toy

    argv = ["--seed", str(args.seed)]
    if args.root:
        argv += ["--root", str(args.root)]
    argv.append("--force" if args.force else "--ensure")
    return toy.main(argv)


def _cmd_shots(args: argparse.Namespace) -> int:
    from vtfusion.data.shots import SHOT_KS, SHOT_SEEDS, generate_shot_lists

    datasets = ["mvtec", "visa", "toy", "real_ad"] if args.all else [args.dataset]
    if not args.all and args.dataset is None:
        print("error: give --dataset NAME or --all", file=sys.stderr)
        return 2
    for name in datasets:
        start = time.perf_counter()
        try:
            written = generate_shot_lists(name, root=args.root, ks=args.k or SHOT_KS, seeds=args.seeds or SHOT_SEEDS,
                                          base=args.out, validate_root=args.validate)
        except FileNotFoundError as err:
            if args.all:
                print(f"skipped {name}: {err}")
                continue
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{name}: wrote {len(written)} shot lists in {time.perf_counter() - start:.2f}s"
              + (f" under {Path(written[0]).parents[2]}" if written else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vtfusion",
        description="VTFusion: vision-text fusion for few-shot industrial anomaly detection.",
        epilog="Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"vtfusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="get, generate and split datasets",
                          description="Get, generate and split datasets.")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = dsub.add_parser("download", help="download and extract MVTec AD or VisA",
                        description="Download (resumable, checksummed) and safely extract a benchmark.")
    p.add_argument("name", choices=["mvtec", "visa"], help="which dataset")
    p.add_argument("--root", type=Path, default=None,
                   help="target folder (default: data/mvtec_ad or data/visa, or $VTFUSION_<NAME>_ROOT)")
    p.add_argument("--force", action="store_true", help="extract again even if present (an archive already matching its published checksum is reused)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)

    p = dsub.add_parser("toy", help="generate the toy industrial dataset",
                        description="Generate the procedurally drawn toy dataset in MVTec layout.")
    p.add_argument("--root", type=Path, default=None, help="target folder (default: data/toy)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--force", action="store_true", help="regenerate even if an identical copy exists")
    p.set_defaults(func=_cmd_toy)

    p = dsub.add_parser("shots", help="write the k-shot lists (data/shots/...)",
                        description="Write k-shot lists for every category, k and seed. MVTec AD and VisA "
                                    "lists are built from the layout facts in ../shared/datasets, without the archives.")
    p.add_argument("--dataset", choices=["mvtec", "visa", "toy", "real_ad", "folder"], default=None)
    p.add_argument("--all", action="store_true", help="every known dataset")
    p.add_argument("--root", type=Path, default=None, help="dataset folder (needed for --dataset folder)")
    p.add_argument("--k", type=int, nargs="+", default=None, help="shot counts (default 1 2 4 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    p.add_argument("--out", type=Path, default=None, help="output base folder (default data/shots)")
    p.add_argument("--validate", type=Path, default=None, metavar="ROOT",
                   help="check every listed file exists in this extracted copy of the dataset")
    p.set_defaults(func=_cmd_shots)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
