"""FineGrainedAD beside VTFusion, patch-kNN and zero-shot CLIP, on the same cells and metrics.

Every method runs through :func:`vtfusion.evaluate.run_method` (cached, resumable; the same
shot lists, token cache and metrics), for k = ``--shots`` and shot seeds ``--seeds``, on
the toy test split and, with ``--datasets toy real_ad``, the real samples in
``../shared/datasets/real_ad``. VTFusion runs with the project recipe and the quick
schedule (``--iterations``); FineGrainedAD with its defaults (100 prompt-training steps,
last iterate). ``zero_shot`` has no shots and runs once per category (``k = 0``); its row
is repeated on each k.

    .venv/bin/python bench/bench_finegrainedad.py --backbones tiny --shots 1 2 4 --seeds 0
    .venv/bin/python bench/bench_finegrainedad.py --datasets toy real_ad --backbones tiny pocket

Rows are grouped by dataset and backbone (``parts``, keyed ``<dataset>/<backbone>``, as
:func:`vtfusion.viz.bench_table` reads them); each
row (method, dataset, k) records the metrics (mean +- std over seeds of the category
means, %), ``seconds_per_image`` (the method's own prediction per test image; the backbone's
tokens come from the token cache), ``fit_seconds`` (per category: training or building the
memory; a run read back is charged the training it recorded), ``category_seconds`` (the whole cell)
and ``host_peak_mb`` (peak resident memory of the process while that method's cells ran:
``VmHWM`` reset before each method where the kernel allows it, else the lifetime peak).
Writes ``runs/bench/finegrainedad.json``; ``--commit-dir [NAME]`` also copies it to
``bench/results/NAME/finegrainedad.json`` (default NAME: ``<date>-<machine>``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import BACKBONES, PeakMemory, add_commit_dir_option, cell_costs, copy_to_results, environment, quick_config  # noqa: E402

from vtfusion.backbone import build_backbone  # noqa: E402
from vtfusion.cache import FeatureCache  # noqa: E402
from vtfusion.data.categories import categories as dataset_categories  # noqa: E402
from vtfusion.evaluate import run_method  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.methods import get_method  # noqa: E402
from vtfusion.paths import real_ad_root  # noqa: E402
from vtfusion.validation import summarize  # noqa: E402
from vtfusion.viz import format_table  # noqa: E402

METHODS = ("finegrainedad", "vtfusion", "patch_knn", "zero_shot")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def run_cells(method: str, cfg, dataset: str, shots: tuple[int, ...], seeds: tuple[int, ...], backbone,
              args) -> list[dict]:
    """Every (k, seed, category) cell of one method on one dataset."""
    out = []
    for k in shots:
        for seed in seeds:
            for cat in dataset_categories(dataset):
                r = run_method(method, cfg, dataset, cat, k, seed, results_root=args.results, runs_root=args.runs,
                               backbone=backbone, cache=FeatureCache.from_env())
                out.append({**r, "k": k, "seed": seed})  # a k = 0 method is repeated on each k's row
    return out


def summaries(method: str, dataset: str, cells: list[dict], shots: tuple[int, ...], peak: dict, cfg) -> list[dict]:
    """One row per k of a method's cells on a dataset, with its cost."""
    rows = []
    for k in shots:
        subset = [r for r in cells if r["k"] == k]
        costs = [r.get("cost") or {} for r in subset]
        rows.append({"row": method, "dataset": dataset, "backbone": cfg.backbone.arch,
                     "weights": cfg.backbone.weights, "k": k, **summarize(subset),
                     "seconds_per_image": _mean([c.get("predict_seconds_per_image") or 0.0 for c in costs]),
                     **cell_costs(subset),
                     "host_peak_mb": peak.get("host_peak_mb"), "host_how": peak.get("host_how"),
                     "read_back_cells": sum(bool(r.get("skipped")) for r in subset)})
    return rows


def table(rows: list[dict]) -> str:
    def cell(s, m):
        return "-" if m not in s else f"{100 * s[m]:.1f} +- {100 * s[m + '_std']:.1f}"

    return format_table([(s["row"], s["dataset"], s["backbone"], s["k"], *[cell(s, m) for m in ("image_auroc", "pixel_auroc", "aupro")],
                          f"{1000 * s['seconds_per_image']:.2f}", f"{s['fit_seconds']:.1f}",
                          f"{s['category_seconds']:.1f}", f"{s['host_peak_mb']:.0f}") for s in rows],
                        ("method", "dataset", "backbone", "k", "image_auroc", "pixel_auroc", "aupro", "ms/image", "fit s/cat",
                         "s/category", "peak MB"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="+", default=["tiny"], choices=tuple(BACKBONES))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--datasets", nargs="+", default=["toy"], choices=("toy", "real_ad"))
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--iterations", type=int, default=300, help="VTFusion's training iterations (quick: 300)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=Path("runs/bench/finegrainedad/results"))
    p.add_argument("--runs", type=Path, default=Path("runs/bench/finegrainedad/runs"))
    p.add_argument("--out", type=Path, default=Path("runs/bench/finegrainedad.json"))
    add_commit_dir_option(p)
    args = p.parse_args(argv)
    for m in args.methods:
        get_method(m)  # unknown names fail before any work
    if "real_ad" in args.datasets and not real_ad_root().is_dir():
        p.error(f"--datasets real_ad: {real_ad_root()} is missing; drop real_ad or set $VTFUSION_REAL_AD")
    torch.set_num_threads(args.threads)
    record = {"argv": sys.argv, "environment": environment(torch.device("cpu"), args.threads),
              "backbones": args.backbones, "datasets": args.datasets, "shots": args.shots, "seeds": args.seeds,
              "iterations": args.iterations,
              "parts": {f"{d}/{b}": [] for b in args.backbones for d in args.datasets}}
    peaks = PeakMemory(torch.device("cpu"))
    start = time.perf_counter()
    for bb_name in args.backbones:
        cfg = quick_config(BACKBONES[bb_name], args.iterations, "project")  # bench_recipe's runs fit
        backbone = build_backbone(cfg.backbone, seed=0)
        for method in args.methods:
            for dataset in args.datasets:
                t = time.perf_counter()
                name = f"{method}/{dataset}/{bb_name}"
                with peaks.measure(name):
                    cells = run_cells(method, cfg, dataset, tuple(args.shots), tuple(args.seeds), backbone, args)
                record["parts"][f"{dataset}/{bb_name}"] += summaries(method, dataset, cells, tuple(args.shots),
                                                                     peaks.results[name], cfg)
                print(f"{name}: {time.perf_counter() - t:.0f}s", flush=True)
    record["seconds"] = time.perf_counter() - start
    print(table([row for rows in record["parts"].values() for row in rows]))
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")
    copy_to_results(args.out, args.commit_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
