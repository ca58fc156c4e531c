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

``--split val --rows zero_shot patch_knn --backbones tiny pocket pocket-v2`` compares
released backbones on the toy validation split, where the quick profile's backbone is
chosen (never on test).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recipe import backbone_config, configs, grid_parser  # noqa: E402
from benchutil import (BACKBONES, Row, environment, grid_table, quick_config, resolve_device,  # noqa: E402
                       run_grid, weights_files)

from vtfusion.config import BackboneConfig  # noqa: E402
from vtfusion.data.categories import categories as dataset_categories  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.pocket.model import READING  # noqa: E402
from vtfusion.validation import VALIDATION_SPLIT  # noqa: E402


ROWS = ("zero_shot", "patch_knn", "full", "ate_aie", "ate")


def rows_for(backbone: str, iterations: int, kinds: tuple[str, ...] = ROWS,
             weights_file: str | None = None) -> list[Row]:
    """The rows of one backbone; ``weights_file``: pocket weights from a file (a pre-training
    run's ``checkpoint.pt``), read as pocket-v2 is, under the name ``backbone``."""
    if weights_file is None:
        _, project = configs(backbone_config(backbone), iterations)
    else:
        file_backbone = BackboneConfig(arch="pocket", weights=weights_file, layers=READING["pocket-v2"]["layers"])
        project = quick_config(file_backbone, iterations, "project", read_as="pocket-v2")
    out = []
    for kind in kinds:
        if kind in ("zero_shot", "patch_knn"):
            out.append(Row(f"{kind}/{backbone}", kind, project))
        else:
            cfg = project.replace(model=dataclasses.replace(project.model, variant=kind))
            out.append(Row(f"{'vtfusion-project' if kind == 'full' else kind}/{backbone}", "vtfusion", cfg))
    return out


def targets(summaries: list[dict], pocket: str = "pocket") -> dict[str, dict]:
    """The issue's targets for the pocket backbone ``pocket`` (those whose rows ran)."""
    def image(row: str) -> float | None:
        return next((s["image_auroc"] for s in summaries if s["row"] == row and s["k"] == "all"), None)

    def gap(row: str) -> float | None:
        a, b = image(f"{row}/{pocket}"), image(f"{row}/tiny")
        return None if a is None or b is None else a - b

    checks = {
        f"zero-shot image AUROC >= 0.70 ({pocket})": (image(f"zero_shot/{pocket}"), 0.70),
        f"patch-kNN {pocket} - tiny >= 0.05 image AUROC": (gap("patch_knn"), 0.05),
        f"VTFusion full {pocket} - tiny >= 0.10 image AUROC": (gap("vtfusion-project"), 0.10),
    }
    return {name: {"value": v, "target": t, "met": v >= t} for name, (v, t) in checks.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    p = grid_parser(__doc__, "pocket", shots=[2, 4])
    p.add_argument("--backbones", nargs="+", default=["pocket", "tiny"],
                   choices=[b for b in BACKBONES if b != "vitb_random"])
    p.add_argument("--extra", nargs="+", default=[], metavar="NAME=FILE",
                   help="pocket weights from files (pre-training runs' checkpoint.pt), read as pocket-v2")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--split", default="test", choices=("test", VALIDATION_SPLIT),
                   help=f"toy split; '{VALIDATION_SPLIT}' to choose between backbones (default test)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    extra = weights_files(p, args.extra)
    rows = [r for bb in args.backbones for r in rows_for(bb, args.iterations, tuple(args.rows))]
    rows += [r for name, path in extra.items() for r in rows_for(name, args.iterations, tuple(args.rows), path)]
    summaries = run_grid(rows, "toy", tuple(dataset_categories("toy")), tuple(args.shots), tuple(args.seeds),
                         results_root=args.results, runs_root=args.runs, split=args.split)
    print(grid_table(summaries))
    checks = {name: c for bb in [*args.backbones, *extra] if bb != "tiny" for name, c in targets(summaries, bb).items()}
    for name, c in checks.items():
        print(f"{'met    ' if c['met'] else 'NOT MET'} {name}: {c['value']:.3f}")
    atomic_write_json(args.out, {"argv": sys.argv, "environment": environment(resolve_device("auto"), args.threads),
                                 "split": args.split, "summaries": summaries, "targets": checks,
                                 "seconds": time.perf_counter() - start})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
