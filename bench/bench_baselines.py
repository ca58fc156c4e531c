"""The baselines every few-shot method must beat, beside VTFusion, on a dataset's test split.

Every registered baseline (``zero_shot``, ``winclip``, ``winclip_plus``, ``patch_knn``) and
VTFusion with the project's recipe, through :func:`vtfusion.evaluate.run_method` (cached,
resumable; the same shot lists and metrics for all), for k = ``--shots`` and shot seeds
``--seeds``, on each backbone of ``--backbones`` (names in ``benchutil.BACKBONES``).
Methods without shots (``zero_shot``, ``winclip``) run once per category (``k = 0``) and
are repeated on each k's row.

    .venv/bin/python bench/bench_baselines.py --backbones tiny --shots 1 2 4 8 --seeds 0 1 2
    .venv/bin/python bench/bench_baselines.py --backbones tiny --shots 1 2 --seeds 0 --commit-dir
    .venv/bin/python bench/bench_baselines.py --datasets toy real_ad --backbones tiny pocket

``--datasets``: ``toy`` (the default) and any registered dataset found on this machine, e.g.
``real_ad`` (``../shared/datasets/real_ad``), ``mvtec`` or ``visa`` where they are installed.
Each (dataset, backbone) pair is one part of the JSON's ``parts``.

Besides the metrics (mean +- std over seeds of the category means, %), each row records its
cost from the cells' :class:`~vtfusion.methods.MethodCost`: ``seconds_per_image`` (the method's
prediction per test image; the backbone's tokens are excluded for methods that read them from
the token cache, while WinCLIP encodes its windows itself, so its figure includes its backbone),
``fit_seconds`` (per category: training or building the memory) and ``category_seconds`` (the
whole cell: fit, prediction, metrics). A VTFusion run read back from ``--runs`` is charged the
training time it recorded when it was made (measured then, perhaps on a busier machine).
Writes ``runs/bench/baselines.json``; ``--commit-dir [NAME]`` also copies it to
``bench/results/NAME/baselines.json`` (default NAME: ``<date>-<machine>``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import BACKBONES, add_commit_dir_option, cell_costs, copy_to_results, environment, quick_config  # noqa: E402

from vtfusion.backbone import build_backbone  # noqa: E402
from vtfusion.cache import FeatureCache  # noqa: E402
from vtfusion.data.categories import categories as dataset_categories  # noqa: E402
from vtfusion.evaluate import run_method  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402
from vtfusion.methods import get_method  # noqa: E402
from vtfusion.validation import summarize  # noqa: E402
from vtfusion.viz import format_table  # noqa: E402

METHODS = ("zero_shot", "winclip", "winclip_plus", "patch_knn", "vtfusion")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def run_row(method: str, cfg, dataset: str, shots: tuple[int, ...], seeds: tuple[int, ...],
            categories: tuple[str, ...], backbone, args) -> list[dict]:
    """One method's cells; a summary per k and one over all k, with its cost."""
    results = []
    for k in shots:
        for seed in seeds:
            for cat in categories:
                r = run_method(method, cfg, dataset, cat, k, seed, results_root=args.results, runs_root=args.runs,
                               backbone=backbone, cache=FeatureCache.from_env())
                results.append({**r, "k": k, "seed": seed})  # a k = 0 method is repeated on each k's row
    out = []
    for k in (*shots, "all"):
        subset = [r for r in results if k == "all" or r["k"] == k]
        costs = [r.get("cost") or {} for r in subset]
        out.append({"row": method, "dataset": dataset, "backbone": cfg.backbone.arch, "weights": cfg.backbone.weights, "k": k,
                    **summarize(subset),
                    "seconds_per_image": _mean([c.get("predict_seconds_per_image") or 0.0 for c in costs]),
                    **cell_costs(subset)})
    return out


def table(summaries: list[dict]) -> str:
    def cell(s, m):
        return "-" if m not in s else f"{100 * s[m]:.1f} +- {100 * s[m + '_std']:.1f}"

    return format_table([(s["row"], s["k"], *[cell(s, m) for m in ("image_auroc", "pixel_auroc", "aupro")],
                          f"{1000 * s['seconds_per_image']:.1f}", f"{s['category_seconds']:.1f}")
                         for s in summaries], ("method", "k", "image_auroc", "pixel_auroc", "aupro",
                                               "ms/image", "s/category"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["toy"],
                   help="registered datasets (`vtfusion list datasets`) found on this machine")
    p.add_argument("--backbones", nargs="+", default=["tiny"], choices=tuple(BACKBONES))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=300, help="VTFusion's training iterations (quick: 300)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=Path("runs/bench/baselines/results"))
    p.add_argument("--runs", type=Path, default=Path("runs/bench/baselines/runs"))
    p.add_argument("--out", type=Path, default=Path("runs/bench/baselines.json"))
    add_commit_dir_option(p)
    args = p.parse_args(argv)
    for m in args.methods:
        get_method(m)  # unknown names fail before any work
    torch.set_num_threads(args.threads)
    record = {"argv": sys.argv, "environment": environment(torch.device("cpu"), args.threads),
              "datasets": args.datasets, "backbones": args.backbones, "shots": args.shots, "seeds": args.seeds,
              "parts": {}}
    start = time.perf_counter()
    for name in args.backbones:
        cfg = quick_config(BACKBONES[name], args.iterations, "project")  # bench_recipe's runs fit
        backbone = build_backbone(cfg.backbone, seed=0)
        for dataset in args.datasets:
            part = record["parts"][f"{dataset}/{name}"] = []
            for method in args.methods:
                t = time.perf_counter()
                part += run_row(method, cfg, dataset, tuple(args.shots), tuple(args.seeds),
                                tuple(dataset_categories(dataset)), backbone, args)
                print(f"{dataset}/{name} {method}: {time.perf_counter() - t:.0f}s", flush=True)
            print(f"[{dataset}/{name}]\n{table(part)}", flush=True)
    record["seconds"] = time.perf_counter() - start
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")
    copy_to_results(args.out, args.commit_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
