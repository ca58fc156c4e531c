"""Where a backbone's patch tokens keep, or lose, what patch matching needs: patch-kNN per block.

Patch-kNN on the random ``tiny`` backbone's tokens beats patch-kNN on the pocket CLIP's
(``bench_pocket``). This asks at which depth the pocket tokens fall behind: the
training-free patch-kNN (:mod:`vtfusion.patch_knn`, one level at a time) on the toy
``val`` split, k = 2, shot seeds 0-2, every category, for

* ``pixels``: the raw 16 x 16 RGB patches (no network at all);
* block 0: the patch embedding as the first block reads it (``ln_pre(conv1(x) + pos)``);
* blocks 1..depth: the residual stream after each transformer block;

each as is and, with ``centred``, minus the image's mean token (is a shared, image-wide
component what hides local defects?). With ``--attention self`` the blocks also run with
every token attending to itself only (no mixing between patches; the values, projections
and MLPs as trained): does the detail go in the mixing, or in each token's own
transform? Validation data only::

    .venv/bin/python bench/pocket_locality.py

writes ``runs/bench/pocket_locality.json`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import environment, weights_files  # noqa: E402

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


ATTENTION = ("trained", "self", "vv", "kk")


def block_forward(block: nn.Module, z: torch.Tensor, attention: str) -> torch.Tensor:
    """One open_clip ``ResidualAttentionBlock`` on ``B x N x D`` tokens, with its attention
    weights as trained or replaced: ``self``, the identity (each token reads its own value);
    ``vv`` / ``kk``, softmax of value-value / key-key similarity per head (the self-similar
    attention that CLIP Surgery- and AnomalyCLIP-style readings give real CLIP)."""
    if attention == "trained":
        return block(z)
    attn = block.attn
    q, k, v = F.linear(block.ln_1(z), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    if attention != "self":
        b, n, d = v.shape
        heads = [t.reshape(b, n, attn.num_heads, -1).transpose(1, 2) for t in (k, v)]
        key = heads[1] if attention == "vv" else heads[0]
        v = F.scaled_dot_product_attention(key, key, heads[1]).transpose(1, 2).reshape(b, n, d)
    z = z + block.ls_1(attn.out_proj(v))
    return z + block.ls_2(block.mlp(block.ln_2(z)))


@torch.no_grad()
def tokens_per_block(backbone: FrozenCLIP, images: torch.Tensor, attention: str = "trained",
                     batch_size: int = 32) -> torch.Tensor:
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
            z = block_forward(block, z, attention)
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
    p.add_argument("--attention", nargs="+", default=["trained", "self"], choices=ATTENTION,
                   help="attention weights of the blocks: as trained, or replaced (block_forward)")
    p.add_argument("--extra", nargs="+", default=[], metavar="NAME=FILE",
                   help="more pocket weights to compare, e.g. a pre-training run's checkpoint.pt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/bench/pocket_locality.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    extra = weights_files(p, args.extra)
    backbones = {**BACKBONES, **{name: BackboneConfig(arch="pocket", weights=path, layers=(1,))
                                 for name, path in extra.items()}}
    start = time.perf_counter()
    scores: dict[tuple[str, str, str, bool], list[tuple[float, float]]] = {}
    names = [*args.backbones, *extra]
    variants = [("pixels", "-")] + [(b, a) for b in names for a in args.attention]
    for name, attention in variants:
        backbone = None if name == "pixels" else build_backbone(backbones[name]).eval()
        encode = (pixel_patches if backbone is None
                  else (lambda x, b=backbone, a=attention: tokens_per_block(b, x, a)))
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
                        key = (name, attention, "-" if name == "pixels" else str(block), centred)
                        scores.setdefault(key, []).append((r["image_auroc"], r["pixel_auroc"]))
        print(f"{name}, attention {attention}: {time.perf_counter() - start:.0f}s", flush=True)
    rows = [{"backbone": n, "attention": a, "block": b, "centred": c, "cells": len(v),
             "image_auroc": sum(x[0] for x in v) / len(v), "pixel_auroc": sum(x[1] for x in v) / len(v)}
            for (n, a, b, c), v in scores.items()]
    print(format_table([(r["backbone"], r["attention"], r["block"], "yes" if r["centred"] else "no",
                         f"{r['image_auroc']:.3f}", f"{r['pixel_auroc']:.3f}") for r in rows],
                       ("tokens", "attention", "block", "centred", "image AUROC", "pixel AUROC")))
    atomic_write_json(args.out, {"split": "val", "shots": args.shots, "seeds": args.seeds, "rows": rows,
                                 "seconds": time.perf_counter() - start,
                                 "command": " ".join(["bench/pocket_locality.py",
                                                      *(argv if argv is not None else sys.argv[1:])]),
                                 "environment": environment(torch.device("cpu"), args.threads)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
