"""Training throughput and peak memory: Algorithm 1 iterations per second, time per category.

The paper profile (ViT-B-16-plus-240 with RANDOM weights: same compute as the real ones,
k = 2 shots of an MVTec-sized generated category, see ``bench/mvtec_sized.py``).
``vtfusion.train.train_vtfusion`` runs ``--warmup`` iterations, then ``--measure``
iterations are timed; the time of one category's full training (the paper profile's
iteration count, 1000) is extrapolated from them: ``setup + iterations / (iterations/s)``,
where setup is everything ``train_vtfusion`` does before its loop (foreground, shot
tokens, prototypes) plus the text ensemble (read from the cache when warm). ``--full``
runs the whole schedule instead of extrapolating (meant for a GPU).

Per-iteration split, measured apart on the same batch: ``das`` (synthesising k anomalous
images), ``backbone`` (frozen forward of the k anomalous images; the k shots' tokens are
computed once per run), ``heads`` (the rest: AIE, losses, maps, backward, Adam step).

Usage::

    .venv/bin/python bench/bench_train.py --measure 5                 # CPU: measure 5, extrapolate
    .venv/bin/python bench/bench_train.py --device cuda --full        # GPU: the whole 1000 iterations
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchutil  # noqa: E402
import mvtec_sized  # noqa: E402

from vtfusion.backbone import build_backbone  # noqa: E402
from vtfusion.cache import FeatureCache, PerfSettings  # noqa: E402
from vtfusion.das import AnomalyTypeSelector, synthesize_batch  # noqa: E402
from vtfusion.data import load_dataset  # noqa: E402
from vtfusion.foreground import category_foreground  # noqa: E402
from vtfusion.train import build_model, train_vtfusion  # noqa: E402
from vtfusion.viz import format_table  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = benchutil.argument_parser(__doc__, "train", workers=False)
    p.add_argument("--category", default="bottle", choices=mvtec_sized.CATEGORIES)
    p.add_argument("--k", type=int, default=2, choices=(1, 2, 4, 8))
    p.add_argument("--warmup", type=int, default=1, help="iterations before timing")
    p.add_argument("--measure", type=int, default=5, help="timed iterations (extrapolated to --iterations)")
    p.add_argument("--iterations", type=int, default=None, help="full schedule (default: paper profile, 1000)")
    p.add_argument("--full", action="store_true", help="run the full schedule instead of extrapolating")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = benchutil.resolve_device(args.device)
    threads = benchutil.setup_threads(args.threads)
    view = mvtec_sized.ensure_view((args.category,), 2, args.data_root, ks=(args.k,))
    cfg = benchutil.paper_random_config(device, iterations=args.iterations, k=args.k)
    full_iterations = cfg.train.iterations
    cache = FeatureCache(PerfSettings(root=args.out.parent / "train_cache", compile=args.compile))
    peaks = benchutil.PeakMemory(device)

    backbone = cache.prepare_backbone(build_backbone(cfg.backbone, seed=0).to(device))
    shots = load_dataset("mvtec", args.category, "train", view, cfg.data.image_size).load_shots(args.k, 0)

    def fresh_model():
        model = build_model(cfg, dataset="mvtec", category=args.category, backbone=backbone, device=device)
        start = time.perf_counter()
        cache.prime_text(model)
        return model, time.perf_counter() - start

    def run(iterations: int):
        model, text_s = fresh_model()
        c = cfg.replace(train=dataclasses.replace(cfg.train, iterations=iterations))
        start = time.perf_counter()
        result = train_vtfusion(model, shots, c, "mvtec", args.category, progress=False)
        benchutil.sync(device)
        return result, time.perf_counter() - start, text_s

    if args.warmup:
        _, _, text_first = run(args.warmup)
    n = full_iterations if args.full else args.measure
    with peaks.measure("training loop"):
        result, wall, text_s = run(n)
    loop_s = result.seconds
    setup_s = wall - loop_s + text_s
    its = n / loop_s

    # Per-iteration components on the same shots, timed apart.
    gen = torch.Generator(device=device).manual_seed(0)
    selector = AnomalyTypeSelector.from_config(cfg.das)
    x = shots.to(device)
    fg = category_foreground(x, "mvtec", args.category, cfg.das.foreground)
    das_t, bb_t = [], []
    for _ in range(max(2, min(n, 5))):
        benchutil.sync(device)
        t = time.perf_counter()
        abnormal, _ = synthesize_batch(x, gen, cfg.das, foreground=fg, kinds=selector.sample(len(x), gen))
        benchutil.sync(device)
        das_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        backbone(abnormal)
        benchutil.sync(device)
        bb_t.append(time.perf_counter() - t)
    per_it = loop_s / n
    das_s, bb_s = statistics.median(das_t), statistics.median(bb_t)
    heads_s = max(0.0, per_it - das_s - bb_s)
    full_s = setup_s + full_iterations * per_it

    mode = "measured (--full)" if args.full else f"EXTRAPOLATED from {n} timed iterations after {args.warmup} warm-up"
    print(f"\nTraining, {args.category} k={args.k} ({mvtec_sized.MVTEC_SIDES[args.category]} px shots), "
          f"{cfg.backbone.arch} RANDOM weights, device {device}, {threads} threads, "
          f"precision {cfg.backbone.precision if device.type == 'cuda' else 'fp32'}, compile {args.compile}")
    print(format_table([
        ("iterations/s", f"{its:.3f}"),
        ("seconds/iteration", f"{per_it:.3f}"),
        ("  das (k anomalous images)", f"{das_s:.3f}"),
        ("  backbone (k anomalous images)", f"{bb_s:.3f}"),
        ("  heads fwd+bwd+step (rest)", f"{heads_s:.3f}"),
        ("setup s (text ensemble, foreground, shot tokens, prototypes)", f"{setup_s:.2f}"),
        (f"one category, {full_iterations} iterations, s", f"{full_s:.1f}"),
        ("15 categories, s", f"{15 * full_s:.0f}"),
    ], ("quantity", "value")))
    print(f"full-schedule times: {mode}")
    print("peak memory (host RSS of the process / GPU allocated, MB):")
    print(format_table(peaks.rows(), ("phase", "host MB", "GPU MB")))
    benchutil.write(args.out, {
        "benchmark": "train", "environment": benchutil.environment(device, threads), "config": cfg.to_dict(),
        "category": args.category, "k": args.k, "mode": mode, "timed_iterations": n, "warmup": args.warmup,
        "iterations_per_s": its, "seconds_per_iteration": per_it,
        "split_s": {"das": das_s, "backbone": bb_s, "heads": heads_s}, "setup_s": setup_s,
        "text_s": {"first": text_first if args.warmup else None, "measured_run": text_s},
        "full_iterations": full_iterations, "full_category_s": full_s, "fifteen_categories_s": 15 * full_s,
        "peak_memory": peaks.results, "compile": args.compile})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
