"""Evaluation runs: one result file per (dataset, category, k, seed, method) cell.

A cell trains (or loads) the model of its config, scores the test split in batches and
writes ``results/<profile>/<dataset>/<method>/<category>/k<k>_seed<seed>.json`` with every
metric of :mod:`vtfusion.metrics`, the full config and its hash, the shot list, the
backbone, the package version, the git commit and the wall times. Writes are atomic; a
rerun finds the file of a finished cell (same config hash) and skips the work.

Evaluation protocol (DESIGN §7): test images resized to the config's image size (240 px,
no centre crop), masks nearest-resized, image score = max of the final map.

Speed (:mod:`vtfusion.cache`): the test split is decoded once into a ``uint8`` image cache
and, by default, the frozen backbone's test tokens are computed once and kept on disk in
``float16``; evaluation then runs only the trained heads (``model.forward_tokens``) in
batches, so rerunning a cell, another seed, k or ablation variant on the same category
never recomputes the backbone. The switches (:class:`~vtfusion.cache.PerfSettings`) are
not part of the config hash; each result file records them under ``eval_cache``.
"""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from vtfusion import __version__, paths
from vtfusion.cache import FeatureCache, settings_dict, supports
from vtfusion.config import ExperimentConfig
from vtfusion.io import atomic_write_json
from vtfusion.metrics import evaluate_maps

RESULT_FORMAT = "vtfusion-result-1"


def git_commit() -> str | None:
    """``HEAD`` of the project checkout (``+dirty`` with uncommitted changes), or None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.PROJECT_ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@contextmanager
def _stage(timings: dict[str, float] | None, name: str, device: torch.device) -> Iterator[None]:
    """Add the wall time of the block to ``timings[name]`` (CUDA synchronised), if asked."""
    if timings is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


@torch.no_grad()
def predict_split(model, split, batch_size: int = 32, cache: FeatureCache | None = None,
                  timings: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Run ``model`` over a test split in batches; returns ``final`` maps, ``score``s, ``masks``, ``labels``.

    Args:
        cache: where decoded images and backbone tokens come from (:mod:`vtfusion.cache`);
            ``None`` means ``FeatureCache.from_env()`` (on disk by default),
            ``FeatureCache.disabled()`` decodes and runs the backbone every time.
        timings: if given, seconds per stage are added to it: ``images`` (decode and
            resize, or cache read), ``text`` (prompt-ensemble embedding), ``backbone``
            (tokens: computed or read) and ``heads`` (AIE, prototypes, ATE, MPF).
    """
    device = next(model.aie.parameters()).device
    model.eval()
    if not supports(split):  # e.g. a split opened without resizing: the sample-by-sample path
        return _predict_samples(model, split, batch_size)
    cache = FeatureCache.from_env() if cache is None else cache
    with _stage(timings, "images", device):
        data = cache.images(split)
    with _stage(timings, "text", device):
        cache.prime_text(model)
        model.text_features()
    size = tuple(data.images.shape[-2:])
    finals, scores = [], []
    if cache.settings.tokens:
        with _stage(timings, "backbone", device):
            tokens = cache.tokens(model.backbone, split, data, batch_size)
    else:
        cache.prepare_backbone(model.backbone)
    for start in range(0, len(split), batch_size):
        stop = min(len(split), start + batch_size)
        if cache.settings.tokens:
            batch_tokens = tokens[start:stop].to(device, non_blocking=True).float()
        else:
            with _stage(timings, "backbone", device):
                batch_tokens = model.backbone(data.batch(start, stop, device))
        with _stage(timings, "heads", device):
            out = model.forward_tokens(batch_tokens, size)
            finals.append(out["final"][:, 0].float().cpu())
            scores.append(out["score"].float().cpu())
    return {"final": torch.cat(finals), "score": torch.cat(scores), "masks": data.masks.float(),
            "labels": torch.tensor(split.labels)}


def _predict_samples(model, split, batch_size: int) -> dict[str, torch.Tensor]:
    device = next(model.aie.parameters()).device
    finals, scores, masks = [], [], []
    for start in range(0, len(split), batch_size):
        samples = [split[i] for i in range(start, min(start + batch_size, len(split)))]
        out = model(torch.stack([s["image"] for s in samples]).to(device))
        finals.append(out["final"][:, 0].float().cpu())
        scores.append(out["score"].float().cpu())
        masks.append(torch.stack([s["mask"][0] for s in samples]))
    return {"final": torch.cat(finals), "score": torch.cat(scores), "masks": torch.cat(masks),
            "labels": torch.tensor(split.labels)}


def evaluate_model(model, split, batch_size: int = 32, cache: FeatureCache | None = None,
                   timings: dict[str, float] | None = None) -> dict[str, float]:
    """All metrics of :func:`vtfusion.metrics.evaluate_maps` for ``model`` on ``split``.

    ``cache`` and ``timings`` as in :func:`predict_split`; ``timings["metrics"]`` is added.
    """
    pred = predict_split(model, split, batch_size, cache=cache, timings=timings)
    with _stage(timings, "metrics", torch.device("cpu")):
        return evaluate_maps(pred["final"], pred["masks"], pred["labels"], image_scores=pred["score"])


def result_path(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int, method: str,
                root: str | Path | None = None) -> Path:
    base = Path(root) if root is not None else paths.PROJECT_ROOT / "results"
    return base / cfg.profile / dataset / method / category / f"k{k}_seed{seed}.json"


def read_result(path: str | Path) -> dict | None:
    """A finished cell's result, or None when absent or unreadable (then it is redone)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("format") == RESULT_FORMAT else None


def run_cell(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int, method: str = "vtfusion",
             results_root: str | Path | None = None, runs_root: str | Path | None = None,
             data_root: str | Path | None = None, backbone=None, progress: bool = False,
             cache: FeatureCache | None = None) -> dict:
    """Train or load, evaluate and record one cell; a finished cell with the same config is reused.

    ``cache``: decoded-image and backbone-token caches (:mod:`vtfusion.cache`); ``None``
    means ``FeatureCache.from_env()``. Share one across cells (as ``reproduce`` does) so
    that cells of one category reuse its test tokens from memory.

    Returns the result dictionary (``metrics``, ``config``, timing, provenance; ``skipped``
    tells whether it was read from an earlier run).
    """
    from vtfusion.data import load_dataset
    from vtfusion.data.datasets import storage_name
    from vtfusion.train import config_hash, train_or_load

    cell_cfg = cfg.replace(train=_train_with_seed(cfg, seed))
    path = result_path(cell_cfg, storage_name(dataset, data_root), category, k, seed, method, results_root)
    previous = read_result(path)
    if previous is not None and previous.get("config_hash") == config_hash(cell_cfg):
        return {**previous, "skipped": True}
    start = time.perf_counter()
    cache = FeatureCache.from_env() if cache is None else cache
    if cache.settings.compile and backbone is None:  # compile before training, so build it here
        from vtfusion.backbone import build_backbone

        backbone = build_backbone(cell_cfg.backbone, seed=cell_cfg.train.seed)  # as build_model would
    if backbone is not None:
        cache.prepare_backbone(backbone)
    model, info = train_or_load(cell_cfg, dataset, category, k, seed, root=runs_root, data_root=data_root,
                                backbone=backbone, progress=progress, cache=cache)
    test = load_dataset(dataset, category, "test", data_root, cell_cfg.data.image_size)
    t_eval = time.perf_counter()
    stages: dict[str, float] = {}
    metrics = evaluate_model(model, test, cache=cache, timings=stages)
    result = {
        "format": RESULT_FORMAT,
        "dataset": dataset, "data_root": str(data_root) if data_root is not None else None,
        "category": category, "k": k, "seed": seed, "method": method,
        "metrics": metrics,
        "resolution": cell_cfg.data.image_size,
        "n_test": len(test), "n_defective": int(sum(test.labels)),
        "shots": info.get("shots"),
        "profile": cell_cfg.profile,
        "backbone": {"arch": cell_cfg.backbone.arch, "weights": cell_cfg.backbone.weights},
        "config": cell_cfg.to_dict(),
        "config_hash": config_hash(cell_cfg),
        "vtfusion_version": __version__,
        "git_commit": git_commit(),
        "train_seconds": None if info.get("loaded") else info.get("seconds"),
        "model_loaded_from_cache": bool(info.get("loaded")),
        "eval_seconds": time.perf_counter() - t_eval,
        "eval_stage_seconds": stages,
        "eval_cache": settings_dict(cache),
        "wall_seconds": time.perf_counter() - start,
    }
    atomic_write_json(path, result)
    return {**result, "skipped": False}


def _train_with_seed(cfg: ExperimentConfig, seed: int):
    import dataclasses

    return dataclasses.replace(cfg.train, seed=seed)
