"""Which backbone's tokens match patches best? Patch-kNN on a larger toy validation split.

The toy validation split holds 20 normal and 20 defective images per category. An image
AUROC over 40 images has a standard error of about 0.09, so two backbones a few points
apart cannot be told apart on it, however many shot seeds are averaged: the images stay
the same. This benchmark draws a larger validation split with the toy generator itself
(``benchutil.LARGE_VAL``, in a folder of its own). Rendering is
a function of the split and the index only, so its first 20 normal and first 5 images of
each defect type are the toy split's own validation images; train and test are unchanged,
and the test split is never read.

On it, the training-free patch-kNN (:class:`vtfusion.patch_knn.PatchKNN`) runs on each
backbone's tokens as VTFusion reads them (the ``tiny`` quick profile's blocks 1-4, a pocket
release's :data:`~vtfusion.pocket.model.READING`, pocket weights from a file read as
``pocket-v2``) and on the raw 16 x 16 pixel patches, for every toy category, k = 2 and 4
and shot seeds 0-2. Every row is compared with ``tiny`` cell by cell
(:func:`vtfusion.stats.paired_difference`)::

    .venv/bin/python bench/pocket_patch_knn_val.py --extra NAME=runs/pocket/RUN/checkpoint.pt

writes ``runs/bench/pocket_patch_knn_val.json`` (about 1 minute per backbone on 2 cores).
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
from benchutil import LARGE_VAL, LARGE_VAL_ROOT, environment, large_val_root, weights_files  # noqa: E402

from vtfusion.backbone import build_backbone  # noqa: E402
from vtfusion.config import BackboneConfig, get_profile  # noqa: E402
from vtfusion.data import load_dataset  # noqa: E402
from vtfusion.data.categories import categories  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.metrics import evaluate_maps  # noqa: E402
from vtfusion.patch_knn import PatchKNN  # noqa: E402
from vtfusion.pocket.model import READING  # noqa: E402
from vtfusion.stats import paired_difference, verdict  # noqa: E402
from vtfusion.viz import format_difference, format_table  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def backbone_configs(extra: dict[str, str], random_pocket: bool = False) -> dict[str, BackboneConfig]:
    """``tiny`` as the quick profile reads it, the pocket releases and ``extra`` weights as READING says;
    with ``random_pocket``, the pocket architecture at its random init, read as each release is
    (the control that tells what pre-training did from what the architecture and its blocks do)."""
    tiny = get_profile("quick").backbone
    pocket = {name: BackboneConfig(arch="pocket", weights=name, layers=tuple(r["layers"]))
              for name, r in READING.items()}
    random = {f"random pocket, read as {name}": BackboneConfig(arch="pocket", weights="random",
                                                                 layers=tuple(r["layers"]))
              for name, r in READING.items()} if random_pocket else {}
    files = {name: BackboneConfig(arch="pocket", weights=path, layers=tuple(READING["pocket-v2"]["layers"]))
             for name, path in extra.items()}
    return {"tiny": tiny, **pocket, **random, **files}


def pixel_tokens(images: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """Raw RGB patches as one level of tokens: ``B x 3 x S x S`` -> ``B x 1 x h x w x 3 p^2``."""
    b, _, s, _ = images.shape
    cols = F.unfold(images, kernel_size=patch, stride=patch).transpose(1, 2)
    return cols.reshape(b, 1, s // patch, s // patch, -1)


@torch.no_grad()
def grid_cells(encode, root: Path, shots: list[int], seeds: list[int]) -> list[dict]:
    """Patch-kNN metrics of every (category, k, seed) cell, tokens from ``encode``."""
    out = []
    for category in categories("toy"):
        val = load_dataset("toy", category, "val", root=root, image_size=240)
        samples = [val[i] for i in range(len(val))]
        masks = torch.stack([s["mask"] for s in samples])
        labels = torch.tensor([s["label"] for s in samples])
        images = torch.stack([s["image"] for s in samples])
        tokens = torch.cat([encode(images[i:i + 32]) for i in range(0, len(images), 32)])
        train = load_dataset("toy", category, "train", root=root, image_size=240)
        for k in shots:
            for seed in seeds:
                knn = PatchKNN().fit(encode(train.load_shots(k, seed)))
                pred = knn.predict_tokens(tokens, tuple(masks.shape[-2:]))
                m = evaluate_maps(pred["final"][:, 0], masks, labels, image_scores=pred["score"])
                out.append({"category": category, "k": k, "seed": seed, **{x: m[x] for x in METRICS}})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--extra", nargs="+", default=[], metavar="NAME=FILE",
                   help="pocket weights from files (pre-training runs' checkpoint.pt), read as pocket-v2")
    p.add_argument("--random-pocket", action="store_true",
                   help="add the pocket architecture at its random init (seed 0), read as each release")
    p.add_argument("--root", type=Path, default=LARGE_VAL_ROOT,
                   help="folder of the larger toy dataset (generated there when missing)")
    p.add_argument("--shots", type=int, nargs="+", default=[2, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/bench/pocket_patch_knn_val.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = backbone_configs(weights_files(p, args.extra), args.random_pocket)
    large_val_root(args.root)
    start = time.perf_counter()
    cells: dict[str, list[dict]] = {"pixels": grid_cells(pixel_tokens, args.root, args.shots, args.seeds)}
    for name, cfg in configs.items():
        backbone = build_backbone(cfg, seed=0).eval()
        cells[name] = grid_cells(backbone, args.root, args.shots, args.seeds)
        print(f"{name}: {time.perf_counter() - start:.0f}s", flush=True)
    rows = []
    for name, cs in cells.items():
        row = {"tokens": name, "cells": len(cs), "per_cell": cs,
               **{m: statistics.fmean(c[m] for c in cs) for m in METRICS},
               "image_auroc_by_category": {cat: statistics.fmean(c["image_auroc"] for c in cs if c["category"] == cat)
                                           for cat in categories("toy")}}
        if name != "tiny":
            row["minus_tiny"] = {m: paired_difference(cs, cells["tiny"], m) for m in METRICS}
        rows.append(row)
    print(format_table([(r["tokens"], *(f"{100 * r[m]:.1f}" for m in METRICS),
                         *(format_difference(r["minus_tiny"][m]) if "minus_tiny" in r else "-" for m in METRICS))
                        for r in rows],
                       ("tokens", *METRICS, *(f"{m} - tiny" for m in METRICS))))
    atomic_write_json(args.out, {
        "split": "val", "val_images_per_category": {"good": LARGE_VAL.n_val_good,
                                                    "per_defect_type": LARGE_VAL.n_val_per_defect},
        "shots": args.shots, "seeds": args.seeds, "rows": rows,
        "verdicts": {r["tokens"]: {m: verdict(r["minus_tiny"][m]) for m in METRICS} for r in rows if "minus_tiny" in r},
        "seconds": time.perf_counter() - start,
        "command": " ".join(["bench/pocket_patch_knn_val.py", *(argv if argv is not None else sys.argv[1:])]),
        "environment": environment(torch.device("cpu"), args.threads)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
