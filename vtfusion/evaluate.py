"""Evaluation runs: one result file per (dataset, category, k, seed, method) cell.

A cell trains (or loads) the model of its config, scores the test split in batches and
writes ``results/<profile>/<dataset>/<method>/<category>/k<k>_seed<seed>.json`` with every
metric of :mod:`vtfusion.metrics`, the full config and its hash, the shot list, the
backbone, the package version, the git commit and the wall times. Writes are atomic; a
rerun finds the file of a finished cell (same config hash) and skips the work.

Evaluation protocol (DESIGN §7): test images resized to the config's image size (240 px,
no centre crop), masks nearest-resized, image score = max of the final map.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import torch

from vtfusion import __version__, paths
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


@torch.no_grad()
def predict_split(model, split, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Run ``model`` over a test split in batches; returns ``final`` maps, ``score``s, ``masks``, ``labels``."""
    device = next(model.aie.parameters()).device
    model.eval()
    finals, scores, masks = [], [], []
    for start in range(0, len(split), batch_size):
        samples = [split[i] for i in range(start, min(start + batch_size, len(split)))]
        out = model(torch.stack([s["image"] for s in samples]).to(device))
        finals.append(out["final"][:, 0].float().cpu())
        scores.append(out["score"].float().cpu())
        masks.append(torch.stack([s["mask"][0] for s in samples]))
    return {"final": torch.cat(finals), "score": torch.cat(scores), "masks": torch.cat(masks),
            "labels": torch.tensor(split.labels)}


def evaluate_model(model, split, batch_size: int = 32) -> dict[str, float]:
    """All metrics of :func:`vtfusion.metrics.evaluate_maps` for ``model`` on ``split``."""
    pred = predict_split(model, split, batch_size)
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
             data_root: str | Path | None = None, backbone=None, progress: bool = False) -> dict:
    """Train or load, evaluate and record one cell; a finished cell with the same config is reused.

    Returns the result dictionary (``metrics``, ``config``, timing, provenance; ``skipped``
    tells whether it was read from an earlier run).
    """
    from vtfusion.data import load_dataset
    from vtfusion.train import config_hash, train_or_load

    cell_cfg = cfg.replace(train=_train_with_seed(cfg, seed))
    path = result_path(cell_cfg, dataset, category, k, seed, method, results_root)
    previous = read_result(path)
    if previous is not None and previous.get("config_hash") == config_hash(cell_cfg):
        return {**previous, "skipped": True}
    start = time.perf_counter()
    model, info = train_or_load(cell_cfg, dataset, category, k, seed, root=runs_root, data_root=data_root,
                                backbone=backbone, progress=progress)
    test = load_dataset(dataset, category, "test", data_root, cell_cfg.data.image_size)
    t_eval = time.perf_counter()
    metrics = evaluate_model(model, test)
    result = {
        "format": RESULT_FORMAT,
        "dataset": dataset, "category": category, "k": k, "seed": seed, "method": method,
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
        "wall_seconds": time.perf_counter() - start,
    }
    atomic_write_json(path, result)
    return {**result, "skipped": False}


def _train_with_seed(cfg: ExperimentConfig, seed: int):
    import dataclasses

    return dataclasses.replace(cfg.train, seed=seed)
