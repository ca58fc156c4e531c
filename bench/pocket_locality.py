"""Where a backbone's patch tokens keep, or lose, what patch matching needs: patch-kNN per block.

Patch-kNN on the random ``tiny`` backbone's tokens beats patch-kNN on the pocket CLIP's
(``bench_pocket``). This asks at which depth the pocket tokens fall behind: the
training-free patch-kNN (:mod:`vtfusion.patch_knn`, one level at a time) on the toy
``val`` split, k = 2, shot seeds 0-2, every category, for

* ``pixels``: the raw 16 x 16 RGB patches (no network at all);
* block 0: the patch embedding as the first block reads it (``ln_pre(conv1(x) + pos)``);
* blocks 1..depth: the residual stream after each transformer block;

each as is and, with ``centred``, minus the image's mean token (is a shared, image-wide
component what hides local defects?). Validation data only::

    .venv/bin/python bench/pocket_locality.py

writes ``runs/bench/pocket_locality.json`` (about 1 minute on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import environment  # noqa: E402

from vtfusion.backbone import FrozenCLIP, build_backbone  # noqa: E402
from vtfusion.config import BackboneConfig  # noqa: E402
from vtfusion.data import load_dataset  # noqa: E402
from vtfusion.data.categories import categories  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.metrics import evaluate_maps  # noqa: E402
from vtfusion.patch_knn import nearest_distances  # noqa: E402
from vtfusion.viz import format_table  # noqa: E402

BACKBONES = {"tiny": BackboneConfig(arch="tiny", weights="random", layers=(1,)),
             "pocket-v1": BackboneConfig(arch="pocket", weights="pocket-v1", layers=(1,)),
             "pocket-v2": BackboneConfig(arch="pocket", weights="pocket-v2", layers=(1,))}


@torch.no_grad()
def tokens_per_block(backbone: FrozenCLIP, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Patch tokens before the first block and after every block: ``B x 3 x S x S`` ->
    ``(depth + 1) x B x h x w x D`` (open_clip ``VisionTransformer``, class token dropped)."""
    visual, (h, w) = backbone.clip.visual, backbone.grid_size
    out = []
    for start in range(0, len(images), batch_size):
        x = (images[start:start + batch_size] - backbone.mean) / backbone.std
        patches = visual.conv1(x).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.expand(patches.shape[0], 1, -1)
        z = visual.ln_pre(torch.cat([cls, patches], 1) + visual.positional_embedding)
        levels = [z[:, 1:]]
        for block in visual.transformer.resblocks:
            z = block(z)
            levels.append(z[:, 1:])
        out.append(torch.stack(levels))
    t = torch.cat(out, 1)
    return t.reshape(*t.shape[:2], h, w, t.shape[-1])


def pixel_patches(images: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """Raw RGB patches as descriptors: ``B x 3 x S x S`` -> ``1 x B x h x w x (3 * patch^2)``."""
    b, _, s, _ = images.shape
    cols = F.unfold(images, kernel_size=patch, stride=patch)  # B x 3p^2 x hw
    return cols.transpose(1, 2).reshape(1, b, s // patch, s // patch, -1)


def knn_map(shots: torch.Tensor, test: torch.Tensor, centred: bool) -> torch.Tensor:
    """Nearest-shot-patch distance of each test patch (one level): ``B x h x w x D`` -> ``B x 1 x h x w``."""
    def descriptors(t: torch.Tensor) -> torch.Tensor:
        t = t.flatten(1, 2)
        return F.normalize(t - t.mean(1, keepdim=True) if centred else t, dim=-1)

    memory = descriptors(shots).flatten(0, 1)
    queries = descriptors(test)
    d = nearest_distances(queries.flatten(0, 1), memory)
    return d.reshape(test.shape[0], 1, *test.shape[1:3])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--shots", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/bench/pocket_locality.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    scores: dict[tuple[str, str, bool], list[tuple[float, float]]] = {}
    for name in ["pixels", *args.backbones]:
        backbone = None if name == "pixels" else build_backbone(BACKBONES[name]).eval()
        encode = pixel_patches if backbone is None else (lambda x, b=backbone: tokens_per_block(b, x))
        for category in categories("toy"):
            val = load_dataset("toy", category, "val", image_size=240)
            samples = [val[i] for i in range(len(val))]
            masks = torch.stack([s["mask"] for s in samples])
            labels = torch.tensor([s["label"] for s in samples])
            test = encode(torch.stack([s["image"] for s in samples]))
            train = load_dataset("toy", category, "train", image_size=240)
            for seed in args.seeds:
                shots = encode(train.load_shots(args.shots, seed))
                for block in range(test.shape[0]):
                    for centred in (False, True):
                        d = knn_map(shots[block], test[block], centred)
                        m = F.interpolate(d, size=masks.shape[-1], mode="bilinear", align_corners=False)[:, 0]
                        r = evaluate_maps(m, masks, labels, image_scores=m.flatten(1).amax(1))
                        key = (name, "-" if name == "pixels" else str(block), centred)
                        scores.setdefault(key, []).append((r["image_auroc"], r["pixel_auroc"]))
        print(f"{name}: {time.perf_counter() - start:.0f}s", flush=True)
    rows = [{"backbone": n, "block": b, "centred": c, "cells": len(v),
             "image_auroc": sum(x[0] for x in v) / len(v), "pixel_auroc": sum(x[1] for x in v) / len(v)}
            for (n, b, c), v in scores.items()]
    print(format_table([(r["backbone"], r["block"], "yes" if r["centred"] else "no", f"{r['image_auroc']:.3f}",
                         f"{r['pixel_auroc']:.3f}") for r in rows],
                       ("tokens", "block", "centred", "image AUROC", "pixel AUROC")))
    atomic_write_json(args.out, {"split": "val", "shots": args.shots, "seeds": args.seeds, "rows": rows,
                                 "seconds": time.perf_counter() - start,
                                 "command": " ".join(["bench/pocket_locality.py",
                                                      *(argv if argv is not None else sys.argv[1:])]),
                                 "environment": environment(torch.device("cpu"), args.threads)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
