"""Choose the pocket backbone's token levels on the toy validation split (patch-kNN, no training).

VTFusion reads the residual stream after L = 4 blocks. The paper's ViT-B takes blocks
3, 6, 9 and 12 of 12; the pocket CLIP has 6. Each candidate set is scored by the
training-free patch-kNN (:func:`vtfusion.validation.validate_patch_knn`) on the ``val``
split with the selection rule of the recipe study (mean of image AUROC, pixel AUROC and
AUPRO); the best set goes into ``vtfusion.pocket.model.READING``. The
untrained text map (zero-shot CLIP, :func:`vtfusion.evaluate.run_zero_shot_cell`) is
scored on the same split for each prompt preset (``--prompts``) and softmax temperature
(``--logit-scales``; ``ATEConfig.logit_scale``): CLIP's ``ln_post`` and ``proj`` only fit
the last block's tokens, and a small CLIP learns its own temperature (pocket-v2: about
14, not CLIP's 100), so the text branch may want other choices than the visual one::

    .venv/bin/python bench/choose_layers.py --shots 2 --seeds 0

writes ``runs/bench/pocket_layers.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import environment  # noqa: E402

from vtfusion.backbone import build_backbone  # noqa: E402
from vtfusion.cache import FeatureCache  # noqa: E402
from vtfusion.config import BackboneConfig, get_profile, with_text_reading  # noqa: E402
from vtfusion.data.categories import categories  # noqa: E402
from vtfusion.evaluate import run_zero_shot_cell  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.prompts import PRESETS  # noqa: E402
from vtfusion.validation import selection_score, summarize, validate_patch_knn  # noqa: E402
from vtfusion.viz import format_table  # noqa: E402

CANDIDATES = ((1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 6), (2, 4, 5, 6), (1, 3, 5, 6), (4, 5, 6), (5, 6), (6,))
ZERO_SHOT_METRICS = ("image_auroc", "pixel_auroc", "aupro")


def zero_shot_rows(cfg, backbone, cache, presets: list[str], scales: list[float]) -> list[dict]:
    """Zero-shot CLIP on the toy ``val`` split for each prompt preset and temperature."""
    rows = []
    for preset in presets:
        for scale in scales:
            c = with_text_reading(cfg, preset, scale)
            summary = summarize([run_zero_shot_cell(c, "toy", cat, results_root="runs/selection/layers",
                                                    backbone=backbone, cache=cache, split="val")
                                 for cat in categories("toy")])
            rows.append({"prompts": preset, "logit_scale": scale, **{m: summary[m] for m in ZERO_SHOT_METRICS}})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="pocket-v1")
    parser.add_argument("--shots", type=int, nargs="+", default=[2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--prompts", nargs="+", default=["ensemble"], choices=PRESETS,
                        help="prompt presets of the zero-shot rows")
    parser.add_argument("--logit-scales", type=float, nargs="+", default=[100.0],
                        help="softmax temperatures of the zero-shot rows (ATEConfig.logit_scale)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/pocket_layers.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = get_profile("quick")
    rows = []
    start = time.perf_counter()
    for layers in CANDIDATES:
        bb = BackboneConfig(arch="pocket", weights=args.weights, layers=layers, precision="fp32")
        cfg = base.replace(backbone=bb)
        backbone, cache = build_backbone(bb), FeatureCache.from_env()
        results = validate_patch_knn(cfg, shots=tuple(args.shots), seeds=tuple(args.seeds),
                                     results_root="runs/selection/layers", backbone=backbone, cache=cache)
        row = {"layers": list(layers), **summarize(results)}
        row["selection_score"] = selection_score(row)
        row["zero_shot"] = zero_shot_rows(cfg, backbone, cache, args.prompts, args.logit_scales)
        rows.append(row)
        print(f"layers {layers}: score {row['selection_score']:.3f}", flush=True)
    best = max(rows, key=lambda r: r["selection_score"])
    columns = ("image_auroc", "pixel_auroc", "aupro", "selection_score")
    print(format_table([(str(r["layers"]), *[f"{r[m]:.3f}" for m in columns]) for r in rows],
                       ("layers", "image AUROC", "pixel AUROC", "AUPRO", "score")))
    print("zero-shot CLIP (untrained text map):")
    print(format_table([(str(r["layers"]), z["prompts"], f"{z['logit_scale']:g}",
                         *[f"{z[m]:.3f}" for m in ZERO_SHOT_METRICS]) for r in rows for z in r["zero_shot"]],
                       ("layers", "prompts", "scale", "image AUROC", "pixel AUROC", "AUPRO")))
    print(f"best: {best['layers']}")
    atomic_write_json(Path(args.out), {
        "weights": args.weights, "shots": args.shots, "seeds": args.seeds, "split": "val", "rows": rows,
        "chosen": best["layers"], "seconds": time.perf_counter() - start,
        "command": " ".join(["bench/choose_layers.py", *(argv if argv is not None else sys.argv[1:])]),
        "environment": environment(torch.device("cpu"), args.threads)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
