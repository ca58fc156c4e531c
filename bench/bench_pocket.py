"""What the pocket CLIP brings: zero-shot, patch-kNN and VTFusion on it, against the random ``tiny`` backbone.

One run over every toy category, k = 2 and 4, seeds 0-2, the quick schedule and the
project recipe. Rows, for each backbone (``pocket``, ``tiny``):

* zero-shot CLIP: the untrained ATE's text map (prompt ensemble), no shot, no training;
* patch-kNN on the backbone's tokens (training-free reference);
* VTFusion ``full``, ``ate_aie`` and ``ate``, trained.

It checks the pocket CLIP's targets (zero-shot image AUROC >= 0.70; patch-kNN on pocket
tokens >= 5 points of image AUROC above tiny; VTFusion ``full`` on pocket >= 10 points
above tiny), prints the table and writes ``runs/bench/pocket.json``, which the pocket-CLIP
chapter shows. Cells are shared with ``bench_recipe.py`` (same cached results).

    .venv/bin/python bench/bench_pocket.py
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recipe import backbone_config, configs, grid_parser  # noqa: E402
from benchutil import Row, environment, grid_table, run_grid  # noqa: E402

from vtfusion.data.categories import categories as dataset_categories  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402


def rows_for(backbone: str, iterations: int) -> list[Row]:
    _, project = configs(backbone_config(backbone), iterations)
    out = [Row(f"zero_shot/{backbone}", "zero_shot", project), Row(f"patch_knn/{backbone}", "patch_knn", project)]
    for variant in ("full", "ate_aie", "ate"):
        cfg = project.replace(model=dataclasses.replace(project.model, variant=variant))
        out.append(Row(f"{'vtfusion-project' if variant == 'full' else variant}/{backbone}", "vtfusion", cfg))
    return out


def targets(summaries: list[dict]) -> dict[str, dict]:
    def image(row: str) -> float:
        return next(s["image_auroc"] for s in summaries if s["row"] == row and s["k"] == "all")

    checks = {
        "zero-shot image AUROC >= 0.70 (pocket)": (image("zero_shot/pocket"), 0.70),
        "patch-kNN pocket - tiny >= 0.05 image AUROC": (image("patch_knn/pocket") - image("patch_knn/tiny"), 0.05),
        "VTFusion full pocket - tiny >= 0.10 image AUROC": (
            image("vtfusion-project/pocket") - image("vtfusion-project/tiny"), 0.10),
    }
    return {name: {"value": v, "target": t, "met": v >= t} for name, (v, t) in checks.items()}


def main(argv: list[str] | None = None) -> int:
    args = grid_parser(__doc__, "pocket", shots=[2, 4]).parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = rows_for("pocket", args.iterations) + rows_for("tiny", args.iterations)
    summaries = run_grid(rows, "toy", tuple(dataset_categories("toy")), tuple(args.shots), tuple(args.seeds),
                         results_root=args.results, runs_root=args.runs)
    print(grid_table(summaries))
    checks = targets(summaries)
    for name, c in checks.items():
        print(f"{'met    ' if c['met'] else 'NOT MET'} {name}: {c['value']:.3f}")
    atomic_write_json(args.out, {"argv": sys.argv, "environment": environment(torch.device("cpu"), args.threads),
                                 "summaries": summaries, "targets": checks, "seconds": time.perf_counter() - start})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
