"""Does the pocket CLIP's image tower carry "normal vs damaged" at all? A linear probe.

The zero-shot AUROC of the pre-training curves mixes two things: whether the image
features separate defect-free from damaged images, and whether the text tower's "flawless"
and "damaged" prompts point along that direction. A logistic-regression probe
(:func:`vtfusion.pocket.pretrain.probe_auroc`) on the features answers the first alone.

For each model (released weights, and the same architecture at its random init) and each
family group (the training families, the held-out ones), ``--batches`` fixed validation
batches of the pocket world (the pre-training's validation stream, never trained on) are
embedded; the probe is fit on the first half of the images and scored on the second half.
Two feature sets: the image embedding (what the contrastive loss trains), and the mean of
the patch tokens of the backbone's levels (blocks 1-4, concatenated: what VTFusion's
vision branch reads). Beside them, the patch-level zero-shot AUROC
(:func:`~vtfusion.pocket.pretrain.patch_zero_shot_auroc`): each patch token against the
"flawless" and "damaged" prompts, scored on the patches a defect touches.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pocket_probe.py --threads 1 --weights pocket-v1 pocket-v2
    OMP_NUM_THREADS=1 .venv/bin/python bench/pocket_probe.py --run runs/pocket --out runs/bench/pocket_probe_run.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import BACKBONES, environment  # noqa: E402

from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.pocket.model import build_pocket_clip, load_released, pocket_tokenizer  # noqa: E402
from vtfusion.pocket.pretrain import (  # noqa: E402
    VAL_STREAM,
    image_embeddings,
    load_trained,
    normalise,
    patch_zero_shot_auroc,
    probe_auroc,
    zero_shot,
)
from vtfusion.pocket.world import HELD_OUT_FAMILIES, TRAIN_FAMILIES, sample_batch  # noqa: E402


@torch.no_grad()
def level_means(model, images: torch.Tensor, layers: tuple[int, ...]) -> torch.Tensor:
    """``B x (L * width)``: the mean patch token of each of ``layers`` (1-indexed blocks), concatenated."""
    out = model.visual.forward_intermediates(normalise(images), indices=[i - 1 for i in layers],
                                             intermediates_only=True)["image_intermediates"]
    return torch.cat([t.float().mean((2, 3)) for t in out], 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", default=["pocket-v1"], help="released weights to probe")
    p.add_argument("--run", type=Path, default=None,
                   help="probe this `vtfusion pocket pretrain` run folder's checkpoint instead of released weights")
    p.add_argument("--batches", type=int, default=8, help="validation batches of 64 images per family group")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/bench/pocket_probe.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    layers = BACKBONES["pocket"].layers
    tokenizer = pocket_tokenizer()
    start = time.perf_counter()
    groups = {"train_families": TRAIN_FAMILIES, "held_out": HELD_OUT_FAMILIES}
    data = {g: [sample_batch(VAL_STREAM + 100 + j, i, 64, families=fams) for i in range(args.batches)]
            for j, (g, fams) in enumerate(groups.items())}
    rows = []
    models = [(str(args.run), load_trained(args.run)[0])] if args.run else [(w, load_released(w)) for w in args.weights]
    for name, model in (*models, ("random init", build_pocket_clip(0).eval())):
        for group, batches in data.items():
            images = torch.cat([b.images for b in batches])
            labels = torch.cat([b.damaged for b in batches])
            half = len(labels) // 2
            embeddings = [image_embeddings(model, b.images) for b in batches]  # once, for zero-shot and probe
            zero = [zero_shot(model, tokenizer, b, features=e)["auroc"] for b, e in zip(batches, embeddings)]
            patch = [patch_zero_shot_auroc(model, tokenizer, b) for b in batches]
            row = {"model": name, "group": group, "images": len(labels), "damaged_share": float(labels.float().mean()),
                   "zero_shot_auroc": sum(zero) / len(zero), "patch_zero_shot_auroc": sum(patch) / len(patch)}
            for feature, x in (("embedding", torch.cat(embeddings)),
                               ("level_means", level_means(model, images, layers))):
                row[f"probe_auroc_{feature}"] = probe_auroc(x[:half], labels[:half], x[half:], labels[half:])
            rows.append(row)
            print(f"{name:>12} {group:>15}: zero-shot {row['zero_shot_auroc']:.3f} (patches "
                  f"{row['patch_zero_shot_auroc']:.3f}), probe on the embedding "
                  f"{row['probe_auroc_embedding']:.3f}, on the level means {row['probe_auroc_level_means']:.3f}",
                  flush=True)
    record = {"argv": sys.argv, "environment": environment(torch.device("cpu"), args.threads), "layers": list(layers),
              "rows": rows, "seconds": time.perf_counter() - start}
    atomic_write_json(args.out, record)
    print(f"wrote {args.out} ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
