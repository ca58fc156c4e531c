"""Shared pieces of the speed benchmarks: device choice, peak memory, the paper config, JSON.

Peak host memory is the process's resident-set high-water mark (``VmHWM``), reset before
each measured phase through ``/proc/self/clear_refs`` (Linux); elsewhere the process
lifetime peak (``ru_maxrss``) is reported and marked so. DataLoader worker processes are
separate processes and are not included. Peak GPU memory is
``torch.cuda.max_memory_allocated`` (tensors; the allocator may reserve more).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from vtfusion import __version__
from vtfusion.config import BackboneConfig, ExperimentConfig, get_profile, with_pocket_backbone
from vtfusion.data.toy import ToyConfig, ensure_toy_dataset
from vtfusion.io import atomic_write_json
from vtfusion.pocket.model import READING

#: The benchmarks' backbones by name (``--backbone(s)``), one definition for every script.
BACKBONES = {
    "tiny": BackboneConfig(arch="tiny", weights="random", layers=(1, 2, 3, 4)),
    # pocket releases as read on the toy validation split (bench/choose_layers.py;
    # vtfusion.pocket.model.READING also sets their text branch's prompts and temperature)
    "pocket": BackboneConfig(arch="pocket", weights="pocket-v1", layers=READING["pocket-v1"]["layers"]),
    "pocket-v2": BackboneConfig(arch="pocket", weights="pocket-v2", layers=READING["pocket-v2"]["layers"]),
    "vitb_random": BackboneConfig(arch="ViT-B-16-plus-240", weights="random", layers=(3, 6, 9, 12)),
}


#: A toy dataset with five times the validation images (100 normal and 25 per defect type per
#: category): rendering depends on the split and index only, so its first validation
#: images are the toy split's own, and train and test are those of the toy split.
LARGE_VAL = ToyConfig(n_val_good=100, n_val_per_defect=25)
LARGE_VAL_ROOT = Path("data/toy-val100")


def large_val_root(root: Path = LARGE_VAL_ROOT) -> Path:
    """``root`` holding the :data:`LARGE_VAL` toy dataset, generated there when missing (about 40 s)."""
    return ensure_toy_dataset(root, LARGE_VAL)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available; use --device auto or cpu")
    return torch.device(name)


def weights_files(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``--extra NAME=FILE ...`` as ``{name: file}``; a parser error names an item without an existing file."""
    files = {}
    for item in items:
        name, _, path = item.partition("=")
        if not name or not path or not Path(path).is_file():
            parser.error(f"--extra {item!r}: use NAME=FILE with an existing weights file")
        files[name] = path
    return files


def machine_name() -> str:
    """``<gpu-name>`` or ``cpu-<n>core``: the machine part of a result folder's name."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).lower().replace(" ", "-")
    return f"cpu-{os.cpu_count()}core"


def add_commit_dir_option(parser) -> None:
    """``--commit-dir [NAME]``: also copy the JSON to ``bench/results/NAME`` (default ``<date>-<machine>``)."""
    parser.add_argument("--commit-dir", nargs="?", const="auto", default=None,
                        help="also copy the JSON to bench/results/NAME (without NAME: <date>-<machine>)")


def copy_to_results(out: Path, commit_dir: str | None) -> Path | None:
    """Copy a benchmark's JSON ``out`` into ``bench/results/<commit_dir>/`` (``auto``: ``<date>-<machine>``)."""
    if not commit_dir:
        return None
    name = time.strftime("%Y-%m-%d") + "-" + machine_name() if commit_dir == "auto" else commit_dir
    dest = Path(__file__).resolve().parent / "results" / name / Path(out).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out, dest)
    print(f"copied to {dest}")
    return dest


def paper_random_config(device: torch.device, iterations: int | None = None, k: int = 2,
                        seed: int = 0) -> ExperimentConfig:
    """The paper profile with the random ViT-B-16-plus-240 (same compute as the real weights)."""
    base = get_profile("paper")
    return base.replace(
        data=dataclasses.replace(base.data, shots=k, seeds=(seed,)),
        backbone=dataclasses.replace(base.backbone, weights="random"),
        train=dataclasses.replace(base.train, device=device.type, seed=seed,
                                  iterations=base.train.iterations if iterations is None else iterations))


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak host RSS and GPU memory of ``with`` blocks: ``with peaks.measure("name"): ...``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.results: dict[str, dict[str, float | None | str]] = {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        resettable = _reset_hwm()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
        host = _vm_hwm_mb() if resettable else None
        how = "VmHWM of this phase"
        if host is None:
            host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            how = "ru_maxrss (process lifetime)"
        gpu = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            gpu = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.results[name] = {"host_peak_mb": host, "host_how": how, "gpu_peak_mb": gpu}

    def rows(self) -> list[tuple]:
        return [(name, f"{r['host_peak_mb']:.0f}", "-" if r["gpu_peak_mb"] is None else f"{r['gpu_peak_mb']:.0f}")
                for name, r in self.results.items()]


def environment(device: torch.device, threads: int) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "threads": threads, "argv": sys.argv,
            "vtfusion_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def argument_parser(doc: str, out_name: str, workers: bool = True) -> argparse.ArgumentParser:
    """The options every speed benchmark shares (device, threads, compile, generated data,
    output JSON ``runs/bench/<out_name>.json``; decode ``--workers`` when it decodes)."""
    from vtfusion.paths import PROJECT_ROOT

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    if workers:
        p.add_argument("--workers", type=int, default=None, help="decode processes (default min(4, cpus))")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument("--data-root", type=Path, default=None, help="generated data (default runs/bench/mvtec_sized)")
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "runs" / "bench" / f"{out_name}.json")
    return p


def setup_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write(path: Path, payload: dict) -> None:
    atomic_write_json(path, payload)
    print(f"wrote {path}")


# --- grids of evaluation cells (recipe and pocket benchmarks) ---------------------------

@dataclasses.dataclass(frozen=True)
class Row:
    """One row of a results grid: a method on a backbone, with its config."""

    label: str
    kind: str                      # "vtfusion", "patch_knn" or "zero_shot"
    config: ExperimentConfig


def run_grid(rows: list[Row], dataset: str, categories: tuple[str, ...], shots: tuple[int, ...],
             seeds: tuple[int, ...], results_root: Path, runs_root: Path, data_root=None,
             split: str = "test", log=print) -> list[dict]:
    """Every (row, k, seed, category) cell through the package's cell runners (cached, resumable).

    Returns one summary per (row, k) and one per row over all k (``k = "all"``), each with
    mean and std over seeds of the per-seed category means (:func:`vtfusion.validation.summarize`)
    and the wall time of the cells that ran now. The ``"all"`` summary also lists every
    cell's metrics (``per_cell``, :func:`vtfusion.stats.per_cell_records`), so that two
    rows can later be compared cell by cell (:func:`vtfusion.stats.paired_difference`).
    """
    from vtfusion.backbone import build_backbone
    from vtfusion.cache import FeatureCache
    from vtfusion.evaluate import run_cell, run_patch_knn_cell, run_zero_shot_cell
    from vtfusion.stats import per_cell_records
    from vtfusion.validation import summarize

    cache = FeatureCache.from_env()
    backbones: dict[str, object] = {}
    out = []
    for row in rows:
        key = json.dumps(dataclasses.asdict(row.config.backbone), sort_keys=True)
        if key not in backbones:
            # on the device the cells train on, so every row reads the same cached tokens
            backbones[key] = build_backbone(row.config.backbone, seed=0).to(resolve_device(row.config.train.device))
        bb = backbones[key]
        results = []
        start = time.perf_counter()
        for k in shots:
            for seed in seeds:
                for cat in categories:
                    if row.kind == "zero_shot":
                        r = run_zero_shot_cell(row.config, dataset, cat, results_root, data_root, bb, cache, split)
                        r = {**r, "k": k, "seed": seed}
                    elif row.kind == "patch_knn":
                        r = run_patch_knn_cell(row.config, dataset, cat, k, seed, results_root=results_root,
                                               data_root=data_root, backbone=bb, cache=cache, split=split)
                    else:
                        r = run_cell(row.config, dataset, cat, k, seed, method=row.label, results_root=results_root,
                                     runs_root=runs_root, data_root=data_root, backbone=bb, cache=cache, split=split)
                    results.append(r)
        seconds = time.perf_counter() - start
        for k in (*shots, "all"):
            subset = [r for r in results if k == "all" or r["k"] == k]
            summary = summarize(subset)
            out.append({"row": row.label, "kind": row.kind, "backbone": row.config.backbone.arch,
                        "weights": row.config.backbone.weights, "dataset": dataset, "k": k, **summary,
                        "seconds_now": seconds if k == "all" else None,
                        "train_seconds_mean": _mean([r.get("train_seconds") or 0.0 for r in subset]),
                        # every cell's metrics, for paired comparisons (vtfusion.stats)
                        **({"per_cell": per_cell_records(subset)} if k == "all" else {})})
        log(f"  {row.label}: {len(results)} cells, {seconds:.0f}s")
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def grid_table(summaries: list[dict], metrics=("image_auroc", "pixel_auroc", "aupro")) -> str:
    """The summaries as a text table (mean +- std over seeds, in %)."""
    from vtfusion.viz import format_table

    def cell(s, m):
        return "-" if m not in s else f"{100 * s[m]:.1f} +- {100 * s[m + '_std']:.1f}"

    return format_table([(s["row"], s["k"], *[cell(s, m) for m in metrics]) for s in summaries],
                        ("row", "k", *metrics))


def cell_costs(cells: list[dict]) -> dict[str, float]:
    """Mean ``fit_seconds`` and ``category_seconds`` per cell of ``run_method`` results.

    A trained run read back from the run store costs no fit now; it is charged the training
    time it recorded when it was made (``recorded_train_seconds``), so a row's cost does not
    depend on whether an earlier benchmark left the run behind.
    """
    def fit(r: dict) -> float:
        if r.get("model_loaded_from_cache"):
            return r.get("recorded_train_seconds") or 0.0
        return (r.get("cost") or {}).get("fit_seconds") or 0.0

    def cell(r: dict) -> float:
        extra = (r.get("recorded_train_seconds") or 0.0) if r.get("model_loaded_from_cache") else 0.0
        return (r.get("wall_seconds") or 0.0) + extra

    n = max(len(cells), 1)
    return {"fit_seconds": sum(map(fit, cells)) / n, "category_seconds": sum(map(cell, cells)) / n}


def quick_config(backbone, iterations: int, recipe: str, read_as: str | None = None) -> ExperimentConfig:
    """The quick profile on ``backbone`` (a :class:`~vtfusion.backbone.BackboneConfig`) with
    ``iterations`` training steps and a named recipe (``paper`` or ``project``).

    A pocket release is read as :data:`~vtfusion.pocket.model.READING` says; ``read_as``
    names the release whose reading a pocket weights *file* (a pre-training run) gets.

    The one place the toy benchmarks build VTFusion's config: equal configs have equal
    training hashes, so ``bench_recipe``, ``bench_baselines`` and ``bench_finegrainedad``
    share their trained runs through ``--runs``.
    """
    from vtfusion.recipes import apply_recipe

    base = get_profile("quick")
    base = base.replace(backbone=backbone, train=dataclasses.replace(base.train, iterations=iterations))
    reading = read_as or backbone.weights
    if backbone.arch == "pocket" and reading in READING:
        base = with_pocket_backbone(base, reading).replace(backbone=backbone)
    return apply_recipe(base, recipe)
