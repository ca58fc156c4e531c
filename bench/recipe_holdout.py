"""How much of the recipe's validation gain was selection: the chosen recipe on validation cells
the selection never saw.

``bench/recipe_selection.py`` picks the ``project`` recipe greedily on a few validation cells
(toy categories x k = 1, 2 x shot seed 0). A maximum over many candidates is optimistic on the
cells it was taken on (the winner's curse), so its margin over patch-kNN there overstates what
new cells give. This script scores the chosen recipe and patch-kNN (and, with
``--with-paper``, the paper recipe) on other cells of the same **validation** split (other
shot seeds, other k), never on test:

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipe_holdout.py --shots 1 2 4 --seeds 1 2 --threads 1

and writes ``runs/bench/recipe_holdout.json``: one row per (cells group, candidate), with the
selection's own cells as the first group for comparison (read back from its cache).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import environment  # noqa: E402
from recipe_selection import base_config  # noqa: E402

from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.recipes import PROJECT_OVERRIDES, with_overrides  # noqa: E402
from vtfusion.validation import Candidate, compare  # noqa: E402
from vtfusion.viz import format_table  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "aupro", "selection_score")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="tiny", choices=("tiny", "pocket"))
    p.add_argument("--selection-shots", type=int, nargs="+", default=[1, 2])
    p.add_argument("--selection-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--with-paper", action="store_true", help="also score the paper recipe")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default="runs/selection/results", help="recipe_selection.py's cache")
    p.add_argument("--runs", default="runs/selection/runs")
    p.add_argument("--out", type=Path, default=Path("runs/bench/recipe_holdout.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = base_config(args.backbone, args.iterations, None)
    candidates = [Candidate("project recipe", with_overrides(base, PROJECT_OVERRIDES))]
    if args.with_paper:
        candidates.append(Candidate("paper recipe", base))
    groups = {"selection cells": (args.selection_shots, args.selection_seeds)}
    for k in args.shots:
        groups[f"k = {k}, seeds {' '.join(map(str, args.seeds))}"] = ([k], args.seeds)
    record = {"argv": sys.argv, "environment": environment(torch.device("cpu"), args.threads), "split": "val",
              "backbone": args.backbone, "iterations": args.iterations, "overrides": dict(PROJECT_OVERRIDES),
              "groups": []}
    start = time.perf_counter()
    for name, (shots, seeds) in groups.items():
        rows = compare(candidates, shots=tuple(shots), seeds=tuple(seeds), results_root=args.results,
                       runs_root=args.runs, progress=False)
        record["groups"].append({"group": name, "shots": shots, "seeds": seeds, "rows": rows})
        print(f"\n== {name} (validation split)")
        print(format_table([(r["name"], *(f"{r[m]:.3f}" for m in METRICS)) for r in rows], ("candidate", *METRICS)),
              flush=True)
    record["seconds"] = time.perf_counter() - start
    atomic_write_json(args.out, record)
    print(f"wrote {args.out} ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
