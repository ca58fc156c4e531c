"""bf16 against fp32: how much the frozen backbone's reduced precision moves the maps and the metrics.

The paper profile runs the backbone in fp32 by default (the paper states no reduced
precision); ``BackboneConfig.precision="bf16"`` is a speed switch (CUDA autocast). This
benchmark trains one model (quick schedule, project recipe) and scores the toy test split
with backbone tokens computed in fp32 and in bf16 autocast on the chosen device (CPU
autocast when there is no GPU: the rounding is the same bfloat16 format), then reports the
largest and mean absolute differences of the final maps, the image scores, and the change
of image AUROC, pixel AUROC and AUPRO, with the backbone's time per image in each precision.

    .venv/bin/python bench/bench_precision.py --backbone pocket --category washer
    .venv/bin/python bench/bench_precision.py --backbone vitb_random --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recipe import backbone_config, configs  # noqa: E402
from benchutil import environment, resolve_device, sync  # noqa: E402

from vtfusion.backbone import build_backbone  # noqa: E402
from vtfusion.cache import FeatureCache  # noqa: E402
from vtfusion.data import load_dataset  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.metrics import evaluate_maps  # noqa: E402
from vtfusion.runs import train_or_load  # noqa: E402


def tokens_in(backbone, images: torch.Tensor, precision: str, device: torch.device, batch: int = 16):
    """Backbone tokens with autocast to bfloat16 (``bf16``) or none (``fp32``); returns tokens and seconds.

    One batch runs untimed first: the first autocast call on a GPU picks its kernels, which
    would otherwise be charged to whichever precision runs first."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        backbone(images[:batch].to(device))
    sync(device)
    out, start = [], time.perf_counter()
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out.append(backbone(x).float())
    sync(device)
    return torch.cat(out), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="pocket", choices=("pocket", "tiny", "vitb_random"))
    p.add_argument("--category", default="washer")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/bench/precision.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    _, cfg = configs(backbone_config(args.backbone), args.iterations)
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, device=device.type))
    backbone = build_backbone(cfg.backbone).to(device)
    model, _ = train_or_load(cfg, "toy", args.category, 2, 0, root="runs/bench/precision/runs", backbone=backbone,
                             progress=False, cache=FeatureCache.from_env())
    model.eval()
    test = load_dataset("toy", args.category, "test")
    data = FeatureCache.disabled().images(test)
    images = data.images.float() / 255
    size = tuple(images.shape[-2:])
    out = {}
    for precision in ("fp32", "bf16"):
        tokens, seconds = tokens_in(model.backbone, images, precision, device)
        with torch.no_grad():
            pred = model.forward_tokens(tokens.to(device), size)
        final = pred["final"][:, 0].float().cpu()
        out[precision] = {"final": final, "score": pred["score"].float().cpu(), "seconds": seconds,
                          "metrics": evaluate_maps(final, data.masks.float(), torch.tensor(test.labels))}
    diff = (out["bf16"]["final"] - out["fp32"]["final"]).abs()
    score_diff = (out["bf16"]["score"] - out["fp32"]["score"]).abs()
    report = {
        "backbone": dataclasses.asdict(cfg.backbone), "category": args.category, "device": str(device),
        "images": len(test), "map_max_abs_diff": float(diff.max()), "map_mean_abs_diff": float(diff.mean()),
        "score_max_abs_diff": float(score_diff.max()),
        "metrics": {p: out[p]["metrics"] for p in out},
        "metric_change": {k: out["bf16"]["metrics"][k] - out["fp32"]["metrics"][k]
                          for k in ("image_auroc", "pixel_auroc", "aupro")},
        "backbone_seconds_per_image": {p: out[p]["seconds"] / len(test) for p in out},
        "environment": environment(device, args.threads),
    }
    for key in ("map_max_abs_diff", "map_mean_abs_diff", "score_max_abs_diff", "metric_change",
                "backbone_seconds_per_image"):
        print(f"{key}: {report[key]}")
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
