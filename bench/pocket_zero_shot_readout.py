"""Is pocket CLIP's weak zero-shot image AUROC on toy a readout problem? (toy **val** split only)

pocket-v2's untrained text map localises the toy defects (pixel AUROC about 0.82 on
validation) while its image score, the map's maximum, ranks images little better than
chance. This script scores other readouts of the *same* zero-shot maps, with no training
and no shot: the plain maximum; the maximum after a Gaussian of sigma 2, 4, 8 or 16 pixels;
the 99th and 99.9th percentiles; the mean; and the image-level CLIP readout, the
two-prompt softmax of the global image embedding (as WinCLIP scores images).

    .venv/bin/python bench/pocket_zero_shot_readout.py [--backbones pocket-v2 pocket tiny]

writes ``runs/bench/pocket_zero_shot_readout.json``: image AUROC per category and readout,
and the mean over categories.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import BACKBONES, environment, quick_config  # noqa: E402

from vtfusion.data import load_dataset  # noqa: E402
from vtfusion.data.categories import categories as dataset_categories  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.methods.base import Shots  # noqa: E402
from vtfusion.methods.registry import create_method  # noqa: E402
from vtfusion.metrics import auroc, gaussian_smooth  # noqa: E402
from vtfusion.validation import VALIDATION_SPLIT  # noqa: E402
from vtfusion.viz import format_table  # noqa: E402


@torch.no_grad()
def readouts(backbone_name: str, category: str, batch_size: int = 32) -> dict[str, float]:
    """Image AUROC of each readout of the zero-shot maps of one category's validation split."""
    cfg = quick_config(BACKBONES[backbone_name], 300, "project")
    method = create_method("zero_shot", cfg)
    split = load_dataset("toy", category, VALIDATION_SPLIT, None, cfg.data.image_size)
    method.fit_shots(Shots(torch.zeros(0, 3, cfg.data.image_size, cfg.data.image_size), "toy", category,
                           backbone=method.backbone))
    method.prepare()
    images = torch.stack([split[i]["image"] for i in range(len(split))])
    labels = torch.tensor(split.labels)
    maps, embeddings = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        maps.append(method.predict(batch).maps.float())
        embeddings.append(F.normalize(method.backbone.encode_image(batch).float(), dim=-1))
    maps, embeddings = torch.cat(maps), torch.cat(embeddings)
    flat = maps.flatten(1)
    out = {"max": auroc(flat.amax(1), labels)}
    for sigma in (2, 4, 8, 16):
        out[f"smoothed max, sigma {sigma}"] = auroc(gaussian_smooth(maps, sigma).flatten(1).amax(1), labels)
    for q in (0.99, 0.999):
        out[f"quantile {q}"] = auroc(flat.quantile(q, dim=1), labels)
    out["mean"] = auroc(flat.mean(1), labels)
    # the ATE before training: CLIP's own ensemble embeddings, "normal" and "damaged" rows
    text = F.normalize(method.model.text_features().float(), dim=-1)
    out["global embedding"] = auroc((100.0 * embeddings @ text.T).softmax(-1)[:, 1], labels)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="+", default=["pocket-v2"], choices=[b for b in BACKBONES if b != "vitb_random"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/bench/pocket_zero_shot_readout.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    record = {"argv": sys.argv, "environment": environment(torch.device("cpu"), args.threads),
              "split": VALIDATION_SPLIT, "backbones": {}}
    for name in args.backbones:
        per_category = {c: readouts(name, c) for c in dataset_categories("toy")}
        names = list(next(iter(per_category.values())))
        mean = {r: statistics.fmean(v[r] for v in per_category.values()) for r in names}
        record["backbones"][name] = {"per_category": per_category, "mean": mean}
        print(f"\n== {name}, toy {VALIDATION_SPLIT} split: zero-shot image AUROC by readout")
        print(format_table([(r, *(f"{per_category[c][r]:.3f}" for c in per_category), f"{mean[r]:.3f}")
                            for r in names], ("readout", *per_category, "mean")))
    record["seconds"] = time.perf_counter() - start
    atomic_write_json(args.out, record)
    print(f"\nwrote {args.out} ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
