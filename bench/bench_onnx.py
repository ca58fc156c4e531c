"""PyTorch against ONNX Runtime (fp32 and int8) on the CPU: images per second and what changes.

One trained category (``vtfusion.runs.train_or_load``: the profile's config, reused when
already trained) is exported to an fp32 graph and an int8 copy (``vtfusion.deploy``).
The same decoded test images (uint8, already resized: decoding is not timed) go through

* ``pytorch``: ``model.predict`` on float tensors in [0, 1] (PyTorch's own CPU kernels,
  the fused attention included), ``torch.set_num_threads(threads)``;
* ``onnx_fp32`` and ``onnx_int8``: an ONNX Runtime CPU session with
  ``intra_op_num_threads = threads`` (``inter_op`` 1), fed the uint8 batches.

Speed, for each of ``--threads`` (the same count for both runtimes): one warm-up pass,
then ``--repeats`` timed passes over all images in batches of ``--batch``; images/s is
the median pass (:func:`vtfusion.deploy.speed.images_per_second`). Accuracy: on the whole test split, the largest
absolute difference of each ONNX map and score from PyTorch's, and image AUROC, pixel
AUROC and AUPRO of each (``vtfusion.metrics.evaluate_maps``, with each runner's own image
scores). The JSON also records ``nproc``, the CPUs this process may use, and the load
average before and after, which tells whether another process shared the cores.

Usage::

    .venv/bin/python bench/bench_onnx.py --threads 1 2 \\
        --out bench/results/2026-12-03-cpu-2core-s4/onnx.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchutil  # noqa: E402
import torch  # noqa: E402

from vtfusion.config import get_profile  # noqa: E402
from vtfusion.data import load_dataset  # noqa: E402
from vtfusion.deploy.export import export_model, quantize_int8  # noqa: E402
from vtfusion.deploy.onnx_predict import load_onnx  # noqa: E402
from vtfusion.deploy.speed import cpu_facts, images_per_second  # noqa: E402
from vtfusion.image_io import load_image_array, to_unit_float  # noqa: E402
from vtfusion.metrics import evaluate_maps  # noqa: E402
from vtfusion.paths import PROJECT_ROOT  # noqa: E402
from vtfusion.runs import train_or_load  # noqa: E402
from vtfusion.viz import format_table  # noqa: E402

RUNNERS = ("pytorch", "onnx_fp32", "onnx_int8")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="quick", choices=("quick", "paper"))
    p.add_argument("--dataset", default="toy")
    p.add_argument("--category", default="washer")
    p.add_argument("--shots", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="thread counts to time, each for PyTorch and ONNX Runtime alike (default 1 2)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed passes over all images (median reported)")
    p.add_argument("--work", type=Path, default=PROJECT_ROOT / "runs" / "bench" / "onnx",
                   help="where the exported graphs are written")
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "runs" / "bench" / "onnx.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    before = cpu_facts()
    torch.set_num_threads(max(args.threads))
    cfg = get_profile(args.profile)
    t0 = time.perf_counter()
    model, info = train_or_load(cfg, args.dataset, args.category, args.shots, args.seed, progress=False)
    model.eval()
    print(f"model: {info['checkpoint']} ({'reused' if info['loaded'] else 'trained'}, "
          f"{time.perf_counter() - t0:.0f}s); backbone {cfg.backbone.arch} weights={cfg.backbone.weights}")

    extra = {"dataset": args.dataset, "category": args.category}
    t0 = time.perf_counter()
    fp32_path = export_model(model, cfg, args.work / f"{args.category}.onnx", extra)
    export_seconds = time.perf_counter() - t0
    int8_path = quantize_int8(fp32_path, args.work / f"{args.category}.int8.onnx")
    graphs = {"onnx_fp32": fp32_path, "onnx_int8": int8_path}

    split = load_dataset(args.dataset, args.category, "test", image_size=cfg.data.image_size)
    pixels = np.stack([load_image_array(r.image, cfg.data.image_size) for r in split.records])  # N x S x S x 3
    images = torch.from_numpy(to_unit_float(pixels)).permute(0, 3, 1, 2).contiguous()
    masks = np.stack([split[i]["mask"].numpy() for i in range(len(split))])
    labels = np.asarray(split.labels)
    n, batch = len(pixels), args.batch

    # Accuracy: every runner's maps and scores on the whole split.
    pred = model.predict(images, batch_size=batch)
    outputs = {"pytorch": (pred["final"].numpy(), pred["score"].numpy())}
    for name, path in graphs.items():
        outputs[name] = load_onnx(path).run_batched(pixels, batch)
    results = {}
    ref_map, ref_score = outputs["pytorch"]
    for name in RUNNERS:
        final, score = outputs[name]
        metrics = evaluate_maps(final, masks, labels, image_scores=score)
        results[name] = {"max_abs_map_diff_vs_pytorch": float(np.abs(final - ref_map).max()),
                         "max_abs_score_diff_vs_pytorch": float(np.abs(score - ref_score).max()),
                         **{m: metrics[m] for m in METRICS}, "speed": {}}

    # Speed: the same images and the same thread count for both runtimes.
    for threads in args.threads:
        torch.set_num_threads(threads)
        load_before = cpu_facts()["loadavg_1min"]
        speed = {"pytorch": images_per_second(lambda: model.predict(images, batch_size=batch), n, args.repeats)}
        for name, path in graphs.items():
            runner = load_onnx(path, threads=threads)
            speed[name] = images_per_second(lambda r=runner: r.run_batched(pixels, batch), n, args.repeats)
        for name in RUNNERS:
            results[name]["speed"][str(threads)] = {**speed[name], "loadavg_1min_before": load_before}
    after = cpu_facts()
    sizes = {"onnx_fp32": fp32_path.stat().st_size, "onnx_int8": int8_path.stat().st_size}

    print(f"{args.dataset}/{args.category}: {n} test images, batch {batch}, median of {args.repeats} passes; "
          f"nproc {before['nproc']}, load average {before['loadavg_1min']:.1f} before, "
          f"{after['loadavg_1min']:.1f} after")
    speed_heads = tuple(f"images/s, {t} thr" for t in args.threads)
    rows = [(name, *(f"{r['speed'][str(t)]['images_per_s']:.1f}" for t in args.threads),
             f"{r['max_abs_map_diff_vs_pytorch']:.2e}", f"{r['max_abs_score_diff_vs_pytorch']:.2e}",
             *(f"{r[m]:.4f}" for m in METRICS), f"{sizes[name] / 1e6:.1f}" if name in sizes else "-")
            for name, r in results.items()]
    print(format_table(rows, ("runner", *speed_heads, "max |map diff|", "max |score diff|", *METRICS, "MB")))
    import onnxruntime  # local: only for its version in the record

    payload = {"config": {"profile": cfg.profile, "backbone": cfg.backbone.arch, "weights": cfg.backbone.weights,
                          "final_map": cfg.model.final_map, "image_score": cfg.model.image_score,
                          "image_size": cfg.data.image_size},
               "dataset": args.dataset, "category": args.category, "k": args.shots, "seed": args.seed,
               "n_images": n, "batch": batch, "repeats": args.repeats, "threads": list(args.threads),
               "checkpoint": info["checkpoint"], "model_reused": bool(info["loaded"]),
               "export_seconds": export_seconds, "file_bytes": sizes, "results": results,
               "cpu_before": before, "cpu_after": after, "onnxruntime": onnxruntime.__version__,
               "environment": benchutil.environment(torch.device("cpu"), torch.get_num_threads())}
    benchutil.write(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
