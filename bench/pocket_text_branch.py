"""Where VTFusion's training loses pocket-v2's text map: toy validation split, no test data.

pocket-v2's untrained text map (zero-shot) localises the toy defects. This benchmark
trains VTFusion (project recipe, quick schedule) on it with the text branch's switches:

* ``full``: the paper's Eq. 6 on the AIE's features (shared with the vision branch);
* ``full, clip features``: Eq. 6 on CLIP's own projection of the frozen tokens
  (``ATEConfig.image_features="clip"``), which training cannot move;
* ``full, clip features + text skip``: also ``MPFConfig.text_skip``;
* ``ate_aie, clip features``: the fixed standardised mean instead of the MPF;
* ``ate``: the text branch alone, trained;

and ``zero_shot`` and ``patch_knn`` as references. A ``monitor`` trace (one category,
k = 2, seed 0) records the three maps every 50 iterations for ``full`` on both features.
Writes ``runs/bench/pocket_text_branch.json``::

    .venv/bin/python bench/pocket_text_branch.py
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recipe import grid_parser  # noqa: E402
from benchutil import BACKBONES, Row, environment, grid_table, quick_config, run_grid  # noqa: E402

from vtfusion.data.categories import categories as dataset_categories  # noqa: E402
from vtfusion.evaluate import run_cell  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.validation import VALIDATION_SPLIT  # noqa: E402

#: label -> (variant, ATEConfig.image_features, MPFConfig.text_skip)
VARIANTS = {
    "full": ("full", "aie", False),
    "full, clip features": ("full", "clip", False),
    "full, clip features + text skip": ("full", "clip", True),
    "ate_aie, clip features": ("ate_aie", "clip", False),
    "ate": ("ate", "aie", False),
}


def variant_config(backbone: str, iterations: int, variant: str, features: str, text_skip: bool):
    cfg = quick_config(BACKBONES[backbone], iterations, "project")
    model = cfg.model
    return cfg.replace(model=dataclasses.replace(
        model, variant=variant, ate=dataclasses.replace(model.ate, image_features=features),
        mpf=dataclasses.replace(model.mpf, text_skip=text_skip)))


def monitor_trace(cfg, category: str, runs_root: Path, results_root: Path, every: int = 50) -> list[dict]:
    """The validation maps of one cell (k = 2, seed 0) every ``every`` iterations (its own run folder)."""
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, monitor_every=every))
    run_cell(cfg, "toy", category, 2, 0, results_root=results_root, runs_root=runs_root,
             split=VALIDATION_SPLIT, monitor=True)
    history = next(p for p in runs_root.rglob("history.json") if f"/{category}/" in str(p))
    return json.loads(history.read_text())["monitor"]


def main(argv: list[str] | None = None) -> int:
    p = grid_parser(__doc__, "pocket_text_branch", shots=[2])
    p.add_argument("--backbone", default="pocket-v2", choices=[b for b in BACKBONES if b != "vitb_random"])
    p.add_argument("--trace-category", default="chip")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    base = variant_config(args.backbone, args.iterations, "full", "aie", False)
    rows = [Row("zero_shot", "zero_shot", base), Row("patch_knn", "patch_knn", base)]
    rows += [Row(label, "vtfusion", variant_config(args.backbone, args.iterations, *v)) for label, v in VARIANTS.items()]
    summaries = run_grid(rows, "toy", tuple(dataset_categories("toy")), tuple(args.shots), tuple(args.seeds),
                         results_root=args.results, runs_root=args.runs, split=VALIDATION_SPLIT)
    print(grid_table(summaries))
    traces = {}
    for label in ("full", "full, clip features"):
        cfg = variant_config(args.backbone, args.iterations, *VARIANTS[label])
        folder = Path(args.runs).parent / "monitor" / label.replace(", ", "_").replace(" ", "_")
        traces[label] = monitor_trace(cfg, args.trace_category, folder, folder / "results")
    atomic_write_json(args.out, {"argv": sys.argv, "environment": environment(torch.device("cpu"), args.threads),
                                 "backbone": args.backbone, "split": VALIDATION_SPLIT, "summaries": summaries,
                                 "trace_category": args.trace_category, "traces": traces,
                                 "seconds": time.perf_counter() - start})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
