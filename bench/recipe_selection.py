"""Choose the ``project`` training recipe on the toy validation split (greedy forward selection).

Stages, each a group of alternatives for one question the paper leaves open (the first
alternative of each stage is what the recipe holds when the stage starts). Every
candidate is trained on the same validation cells (toy categories x k x seeds, quick
schedule) and scored on the ``val`` split, never on ``test``
(:func:`vtfusion.validation.compare`); a stage keeps its best alternative only if it
beats the current recipe's :func:`~vtfusion.validation.selection_score` by more than
``--margin``, otherwise the current (more faithful) option stays.

    .venv/bin/python bench/recipe_selection.py --backbone pocket --shots 2 --seeds 0 --install
    .venv/bin/python bench/recipe_selection.py --backbone tiny --shots 1 2 --seeds 0 --install

writes ``runs/bench/recipe_selection_<backbone>.json`` (and, with ``--install``, the
package's ``vtfusion/resources/recipe_selection.json`` that :mod:`vtfusion.recipes` and
the training chapter read).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import BACKBONES, environment  # noqa: E402

from vtfusion.config import get_profile  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.recipes import with_overrides  # noqa: E402
from vtfusion.validation import Candidate, compare  # noqa: E402
from vtfusion.viz import format_table  # noqa: E402

#: (stage name, question, alternatives as {label: overrides}); the first label is the status quo.
#: Sized for a 2-core CPU (about 100 short trainings at k = 1 and 2); the options left out here (light
#: augmentation, plain Euclidean distance, a 1x1 adaptor, warm-up) can be added as stages.
STAGES: list[tuple[str, str, dict[str, dict]]] = [
    ("prototypes", "Eq. 1: average the shots per location, or keep every shot patch?",
     {"mean (Eq. 1)": {}, "memory": {"model.prototypes.bank": "memory"}}),
    ("final map", "M^f: the segmentation network alone (Eq. 9), a learnt vision skip, or a late mean "
                  "with M^v or with the raw-token nearest-neighbour map (a late mean's statistics at "
                  "k = 1 from the shot itself, or from augmented copies of it)",
     {"phi alone": {}, "vision skip": {"model.mpf.vision_skip": True},
      "mean with M^v": {"model.final_map": "mpf_vision"},
      "mean with M^v, k=1 stats from copies": {"model.final_map": "mpf_vision",
                                               "train.calibration": "augmented_single"},
      "mean with raw-token kNN": {"model.final_map": "mpf_knn"},
      "mean with raw-token kNN, k=1 stats from copies": {"model.final_map": "mpf_knn",
                                                         "train.calibration": "augmented_single"}}),
    ("statistics", "The late mean's normal statistics at k >= 2: leave-one-out shots, or augmented copies",
     {"leave-one-out shots": {}, "augmented copies": {"train.calibration": "augmented"}}),
    ("AFS margin", "Eq. 4's margin (r + alpha)^2 = 0.01, or relative to the normal distances",
     {"paper margin": {},
      "relative, 3 neighbours": {"model.prototypes.afs_margin": "relative", "model.prototypes.afs_neighbours": 3}}),
    ("AIE start", "Keeping CLIP's start: the 3x3 adaptor at the AIE's lr, or at a tenth of it",
     {"adaptor lr 1e-3": {}, "adaptor lr x0.1": {"train.adaptor_lr_scale": 0.1}}),
    ("training normals", "What the normal half of each batch is compared with",
     {"shots vs own bank": {}, "leave-one-out": {"train.leave_one_out": True}}),
    ("image score", "The image score: max of M^f (Sec. III-D), or max of M^f after a Gaussian of sigma 4",
     {"max": {}, "smoothed max": {"model.image_score": "smoothed_max"}}),
    ("late mean weight", "The squashed map's weight w in the late mean (1 - w) M^f + w squashed "
                         "(a late mean only; the plain mean is 0.5)",
     {"w = 0.5": {}, "w = 0.35": {"model.late_mean_weight": 0.35},
      "w = 0.65": {"model.late_mean_weight": 0.65}, "w = 0.8": {"model.late_mean_weight": 0.8}}),
]


def base_config(backbone: str, iterations: int, layers: tuple[int, ...] | None):
    """The quick profile with the paper's literal recipe on ``benchutil.BACKBONES[backbone]``."""
    cfg = get_profile("quick", recipe="paper")  # stages start from the literal reading
    if backbone not in BACKBONES:
        raise SystemExit(f"--backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    bb = BACKBONES[backbone]
    if layers:
        bb = dataclasses.replace(bb, layers=tuple(layers))
    return cfg.replace(backbone=bb, train=dataclasses.replace(cfg.train, iterations=iterations))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="pocket", choices=("pocket", "tiny"))
    parser.add_argument("--layers", type=int, nargs="+", default=None)
    parser.add_argument("--shots", type=int, nargs="+", default=[2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--margin", type=float, default=0.005)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="runs/selection/results")
    parser.add_argument("--runs", default="runs/selection/runs")
    parser.add_argument("--out", default=None)
    parser.add_argument("--install", action="store_true",
                        help="also write vtfusion/resources/recipe_selection.json (the recipe's record)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = base_config(args.backbone, args.iterations, tuple(args.layers) if args.layers else None)
    cells = dict(shots=tuple(args.shots), seeds=tuple(args.seeds), results_root=args.results, runs_root=args.runs)
    chosen: dict = {}
    stages = []
    start = time.perf_counter()
    current_score = None
    for name, question, alternatives in STAGES:
        labels = list(alternatives)
        cands = [Candidate(label, with_overrides(base, {**chosen, **over}), note=str(over))
                 for label, over in alternatives.items()]
        rows = compare(cands, include_patch_knn=not stages, progress=False, **cells)
        knn = [r for r in rows if r["name"] == "patch_knn"]
        rows = [r for r in rows if r["name"] != "patch_knn"]
        if current_score is None:
            current_score = rows[0]["selection_score"]
        best = max(rows, key=lambda r: r["selection_score"])
        keep = best["name"] if best["selection_score"] > current_score + args.margin else labels[0]
        if keep != labels[0]:
            chosen.update(alternatives[keep])
            current_score = best["selection_score"]
        stages.append({"stage": name, "question": question, "rows": knn + rows, "chosen": keep,
                       "overrides_after": dict(chosen)})
        print(f"\n== {name}: {question}")
        keys = ("image_auroc", "pixel_auroc", "aupro", "vision_pixel_auroc", "text_pixel_auroc", "selection_score")
        print(format_table([(r["name"], *[f"{r.get(k, float('nan')):.3f}" for k in keys]) for r in knn + rows],
                           ("candidate", *keys)))
        print(f"kept: {keep}", flush=True)
    record = {"backbone": dataclasses.asdict(base.backbone), "iterations": args.iterations,
              "shots": args.shots, "seeds": args.seeds, "split": "val", "margin": args.margin,
              "rule": "mean of image AUROC, pixel AUROC and AUPRO on the toy val split, mean over cells",
              "stages": stages, "overrides": chosen, "seconds": time.perf_counter() - start,
              "command": " ".join(["bench/recipe_selection.py", *(argv if argv is not None else sys.argv[1:])]),
              "environment": environment(torch.device("cpu"), args.threads)}
    out = Path(args.out or f"runs/bench/recipe_selection_{args.backbone}.json")
    atomic_write_json(out, record)
    print(f"\nchosen overrides: {chosen}\nwrote {out}")
    if args.install:
        target = Path(__file__).resolve().parents[1] / "vtfusion" / "resources" / "recipe_selection.json"
        atomic_write_json(target, record)
        print(f"installed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
