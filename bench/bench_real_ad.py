"""VTFusion before and after training on the real samples in ../shared/datasets/real_ad.

A benchmark, not a test: it trains one model per category (k-shot, one seed) and reports
image AUROC, pixel AUROC and AUPRO of the untrained and the trained model, with the
iteration count and wall times. The backbone is the paper's architecture with RANDOM
weights unless --weights says otherwise, so the numbers measure the pipeline on real
defects, never the paper's quality.

    python bench/bench_real_ad.py --iterations 300 --out runs/bench/real_ad.json
    python bench/bench_real_ad.py --variants ate ate_aie --out runs/bench/real_ad_ablation.json

The frozen backbone's test tokens are computed once per category and reused for both
models (the backbone is the same before and after training). The JSON is rewritten
(atomically) after every (category, variant) record, and a rerun with the same --out and
settings skips the records already there, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from vtfusion import __version__
from vtfusion.backbone import build_backbone
from vtfusion.cache import compute_tokens, decode_split
from vtfusion.config import get_profile
from vtfusion.data import load_dataset
from vtfusion.io import atomic_write_json
from vtfusion.metrics import evaluate_maps
from vtfusion.train import build_model, train_vtfusion
from vtfusion.viz import format_table


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, size: int, batch: int) -> dict:
    model.eval()
    device = next(model.aie.parameters()).device
    finals = [model.forward_tokens(tokens[i:i + batch].to(device), (size, size))["final"].float().cpu()
              for i in range(0, len(tokens), batch)]
    return evaluate_maps(torch.cat(finals)[:, 0], masks, labels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--categories", nargs="+", default=["tire", "magnetic_tile"])
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--weights", default="random", help="random (default), laion400m_e32 or a file")
    p.add_argument("--variants", nargs="+", default=["full"], choices=["full", "ate_aie", "ate"],
                   help="model variants (Table II rows); test tokens are shared between them")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/bench/real_ad.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    base = get_profile("paper")
    cfg = base.replace(
        data=dataclasses.replace(base.data, dataset="real_ad", shots=args.k, seeds=(args.seed,)),
        backbone=dataclasses.replace(base.backbone, weights=args.weights),
        train=dataclasses.replace(base.train, iterations=args.iterations, seed=args.seed, device=args.device))
    start = time.perf_counter()
    backbone = build_backbone(cfg.backbone, seed=args.seed)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    backbone.to(device)
    settings = {"k": args.k, "seed": args.seed, "iterations": args.iterations, "weights": args.weights}
    results = []
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        if previous.get("settings") == settings:
            results = previous["results"]
    done = {(r["category"], r["variant"]) for r in results}

    def save() -> None:
        payload = {"config": cfg.to_dict(), "settings": settings, "vtfusion_version": __version__,
                   "device": str(device), "platform": platform.platform(), "torch": torch.__version__,
                   "threads": args.threads, "argv": sys.argv,
                   "wall_seconds": time.perf_counter() - start, "results": results}
        atomic_write_json(args.out, payload)

    for category in args.categories:
        if all((category, v) in done for v in args.variants):
            print(f"{category}: all variants already in {args.out}, skipped", flush=True)
            continue
        test = load_dataset("real_ad", category, "test", image_size=cfg.data.image_size)
        shots = load_dataset("real_ad", category, "train").load_shots(args.k, args.seed)
        t0 = time.perf_counter()
        decoded = decode_split(test)
        tokens = compute_tokens(backbone, decoded, args.batch)
        t_tokens = time.perf_counter() - t0
        masks = decoded.masks.float()
        labels = torch.tensor(test.labels)

        for variant in args.variants:
            if (category, variant) in done:
                continue
            vcfg = cfg.replace(model=dataclasses.replace(cfg.model, variant=variant))
            model = build_model(vcfg, dataset="real_ad", category=category, backbone=backbone, device=device)
            model.build_prototypes(backbone(shots.to(device)))
            untrained = evaluate(model, tokens, masks, labels, cfg.data.image_size, args.batch)
            model = build_model(vcfg, dataset="real_ad", category=category, backbone=backbone, device=device)
            result = train_vtfusion(model, shots, vcfg, "real_ad", category, progress=False)
            trained = evaluate(model, tokens, masks, labels, cfg.data.image_size, args.batch)
            h = result.history
            record = {"category": category, "variant": variant, "n_test": len(test), "untrained": untrained,
                      "trained": trained, "train_seconds": result.seconds, "test_token_seconds": t_tokens,
                      "loss_first10": sum(x["total"] for x in h[:10]) / min(10, len(h)),
                      "loss_last10": sum(x["total"] for x in h[-10:]) / min(10, len(h))}
            results.append(record)
            save()
            print(f"{category}/{variant}: tokens of {len(test)} test images {t_tokens:.0f}s, training "
                  f"{result.seconds:.0f}s, loss {record['loss_first10']:.4f} -> {record['loss_last10']:.4f}",
                  flush=True)
    rows = [(r["category"], r["variant"], name, r[name]["image_auroc"], r[name]["pixel_auroc"], r[name]["aupro"])
            for r in results if r["variant"] in args.variants and r["category"] in args.categories
            for name in ("untrained", "trained")]
    print(f"\nreal_ad, k={args.k}, seed {args.seed}, {args.iterations} iterations, variants {' '.join(args.variants)}, "
          f"backbone {cfg.backbone.arch} weights={cfg.backbone.weights}, device {device}")
    print(format_table(rows, ("category", "variant", "model", "image AUROC", "pixel AUROC", "AUPRO")))
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
