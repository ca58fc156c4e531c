"""Time :func:`vtfusion.metrics.evaluate_maps` on synthetic MVTec-sized categories.

Scenarios (maps and masks at 240 x 240, the evaluation resolution of DESIGN §7):

* ``bottle``: 83 test images (20 good, 63 defective), a typical category;
* ``pill``: 167 test images (26 good, 141 defective), MVTec AD's largest test split;
* ``mvtec``: all 15 categories with MVTec AD's test-split sizes (1,725 images), each
  category evaluated on its own, as an evaluation run does; the time is the sum.

Each scenario runs on the CPU and, when available, on CUDA. ``sklearn`` rows time what
scikit-learn needs for the pixel metrics alone (``roc_auc_score``,
``average_precision_score``, ``precision_recall_curve``) on the same data, as a yardstick
(evaluate_maps computes those plus AUPRO and the image metrics).

The maps are synthetic (smoothed noise plus signal on random elliptic defects): the
timings depend on the number of pixels and of distinct scores, not on the model.

Usage::

    .venv/bin/python bench/bench_metrics.py                 # table + runs/bench/metrics.json
    .venv/bin/python bench/bench_metrics.py --scenarios bottle --devices cpu --repeats 3
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

from vtfusion import __version__
from vtfusion.metrics import METRIC_KEYS, evaluate_maps

sys.path.insert(0, str(Path(__file__).resolve().parent))
# MVTec AD test split: category -> (good, defective) images, kept once beside the generator.
from mvtec_sized import MVTEC_TEST_SPLIT  # noqa: E402

SCENARIOS = {
    "bottle": ["bottle"],
    "pill": ["pill"],
    "mvtec": list(MVTEC_TEST_SPLIT),
}


def synthetic_category(n_good: int, n_defective: int, size: int, seed: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``N x size x size`` float32 maps and bool masks; good images first, 1-3 ellipses per defect image."""
    gen = torch.Generator().manual_seed(seed)
    n = n_good + n_defective
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n_good, n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            cy, cx = (torch.rand(2, generator=gen) * size).tolist()
            ry, rx = (size * (0.01 + 0.08 * torch.rand(2, generator=gen))).tolist()
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    noise = torch.randn(n, 1, size // 8, size // 8, generator=gen)
    noise = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    maps = 0.5 * noise + 0.2 * torch.randn(n, size, size, generator=gen) + 1.5 * masks.float()
    return maps.to(device), masks.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_evaluate(maps: torch.Tensor, masks: torch.Tensor) -> tuple[float, dict[str, float]]:
    _sync(maps.device)
    start = time.perf_counter()
    out = evaluate_maps(maps, masks)
    _sync(maps.device)
    return time.perf_counter() - start, out


def time_sklearn(maps: torch.Tensor, masks: torch.Tensor) -> float:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    s, y = maps.cpu().numpy().ravel(), masks.cpu().numpy().ravel()
    start = time.perf_counter()
    roc_auc_score(y, s)
    average_precision_score(y, s)
    precision_recall_curve(y, s)
    return time.perf_counter() - start


def run_scenario(name: str, device: torch.device, size: int, repeats: int, sklearn: bool) -> list[dict]:
    rows = []
    categories = SCENARIOS[name]
    data = [synthetic_category(*MVTEC_TEST_SPLIT[c], size=size, seed=k, device=device)
            for k, c in enumerate(categories)]
    n_images = sum(m.shape[0] for m, _ in data)
    n_pixels = sum(m.numel() for m, _ in data)
    times, metrics = [], {}
    for _ in range(repeats):
        total = 0.0
        for cat, (maps, masks) in zip(categories, data):
            seconds, metrics[cat] = time_evaluate(maps, masks)
            total += seconds
        times.append(total)
    rows.append(dict(scenario=name, method="evaluate_maps", device=str(device), categories=len(categories),
                     images=n_images, pixels=n_pixels, seconds=statistics.median(times), all_seconds=times,
                     metrics=metrics))
    if sklearn and device.type == "cpu" and name != "mvtec":
        times = [sum(time_sklearn(m, g) for m, g in data) for _ in range(repeats)]
        rows.append(dict(scenario=name, method="sklearn pixel AUROC+AP+PR", device="cpu",
                         categories=len(categories), images=n_images, pixels=n_pixels,
                         seconds=statistics.median(times), all_seconds=times))
    return rows


def environment() -> dict:
    env = dict(
        vtfusion=__version__, torch=torch.__version__, python=platform.python_version(),
        platform=platform.platform(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
    )
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench/metrics.json", help="JSON result file (default: %(default)s)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--devices", nargs="+", default=None,
                        help="cpu and/or cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--size", type=int, default=240, help="map side in pixels (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per scenario; the median is reported")
    parser.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn yardstick rows")
    args = parser.parse_args(argv)

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda requested but torch.cuda.is_available() is False")
    if "cuda" in devices:  # CUDA context creation and kernel loading are not the metric's time
        evaluate_maps(*synthetic_category(2, 2, 32, seed=0, device=torch.device("cuda")))

    rows = []
    for name in args.scenarios:
        for dev in devices:
            rows += run_scenario(name, torch.device(dev), args.size, args.repeats, not args.no_sklearn)

    header = f"{'scenario':<8} {'method':<26} {'device':<6} {'images':>6} {'Mpixels':>8} {'seconds':>8} {'Mpix/s':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['scenario']:<8} {r['method']:<26} {r['device']:<6} {r['images']:>6} {r['pixels'] / 1e6:>8.1f} "
              f"{r['seconds']:>8.2f} {r['pixels'] / 1e6 / r['seconds']:>7.1f}")
    # Agreement across devices: the same synthetic data must give the same metrics.
    by_key: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["method"] == "evaluate_maps":
            for cat, m in r["metrics"].items():
                by_key.setdefault((r["scenario"], cat), {})[r["device"]] = m
    worst = max((abs(a[k] - b[k]) for d in by_key.values() if len(d) > 1
                 for a, b in [tuple(d.values())[:2]] for k in METRIC_KEYS), default=None)
    if worst is not None:
        print(f"max |CPU - CUDA| over all metrics: {worst:.2e}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(dict(benchmark="metrics.evaluate_maps", size=args.size, repeats=args.repeats,
                                   environment=environment(), max_cpu_cuda_difference=worst, results=rows),
                              indent=2))
    tmp.replace(out)  # atomic: a reader never sees half a file
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
