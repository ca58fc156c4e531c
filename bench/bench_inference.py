"""Inference throughput and peak memory: test images per second, end to end and per stage.

One MVTec-sized category (generated PNGs at the real side and count, see
``bench/mvtec_sized.py``), the paper profile's ViT-B-16-plus-240 with RANDOM weights (same
compute as the real ones; the maps mean nothing) and untrained heads (same compute as
trained ones). The evaluation (``predict_split`` + ``evaluate_maps``, as ``evaluate_model``) runs four
times:

* ``plain``: no cache: decode + resize (DataLoader workers), backbone in float32, heads, metrics;
* ``cold``: empty caches: as plain, plus writing the uint8 images and the float16 tokens;
* ``warm disk``: a new cache object (as a new process would): images and tokens from the
  memory-mapped files, so only heads and metrics compute;
* ``warm memory``: the same cache object again (in-process LRU).

Stages: ``images`` (decode + resize, or cache read), ``backbone`` (tokens computed or
read), ``heads`` (AIE, prototypes, ATE, MPF), ``metrics`` (all of DESIGN §7). The text
ensemble is embedded once per category before the passes and reported apart (cold: frozen
text encoder; warm: read from the cache). The largest difference between the cached and
the plain maps and metrics is printed (float16 tokens).

Usage::

    .venv/bin/python bench/bench_inference.py --max-test 16                 # CPU smoke run
    .venv/bin/python bench/bench_inference.py --device cuda --category pill  # whole category
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchutil  # noqa: E402
import mvtec_sized  # noqa: E402

from vtfusion.backbone import build_backbone  # noqa: E402
from vtfusion.cache import FeatureCache, PerfSettings  # noqa: E402
from vtfusion.data import load_dataset  # noqa: E402
from vtfusion.evaluate import predict_split  # noqa: E402
from vtfusion.metrics import evaluate_maps  # noqa: E402
from vtfusion.train import build_model  # noqa: E402
from vtfusion.viz import format_table  # noqa: E402

STAGES = ("images", "backbone", "heads", "metrics")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = benchutil.argument_parser(__doc__, "inference")
    p.add_argument("--category", default="bottle", choices=mvtec_sized.CATEGORIES)
    p.add_argument("--max-test", type=int, default=None, help="test images (default: the category's real count)")
    p.add_argument("--batch", type=int, default=32)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = benchutil.resolve_device(args.device)
    threads = benchutil.setup_threads(args.threads)
    view = mvtec_sized.ensure_view((args.category,), args.max_test, args.data_root)
    cfg = benchutil.paper_random_config(device)
    cache_dir = args.out.with_suffix("").parent / (args.out.stem + "_cache")
    shutil.rmtree(cache_dir, ignore_errors=True)  # cold means cold
    settings = PerfSettings(root=cache_dir, workers=args.workers, compile=args.compile)
    peaks = benchutil.PeakMemory(device)

    t0 = time.perf_counter()
    backbone = build_backbone(cfg.backbone, seed=0).to(device)
    model = build_model(cfg, dataset="mvtec", category=args.category, backbone=backbone, device=device)
    shots = load_dataset("mvtec", args.category, "train", view, cfg.data.image_size).load_shots(2, 0)
    model.build_prototypes(backbone(shots.to(device)))
    build_s = time.perf_counter() - t0

    text = {}
    for name, cache in (("cold", FeatureCache(settings)), ("warm", FeatureCache(settings))):
        model.ate.clear_cache()
        start = time.perf_counter()
        cache.prime_text(model)
        model.text_features()
        benchutil.sync(device)
        text[name] = time.perf_counter() - start

    passes = [("plain", FeatureCache(PerfSettings(images=False, tokens=False, memory_mb=0, root=cache_dir,
                                                   workers=args.workers, compile=args.compile)))]
    warm = FeatureCache(settings)
    passes += [("cold", FeatureCache(settings)), ("warm disk", warm), ("warm memory", warm)]
    results, preds = {}, {}
    for name, cache in passes:
        timings: dict[str, float] = {}
        with peaks.measure(name):
            start = time.perf_counter()
            split = load_dataset("mvtec", args.category, "test", view, cfg.data.image_size)
            pred = predict_split(model, split, args.batch, cache=cache, timings=timings)
            t_metrics = time.perf_counter()  # what evaluate_model does, keeping the maps
            metrics = evaluate_maps(pred["final"], pred["masks"], pred["labels"], image_scores=pred["score"])
            timings["metrics"] = time.perf_counter() - t_metrics
            wall = time.perf_counter() - start
        preds[name] = pred
        results[name] = {"wall_s": wall, "images_per_s": len(split) / wall, "stages_s": timings,
                         "metrics": metrics, "cache_stats": dict(cache.stats)}
        print(f"{name}: {len(split)} images in {wall:.1f}s", flush=True)
    n = len(split)
    max_map_diff = float((preds["warm disk"]["final"] - preds["plain"]["final"]).abs().max())
    max_metric_diff = max(abs(results["warm disk"]["metrics"][k] - results["plain"]["metrics"][k])
                          for k in results["plain"]["metrics"])

    rows = []
    for name, r in results.items():
        st = r["stages_s"]
        rows.append((name, f"{r['wall_s']:.2f}", f"{r['images_per_s']:.2f}",
                     *(f"{st.get(s, 0.0):.2f}" for s in STAGES), f"{results['plain']['wall_s'] / r['wall_s']:.1f}x"))
    print(f"\nInference, {args.category} ({n} test images of {mvtec_sized.MVTEC_SIDES[args.category]} px PNG, "
          f"mean {mvtec_sized.png_stats(view, (args.category,))['mean_mb']:.2f} MB), "
          f"{cfg.backbone.arch} RANDOM weights, device {device}, {threads} threads, batch {args.batch}, "
          f"precision {cfg.backbone.precision if device.type == 'cuda' else 'fp32'}, "
          f"workers {settings.num_workers}, compile {args.compile}")
    print(format_table(rows, ("pass", "wall s", "images/s", *(f"{s} s" for s in STAGES), "speed-up vs plain")))
    print(f"text ensemble (once per category): {text['cold']:.2f}s computed, {text['warm']:.3f}s from the cache; "
          f"model build {build_s:.1f}s")
    print(f"cached (float16 tokens) vs plain: max |final map diff| {max_map_diff:.2e}, "
          f"max |metric diff| {max_metric_diff:.2e}")
    print("peak memory (host RSS of the main process / GPU allocated, MB):")
    print(format_table(peaks.rows(), ("pass", "host MB", "GPU MB")))
    cache_mb = sum(p.stat().st_size for p in cache_dir.rglob("*.npy")) / 1e6
    print(f"cache on disk: {cache_mb:.1f} MB for {n} images ({cache_mb / n:.2f} MB per image)")
    benchutil.write(args.out, {
        "benchmark": "inference", "environment": benchutil.environment(device, threads),
        "config": cfg.to_dict(), "category": args.category, "n_test": n, "batch": args.batch,
        "workers": settings.num_workers, "compile": args.compile, "passes": results, "text_s": text,
        "build_s": build_s, "max_map_diff_cached_vs_plain": max_map_diff,
        "max_metric_diff_cached_vs_plain": max_metric_diff, "peak_memory": peaks.results,
        "cache_disk_mb": cache_mb, "png": mvtec_sized.png_stats(view, (args.category,))})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
