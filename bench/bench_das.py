"""Benchmark: DAS on a batch against the frozen backbone's forward pass on the same batch.

DAS runs once per training iteration on the k normal shots (Algorithm 1, line 4), next to a
frozen ViT-B-16-plus-240 forward over them, so its cost only matters relative to that
forward. This script times both on the same batch (default 16 images at 240 x 240) and
reports the ratio; the project's budget is 10 %.

    .venv/bin/python bench/bench_das.py --device cpu            # prints a table, writes JSON
    .venv/bin/python bench/bench_das.py --device cuda --out runs/bench/das_cuda.json

Each round times the forward and every DAS row once, one after the other, so that on a
shared machine they see the same background load; the table gives medians and minima over
``--repeats`` rounds (after ``--warmup`` untimed ones) and the ratios of both. The images
are toy shots (half object ``washer`` with its precomputed foreground, half texture
``weave``) so that foreground placement and redraws behave as in training; ``--data
random`` uses smoothed noise instead and needs no dataset. The backbone has random
weights (``pretrained=None``): its speed is that of the real model. Not a test: nothing
fails, the JSON records ``within_budget``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vtfusion.das import ALL_KINDS, AnomalyTypeSelector, DASConfig, synthesize_batch
from vtfusion.foreground import category_foreground

BUDGET = 0.10
LAYERS = [2, 5, 8, 11]  # 0-indexed blocks 3, 6, 9, 12 (DESIGN §1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Wall time of one ``fn()`` call in seconds (CUDA work included)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def load_batch(kind: str, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``batch x 3 x size x size`` images in [0, 1], their foregrounds and a description."""
    if kind == "random":
        g = torch.Generator().manual_seed(0)
        x = F.avg_pool2d(torch.rand(batch, 3, size + 4, size + 4, generator=g), 5, stride=1)
        return x, torch.ones(batch, 1, size, size, dtype=torch.bool), "smoothed random images"
    from vtfusion.data import load_dataset
    from vtfusion.data.toy import ensure_toy_dataset

    ensure_toy_dataset()
    half = batch // 2
    parts, fgs = [], []
    for category, n in (("washer", half), ("weave", batch - half)):
        ds = load_dataset("toy", category, "train", image_size=size)
        imgs = torch.stack([ds[i % len(ds)]["image"] for i in range(n)])
        parts.append(imgs)
        fgs.append(category_foreground(imgs, "toy", category))
    return torch.cat(parts), torch.cat(fgs), f"toy shots: {half} washer (object) + {batch - half} weave (texture)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (forward + every DAS row)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--data", choices=["toy", "random"], default="toy")
    ap.add_argument("--out", default="runs/bench/das.json", help="JSON result file")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for, but torch sees no CUDA device; run with --device cpu", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images, fg, described = load_batch(args.data, args.batch, args.size)
    images, fg = images.to(device), fg.to(device)
    cfg = DASConfig()
    gen = torch.Generator(device=device).manual_seed(0)

    import open_clip

    model = open_clip.create_model("ViT-B-16-plus-240", pretrained=None).to(device).eval()

    def forward():
        with torch.no_grad():
            model.visual.forward_intermediates(images, indices=LAYERS, intermediates_only=True,
                                               output_fmt="NCHW", stop_early=True)

    selector = AnomalyTypeSelector.from_config(cfg)

    def das(kind):
        # "mixed": one type per image drawn by the training selector (what the trainer does).
        kinds = selector.sample(args.batch, gen) if kind == "mixed" else kind
        synthesize_batch(images, gen, cfg, foreground=fg, kinds=kinds)

    jobs = {"forward": forward, **{k: (lambda k=k: das(k)) for k in ("mixed",) + ALL_KINDS}}
    for _ in range(args.warmup):
        for fn in jobs.values():
            fn()
    # Interleaved rounds: on a shared machine every job sees the same background load.
    samples: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.repeats):
        for name, fn in jobs.items():
            samples[name].append(timed(fn, device))
    vit_t, vit_best = statistics.median(samples["forward"]), min(samples["forward"])
    rows = [{"das": name, "median_s": statistics.median(v), "min_s": min(v), "samples_s": v,
             "ratio_to_forward": statistics.median(v) / vit_t, "ratio_of_minima": min(v) / vit_best}
            for name, v in samples.items() if name != "forward"]
    worst = max(r["ratio_to_forward"] for r in rows)
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = platform.processor() or platform.machine()
    print(f"DAS vs ViT-B-16-plus-240 forward (random weights), batch {args.batch} x 3 x {args.size} x {args.size}, "
          f"device {args.device} ({dev_name}), torch threads {torch.get_num_threads()} "
          f"(DAS: cpu_threads={cfg.cpu_threads}); images: {described}")
    print(f"{'':<11}{'median ms':>11}{'min ms':>10}{'ratio (medians)':>17}{'ratio (minima)':>16}")
    for r in rows:
        print(f"{r['das']:<11}{r['median_s'] * 1e3:>11.1f}{r['min_s'] * 1e3:>10.1f}"
              f"{r['ratio_to_forward'] * 100:>16.1f}%{r['ratio_of_minima'] * 100:>15.1f}%")
    print(f"{'forward':<11}{vit_t * 1e3:>11.1f}{vit_best * 1e3:>10.1f}")
    print(f"worst ratio {worst * 100:.1f}% (budget {BUDGET * 100:.0f}%): "
          f"{'within budget' if worst < BUDGET else 'OVER BUDGET'}; {args.repeats} interleaved rounds, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    result = {
        "batch": args.batch, "size": args.size, "device": args.device, "device_name": dev_name,
        "threads": torch.get_num_threads(), "das_cpu_threads": cfg.cpu_threads, "data": described, "repeats": args.repeats,
        "vit": {"model": "ViT-B-16-plus-240", "weights": "random (pretrained=None)", "layers": LAYERS,
                "median_s": vit_t, "min_s": vit_best, "samples_s": samples["forward"]},
        "das": rows, "worst_ratio": worst, "budget": BUDGET, "within_budget": worst < BUDGET,
        "torch": torch.__version__, "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "das_config": cfg.to_dict(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
