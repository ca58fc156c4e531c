"""Forward time of the frozen backbone and the adaptive heads (AIE, prototypes, ATE).

Measures one inference forward of a batch, split by component:

* ``backbone``: frozen CLIP image encoder, multi-level tokens (no grad);
* ``aie``: the adaptive image encoder's linear maps and conv adaptors;
* ``prototypes_mv``: nearest prototype over all N (Eq. 2) and the vision map (Eq. 5);
* ``ate_mt``: the ATE adapter on the cached class embeddings and the text map (Eq. 6);

plus, reported apart, the once-per-category cost of embedding the prompt ensemble with the
frozen text encoder (cached afterwards, so not part of a batch's forward).

Weights are random unless ``--weights`` says otherwise: speed does not depend on them.

Usage::

    .venv/bin/python bench/bench_forward.py                      # ViT-B-16-plus-240, batch 16, 2 threads
    .venv/bin/python bench/bench_forward.py --arch tiny --layers 1 2 3 4 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from vtfusion.backbone import build_backbone
from vtfusion.config import BackboneConfig
from vtfusion.model import AdaptiveImageEncoder, AdaptiveTextEncoder, PrototypeBank, text_map
from vtfusion.paths import PROJECT_ROOT

COMPONENTS = ("backbone", "aie", "prototypes_mv", "ate_mt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="ViT-B-16-plus-240", help="open_clip model name or 'tiny'")
    p.add_argument("--weights", default="random", help="'random', an open_clip tag or a file path")
    p.add_argument("--layers", type=int, nargs="+", default=[3, 6, 9, 12], help="1-indexed blocks")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--object-name", default="metal washer", help="prompt word for the text branch")
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "runs" / "bench" / "forward.json")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device):
    """Run ``fn()``; return its result and the wall time in seconds."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = BackboneConfig(arch=args.arch, weights=args.weights, layers=tuple(args.layers), precision=args.precision)

    (backbone, build_s) = timed(lambda: build_backbone(cfg).to(device), device)
    aie = AdaptiveImageEncoder.from_backbone(backbone).to(device).eval()
    ate = AdaptiveTextEncoder.from_backbone(backbone).to(device).eval()
    bank = PrototypeBank(backbone.num_levels, backbone.embed_dim, backbone.grid_size).to(device)
    size = backbone.image_size
    images = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    # Once per category: the prompt ensemble through the frozen text encoder (then cached).
    class_emb, text_s = timed(lambda: ate.class_embeddings(args.object_name, backbone), device)
    with torch.no_grad():
        bank.build(aie(backbone(images[:2])))  # prototypes from two "shots"

    times: dict[str, list[float]] = {c: [] for c in COMPONENTS}
    with torch.no_grad():
        for it in range(args.warmup + args.repeats):
            tokens, t_bb = timed(lambda: backbone(images), device)
            feats, t_aie = timed(lambda: aie(tokens), device)
            _, t_mv = timed(lambda: bank(feats), device)
            _, t_mt = timed(lambda: text_map(feats, ate(class_emb), ate.cfg.logit_scale), device)
            if it >= args.warmup:
                for c, t in zip(COMPONENTS, (t_bb, t_aie, t_mv, t_mt)):
                    times[c].append(t)

    means = {c: statistics.mean(v) for c, v in times.items()}
    total = sum(means.values())
    heads = total - means["backbone"]
    rows = [(c, means[c], statistics.pstdev(times[c]), means[c] / total) for c in COMPONENTS]
    print(f"{args.arch} ({args.weights}), batch {args.batch} x 3 x {size} x {size}, device {args.device}, "
          f"{args.threads} threads, precision {args.precision}, {args.repeats} repeats after {args.warmup} warm-up")
    print(f"{'component':<15}{'mean s':>10}{'std s':>10}{'share':>9}")
    for c, m, s, share in rows:
        print(f"{c:<15}{m:>10.4f}{s:>10.4f}{share:>9.1%}")
    print(f"{'total':<15}{total:>10.4f}{'':>10}{1:>9.1%}")
    print(f"backbone {means['backbone'] / total:.1%} of the forward, heads (AIE + prototypes + ATE) "
          f"{heads / total:.1%}; per image {total / args.batch * 1000:.1f} ms")
    print(f"once per category: prompt ensemble embedding {text_s:.2f} s; model build {build_s:.2f} s")

    result = {
        "arch": args.arch, "weights": args.weights, "layers": list(args.layers), "batch": args.batch,
        "image_size": size, "device": args.device, "threads": args.threads, "precision": args.precision,
        "warmup": args.warmup, "repeats": args.repeats,
        "seconds": {c: {"mean": m, "std": s, "share": share, "all": times[c]} for c, m, s, share in rows},
        "total_s": total, "backbone_share": means["backbone"] / total, "heads_share": heads / total,
        "text_ensemble_once_s": text_s, "build_s": build_s,
        "env": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                "processor": platform.processor() or platform.machine(), "argv": sys.argv},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
