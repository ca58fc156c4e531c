"""Measuring inference speed on the CPU, the same way for PyTorch and ONNX Runtime.

Torch-free: the caller passes a function that runs every image once (a PyTorch
``model.predict`` or an :class:`~vtfusion.deploy.onnx_predict.OnnxModel`), and the
thread count it set for that runtime. ``bench/bench_onnx.py`` and the deployment chapter
use these.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable


def timed_passes(run_all: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``run_all``, after one untimed warm-up call."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    run_all()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_all()
        seconds.append(time.perf_counter() - start)
    return seconds


def images_per_second(run_all: Callable[[], object], n_images: int, repeats: int = 3) -> dict[str, object]:
    """``{"images_per_s": n / median pass, "pass_seconds": [...]}`` of :func:`timed_passes`."""
    seconds = timed_passes(run_all, repeats)
    return {"images_per_s": n_images / statistics.median(seconds), "pass_seconds": seconds}


def cpu_facts() -> dict[str, float | int | None]:
    """``nproc`` (``os.cpu_count``), the CPUs this process may use, and the 1-minute load
    average: a load above the usable CPUs means other processes shared them."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"nproc": os.cpu_count(), "usable_cpus": usable, "loadavg_1min": load}
