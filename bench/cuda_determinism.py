"""Does ``TrainConfig.deterministic`` make a CUDA training run repeat bit for bit?

Trains the same cell twice with deterministic algorithms on and twice with them off (toy
``--category``, k = 2, seed 0, the project recipe, ``--iterations`` steps, the random
ViT-B-16-plus-240 by default), and reports for each pair the largest absolute difference of
the trained parameters and of the test split's final maps. On CPU both pairs are expected to
repeat exactly; on CUDA only the deterministic pair is guaranteed to.

    python bench/cuda_determinism.py --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import BACKBONES, environment, quick_config, resolve_device  # noqa: E402

from vtfusion.backbone import build_backbone  # noqa: E402
from vtfusion.cache import FeatureCache  # noqa: E402
from vtfusion.data import load_dataset  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.train import build_model, train_vtfusion  # noqa: E402


def train_once(cfg, backbone, shots: torch.Tensor, category: str, images: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Parameters after training and the final maps of ``images``, both on the CPU."""
    model = build_model(cfg, dataset="toy", category=category, backbone=backbone, device=cfg.train.device)
    train_vtfusion(model, shots, cfg, "toy", category, progress=False)
    model.eval()
    device = next(model.aie.parameters()).device
    with torch.no_grad():
        maps = torch.cat([model(images[i:i + 16].to(device))["final"].float().cpu() for i in range(0, len(images), 16)])
    params = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    return params, maps


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="vitb_random", choices=tuple(BACKBONES))
    p.add_argument("--category", default="washer")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", type=Path, default=Path("runs/bench/cuda_determinism.json"))
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    base = quick_config(BACKBONES[args.backbone], args.iterations, "project")
    backbone = build_backbone(base.backbone, seed=0).to(device)
    train = load_dataset("toy", args.category, "train")
    shots = train.load_shots(2, 0)
    images = FeatureCache.disabled().images(load_dataset("toy", args.category, "test")).images.float() / 255
    report = {"argv": sys.argv, "backbone": args.backbone, "iterations": args.iterations, "pairs": {},
              "environment": environment(device, torch.get_num_threads())}
    for deterministic in (True, False):
        cfg = base.replace(train=dataclasses.replace(base.train, device=device.type, deterministic=deterministic, seed=0))
        start = time.perf_counter()
        (pa, ma), (pb, mb) = (train_once(cfg, backbone, shots, args.category, images) for _ in range(2))
        row = {"param_max_abs_diff": max_diff(pa, pb), "map_max_abs_diff": float((ma - mb).abs().max()),
               "seconds_per_run": (time.perf_counter() - start) / 2}
        report["pairs"]["deterministic" if deterministic else "default"] = row
        print(f"deterministic={deterministic}: {row}", flush=True)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
