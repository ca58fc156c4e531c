"""A whole MVTec-sized run: 15 categories, 1,725 test images, 2-shot, one seed, train + evaluate.

The data are generated PNGs at MVTec AD's real sizes and counts (``bench/mvtec_sized.py``),
so the run needs no dataset; the backbone is the paper profile's ViT-B-16-plus-240 with
RANDOM weights (same compute as the real ones; metrics mean nothing). Every category is
one ``vtfusion.evaluate.run_cell`` (train with Algorithm 1, save, evaluate, write the
result), all sharing one backbone and one ``FeatureCache``, as ``vtfusion reproduce`` does.

``--iterations``, ``--categories`` and ``--max-test`` shrink the run (a CPU smoke run fits
in minutes); the table then also shows the EXTRAPOLATION to the full protocol: training
time per iteration x the paper's 1000 iterations, evaluation time per test image x each
category's real test count (categories not run take the mean rates of those that ran),
plus the measured per-category overhead (text ensemble, model build, checkpoint).
``--rerun`` then evaluates every category twice more with new results folders (the trained
models are loaded): once with the caches disabled (``FeatureCache.disabled()``: decode,
text encoder and backbone run again, as before the caches existed) and once with the warm
caches, and prints the ratio of the two, per ``run_cell`` (end to end) and per evaluation.

Usage::

    .venv/bin/python bench/bench_mvtec_sized.py --categories bottle pill --iterations 3 --max-test 6 --rerun
    .venv/bin/python bench/bench_mvtec_sized.py --device cuda --rerun          # the whole protocol
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchutil  # noqa: E402
import mvtec_sized  # noqa: E402

from vtfusion.backbone import build_backbone  # noqa: E402
from vtfusion.cache import FeatureCache, PerfSettings  # noqa: E402
from vtfusion.config import get_profile  # noqa: E402
from vtfusion.evaluate import run_cell  # noqa: E402
from vtfusion.viz import format_table  # noqa: E402

PAPER_ITERATIONS = get_profile("paper").train.iterations


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = benchutil.argument_parser(__doc__, "mvtec_sized")
    p.add_argument("--categories", nargs="+", default=list(mvtec_sized.CATEGORIES), choices=mvtec_sized.CATEGORIES)
    p.add_argument("--iterations", type=int, default=PAPER_ITERATIONS, help="training iterations per category")
    p.add_argument("--max-test", type=int, default=None, help="test images per category (default: real count)")
    p.add_argument("--k", type=int, default=2, choices=(1, 2, 4, 8))
    p.add_argument("--seed", type=int, default=0, choices=(0, 1, 2))
    p.add_argument("--rerun", action="store_true", help="then evaluate every category again (warm caches)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = benchutil.resolve_device(args.device)
    threads = benchutil.setup_threads(args.threads)
    cats = tuple(args.categories)
    t_gen = time.perf_counter()
    view = mvtec_sized.ensure_view(cats, args.max_test, args.data_root, ks=(args.k,), seeds=(args.seed,))
    gen_s = time.perf_counter() - t_gen
    cfg = benchutil.paper_random_config(device, iterations=args.iterations, k=args.k, seed=args.seed)
    work = args.out.with_suffix("").parent / (args.out.stem + "_work")
    shutil.rmtree(work, ignore_errors=True)  # a cold run: no trained model, result or cache
    cache = FeatureCache(PerfSettings(root=work / "cache", workers=args.workers, compile=args.compile))
    peaks = benchutil.PeakMemory(device)

    start = time.perf_counter()
    backbone = cache.prepare_backbone(build_backbone(cfg.backbone, seed=0).to(device))
    build_s = time.perf_counter() - start
    records = []
    with peaks.measure("whole run (train + evaluate)"):
        for cat in cats:
            r = run_cell(cfg, "mvtec", cat, args.k, args.seed, data_root=view, backbone=backbone,
                         results_root=work / "results", runs_root=work / "runs", cache=cache)
            records.append(r)
            print(f"{cat}: {r['n_test']} test images, train {r['train_seconds']:.1f}s, eval {r['eval_seconds']:.1f}s, "
                  f"cell {r['wall_seconds']:.1f}s", flush=True)
    total_s = time.perf_counter() - start
    reruns: dict[str, list[dict]] = {}
    if args.rerun:
        for name, rerun_cache in (("plain", FeatureCache.disabled(workers=args.workers)), ("warm", cache)):
            with peaks.measure(f"rerun, {'caches disabled' if name == 'plain' else 'warm caches'}"):
                reruns[name] = [run_cell(cfg, "mvtec", cat, args.k, args.seed, data_root=view, backbone=backbone,
                                         results_root=work / f"results_rerun_{name}", runs_root=work / "runs",
                                         cache=rerun_cache) for cat in cats]

    # Extrapolation to the full protocol.
    per_it = {r["category"]: r["train_seconds"] / args.iterations for r in records}
    per_img = {r["category"]: r["eval_seconds"] / r["n_test"] for r in records}
    overhead = {r["category"]: r["wall_seconds"] - r["train_seconds"] - r["eval_seconds"] for r in records}
    mean_it, mean_img = statistics.fmean(per_it.values()), statistics.fmean(per_img.values())
    mean_over = statistics.fmean(overhead.values())
    full_rows, full_total = [], 0.0
    for cat in mvtec_sized.CATEGORIES:
        n_full = sum(mvtec_sized.test_split(cat))
        train_full = PAPER_ITERATIONS * per_it.get(cat, mean_it)
        eval_full = n_full * per_img.get(cat, mean_img)
        full_total += train_full + eval_full + overhead.get(cat, mean_over)
        full_rows.append((cat, n_full, train_full, eval_full))

    rows = []
    for i, r in enumerate(records):
        st = r["eval_stage_seconds"]
        row = [r["category"], r["n_test"], f"{r['train_seconds']:.1f}", f"{r['eval_seconds']:.1f}",
               f"{st.get('images', 0):.1f}", f"{st.get('backbone', 0):.1f}", f"{st.get('heads', 0):.1f}",
               f"{st.get('metrics', 0):.1f}", f"{r['wall_seconds']:.1f}"]
        if reruns:
            row += [f"{reruns['plain'][i]['wall_seconds']:.1f}", f"{reruns['warm'][i]['wall_seconds']:.1f}"]
        rows.append(tuple(row))
    headers = ["category", "test", "train s", "eval s", "decode", "backbone", "heads", "metrics", "cell s"]
    if reruns:
        headers += ["rerun plain cell s", "rerun warm cell s"]
    n_test = sum(r["n_test"] for r in records)
    print(f"\nMVTec-sized run: {len(cats)} categories, {n_test} test images, k={args.k}, seed {args.seed}, "
          f"{args.iterations} iterations, {cfg.backbone.arch} RANDOM weights, device {device}, {threads} threads, "
          f"precision {cfg.backbone.precision if device.type == 'cuda' else 'fp32'}, "
          f"workers {cache.settings.num_workers}, compile {args.compile}")
    print(format_table(rows, headers))
    print(f"total wall {total_s:.1f}s (backbone build {build_s:.1f}s; data generation {gen_s:.1f}s, not counted)")
    if reruns:
        cell = {name: sum(r["wall_seconds"] for r in rs) for name, rs in reruns.items()}
        ev = {name: sum(r["eval_seconds"] for r in rs) for name, rs in reruns.items()}
        print(f"rerun of run_cell (model loaded), caches disabled vs warm: cells {cell['plain']:.1f}s vs "
              f"{cell['warm']:.1f}s ({cell['plain'] / cell['warm']:.1f}x); evaluation alone {ev['plain']:.1f}s vs "
              f"{ev['warm']:.1f}s ({ev['plain'] / ev['warm']:.1f}x); first (cold-cache) evaluation "
              f"{sum(r['eval_seconds'] for r in records):.1f}s")
        diffs = [abs(a["metrics"][k] - b["metrics"][k]) for a, b in zip(reruns["plain"], reruns["warm"])
                 for k in a["metrics"] if a["metrics"][k] == a["metrics"][k]]
        print(f"max |metric difference| plain vs cached (float16 tokens): {max(diffs):.2e}")
    full_note = ("measured" if len(cats) == 15 and args.max_test is None and args.iterations == PAPER_ITERATIONS
                 else "EXTRAPOLATED")
    print(f"full protocol (15 categories, 1,725 test images, {PAPER_ITERATIONS} iterations), {full_note}: "
          f"{full_total:.0f}s = {full_total / 3600:.2f} h (training {sum(x[2] for x in full_rows):.0f}s, "
          f"evaluation {sum(x[3] for x in full_rows):.0f}s, per-category overhead {mean_over:.1f}s)")
    print("peak memory (host RSS of the main process / GPU allocated, MB):")
    print(format_table(peaks.rows(), ("phase", "host MB", "GPU MB")))
    benchutil.write(args.out, {
        "benchmark": "mvtec_sized", "environment": benchutil.environment(device, threads), "config": cfg.to_dict(),
        "categories": list(cats), "iterations": args.iterations, "max_test": args.max_test, "k": args.k,
        "seed": args.seed, "workers": cache.settings.num_workers, "compile": args.compile,
        "total_s": total_s, "backbone_build_s": build_s, "generation_s": gen_s,
        "cells": [{k: r[k] for k in ("category", "n_test", "train_seconds", "eval_seconds", "eval_stage_seconds",
                                     "wall_seconds", "metrics")} for r in records],
        "rerun_cells": {name: [{k: r[k] for k in ("category", "eval_seconds", "eval_stage_seconds", "wall_seconds",
                                                  "metrics")} for r in rs] for name, rs in reruns.items()},
        "full_protocol": {"estimate": full_note, "total_s": full_total,
                          "per_category": [{"category": c, "n_test": n, "train_s": t, "eval_s": e}
                                           for c, n, t, e in full_rows]},
        "cache_stats": dict(cache.stats), "peak_memory": peaks.results,
        "png": mvtec_sized.png_stats(view, cats)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
