"""The recipe's last questions asked again on the whole validation grid, cell by cell.

``bench/recipe_selection.py`` chose the ``project`` recipe on 8 validation cells (k = 1, 2,
shot seed 0), and ``bench/recipe_holdout.py`` showed that most of its lead over patch-kNN
there was the winner's curse. This script scores a few candidates on every validation cell
the test benchmark has a twin of (toy categories x k = 1, 2, 4, 8 x shot seeds 0-2, the
``val`` split, never ``test``) and compares them **paired**, cell by cell
(:func:`vtfusion.stats.paired_difference`), with the patch-kNN reference and with the
current recipe:

* ``project``: the recipe as it is;
* ``w = 0.65``: more weight on the squashed raw-token map in the late mean;
* ``leave-one-out``: each training normal compared with a bank without itself (k >= 2),
  so that the segmentation network sees the distances an unseen normal gets.

    .venv/bin/python bench/recipe_recheck.py

writes ``runs/bench/recipe_recheck.json``. A candidate would replace the recipe only if
its selection score beat the recipe's by the selection's margin (0.005) **and** no metric's
paired interval lay below zero.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import LARGE_VAL_ROOT, environment, large_val_root  # noqa: E402
from recipe_selection import base_config  # noqa: E402

from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.recipes import PROJECT_OVERRIDES, with_overrides  # noqa: E402
from vtfusion.stats import METRICS, paired_difference  # noqa: E402
from vtfusion.validation import Candidate, compare  # noqa: E402
from vtfusion.viz import format_difference, format_table  # noqa: E402

#: label -> overrides on top of the project recipe; the first is the recipe itself.
CANDIDATES: dict[str, dict] = {
    "project": {},
    "w = 0.65": {"model.late_mean_weight": 0.65},
    "leave-one-out": {"train.leave_one_out": True},
}


def paired_rows(rows: list[dict], reference: str) -> list[dict]:
    """Every row but ``reference`` minus ``reference``, per metric (:func:`paired_difference`)."""
    ref = next(r for r in rows if r["name"] == reference)
    return [{"name": r["name"], "reference": reference,
             **{m: paired_difference(r["per_cell"], ref["per_cell"], m) for m in METRICS}}
            for r in rows if r is not ref]


def paired_text(diffs: list[dict]) -> str:
    return format_table([(d["name"], *(format_difference(d[m]) for m in METRICS)) for d in diffs],
                        (f"minus {diffs[0]['reference']}", *METRICS))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny", choices=("tiny", "pocket"))
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--margin", type=float, default=0.005)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", default="runs/selection/results")
    p.add_argument("--runs", default="runs/selection/runs")
    p.add_argument("--large-val", action="store_true",
                   help=f"score on the larger validation split of benchutil.LARGE_VAL (in {LARGE_VAL_ROOT}) "
                        "instead of the toy split's own")
    p.add_argument("--out", type=Path, default=Path("runs/bench/recipe_recheck.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = with_overrides(base_config(args.backbone, args.iterations, None), PROJECT_OVERRIDES)
    data_root = None
    if args.large_val:
        # The store keys each split by its images (storage_name): the larger split's results
        # go under toy-<tag>, and the trained models, whose train split is the same in both
        # roots, are shared.
        data_root = str(large_val_root())
    names = ["project", *[c for c in args.candidates if c != "project"]]
    cands = [Candidate(n, with_overrides(base, CANDIDATES[n]), note=str(CANDIDATES[n])) for n in names]
    start = time.perf_counter()
    rows = compare(cands, shots=tuple(args.shots), seeds=tuple(args.seeds), results_root=args.results,
                   runs_root=args.runs, data_root=data_root, progress=False)
    vs_knn = paired_rows(rows, "patch_knn")
    vs_project = paired_rows([r for r in rows if r["name"] != "patch_knn"], "project")
    project = next(r for r in rows if r["name"] == "project")
    better = [d["name"] for d in vs_project
              if next(r for r in rows if r["name"] == d["name"])["selection_score"]
              > project["selection_score"] + args.margin and all(d[m]["high"] >= 0 for m in METRICS)]
    print(format_table([(r["name"], *(f"{r[m]:.3f}" for m in (*METRICS, "selection_score"))) for r in rows],
                       ("candidate", *METRICS, "score")))
    print("\n" + paired_text(vs_knn) + "\n\n" + paired_text(vs_project))
    print(f"\nwould replace the recipe: {better or 'none'}")
    record = {"argv": sys.argv, "environment": environment(torch.device("cpu"), args.threads), "split": "val",
              "val_root": data_root or "toy",
              "backbone": args.backbone, "iterations": args.iterations, "shots": args.shots, "seeds": args.seeds,
              "overrides": {n: CANDIDATES[n] for n in names}, "rows": rows, "vs_patch_knn": vs_knn,
              "vs_project": vs_project, "margin": args.margin, "would_replace": better,
              "seconds": time.perf_counter() - start}
    atomic_write_json(args.out, record)
    print(f"wrote {args.out} ({record['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
