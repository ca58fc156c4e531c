"""Choosing on validation data, never on test data.

Every default this project picks where the paper is silent is chosen by the functions
here, on the toy dataset's ``val`` split (normal and defective images drawn from other
seeds than the test split, :mod:`vtfusion.data.toy`). No function in this module opens a
``test`` split; ``tests/test_validation.py`` checks that by running a selection on a copy
of the data whose test folders are deleted.

* :func:`~vtfusion.evaluate.map_monitor` (in :mod:`vtfusion.evaluate`): a monitor for
  :func:`vtfusion.train.train_vtfusion` that scores ``M^v``, ``M^t`` and ``M^f`` on the
  validation split during training (the curves of the training chapter).
* :func:`validate`: one config on the validation cells (categories x k x seeds),
  trained (or loaded) exactly as a test run would be, plus the patch-kNN reference on
  the same cells.
* :func:`compare`: several named candidates, one summary row each, and the rule that
  picks one (:func:`selection_score`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vtfusion.backbone import build_backbone
from vtfusion.cache import FeatureCache
from vtfusion.config import ExperimentConfig
from vtfusion.data import load_dataset
from vtfusion.data.categories import categories as dataset_categories
from vtfusion.evaluate import run_cell, run_patch_knn_cell
from vtfusion.metrics import evaluate_maps
from vtfusion.patch_knn import nearest_distances, patch_descriptors
from vtfusion.stats import per_cell_records

VALIDATION_SPLIT = "val"
SUMMARY_METRICS = ("image_auroc", "pixel_auroc", "aupro")


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def summarize(results: list[dict], metrics: tuple[str, ...] = SUMMARY_METRICS) -> dict:
    """Mean over categories per (k, seed), then mean and std (population) over those cells.

    Returns ``{metric: mean, metric + "_std": std, "cells": n}`` plus, when the results
    carry them, the same for each single-modal map (``vision_image_auroc``, ...).
    """
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in results:
        groups.setdefault((r["k"], r["seed"]), []).append(r)
    row: dict = {"cells": len(results)}

    def add(name: str, getter) -> None:
        per_group = [_mean([getter(r) for r in rs]) for rs in groups.values()]
        if any(v != v for v in per_group):  # NaN: the metric is missing somewhere
            return
        row[name] = _mean(per_group)
        row[name + "_std"] = statistics.pstdev(per_group) if len(per_group) > 1 else 0.0

    for metric in metrics:
        add(metric, lambda r, m=metric: r["metrics"][m])
        for map_name in ("vision", "text"):
            if all(map_name in r.get("map_metrics", {}) for r in results):
                add(f"{map_name}_{metric}", lambda r, n=map_name, m=metric: r["map_metrics"][n][m])
    return row


def selection_score(row: dict) -> float:
    """The rule that picks a candidate: mean of image AUROC, pixel AUROC and AUPRO on validation."""
    return (row["image_auroc"] + row["pixel_auroc"] + row["aupro"]) / 3.0


def validate(cfg: ExperimentConfig, dataset: str = "toy", categories: tuple[str, ...] | None = None,
             shots: tuple[int, ...] = (2,), seeds: tuple[int, ...] = (0,), data_root: str | Path | None = None,
             results_root: str | Path | None = None, runs_root: str | Path | None = None, backbone=None,
             cache: FeatureCache | None = None, monitor: bool = False, progress: bool = False) -> list[dict]:
    """Train (or load) ``cfg`` on every (category, k, seed) cell and score it on the ``val`` split.

    The result files are the same as :func:`vtfusion.evaluate.run_cell` writes, ending in
    ``_val.json``; a rerun reuses them.
    """
    cats = tuple(categories or dataset_categories(dataset))
    backbone = backbone if backbone is not None else build_backbone(cfg.backbone, seed=0)
    cache = FeatureCache.from_env() if cache is None else cache
    cells = [(c, k, s) for k in shots for s in seeds for c in cats]
    bar = _bar(len(cells), progress, "validation")
    out = []
    for category, k, seed in cells:
        out.append(run_cell(cfg, dataset, category, k, seed, results_root=results_root, runs_root=runs_root,
                            data_root=data_root, backbone=backbone, cache=cache, split=VALIDATION_SPLIT,
                            monitor=monitor))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def validate_patch_knn(cfg: ExperimentConfig, dataset: str = "toy", categories: tuple[str, ...] | None = None,
                       shots: tuple[int, ...] = (2,), seeds: tuple[int, ...] = (0,),
                       data_root: str | Path | None = None, results_root: str | Path | None = None,
                       backbone=None, cache: FeatureCache | None = None, knn=None) -> list[dict]:
    """The patch-kNN reference on the same validation cells as :func:`validate`."""
    cats = tuple(categories or dataset_categories(dataset))
    return [run_patch_knn_cell(cfg, dataset, c, k, s, knn=knn, results_root=results_root, data_root=data_root,
                               backbone=backbone, cache=cache, split=VALIDATION_SPLIT)
            for k in shots for s in seeds for c in cats]


@dataclass(frozen=True)
class Candidate:
    """A named config to compare on validation, with a line saying what it changes."""

    name: str
    config: ExperimentConfig
    note: str = ""


def compare(candidates: list[Candidate], include_patch_knn: bool = True, progress: bool = True,
            **cells) -> list[dict]:
    """One validation summary row per candidate (and the patch-kNN reference first).

    ``cells`` are :func:`validate`'s keyword arguments (categories, shots, seeds, roots,
    backbone, cache). Each row has the candidate's ``name``, ``note``, the
    :func:`summarize` numbers, its ``selection_score`` and its cells' metrics (``per_cell``,
    for :func:`vtfusion.stats.paired_difference`).
    """
    if not candidates:
        raise ValueError("compare needs at least one candidate")
    backbone = cells.pop("backbone", None) or build_backbone(candidates[0].config.backbone, seed=0)
    cache = cells.pop("cache", None) or FeatureCache.from_env()
    rows = []
    if include_patch_knn:
        knn_cells = {k: v for k, v in cells.items() if k != "runs_root"}
        results = validate_patch_knn(candidates[0].config, backbone=backbone, cache=cache, **knn_cells)
        rows.append({"name": "patch_knn", "note": "training-free reference on the same tokens",
                     **summarize(results), "per_cell": per_cell_records(results)})
    for cand in candidates:
        results = validate(cand.config, backbone=backbone, cache=cache, progress=progress, **cells)
        rows.append({"name": cand.name, "note": cand.note, **summarize(results),
                     "per_cell": per_cell_records(results)})
    for row in rows:
        row["selection_score"] = selection_score(row)
    return rows


def _bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, leave=False)


def localisation_steps(backbone, dataset: str, category: str, k: int, seed: int = 0,
                       data_root: str | Path | None = None, cache: FeatureCache | None = None) -> list[dict]:
    """Where nearest-neighbour localisation is lost on the way to VTFusion's vision map (validation split).

    The same shots and validation images scored four ways, each changing one thing:

    1. ``tokens, every shot patch``: patch-kNN on the frozen multi-level tokens (the reference);
    2. ``projected, every shot patch``: the tokens through CLIP's ``ln_post`` and ``proj``, the
       AIE at initialisation (what the vision branch compares);
    3. ``tokens, mean prototypes``: Eq. 1's average of the shots per location, on the tokens;
    4. ``projected, mean prototypes``: both, i.e. the untrained vision map ``M^v`` of the paper.

    Returns one row per step with image AUROC, pixel AUROC and AUPRO (no training involved).
    """
    cache = FeatureCache.from_env() if cache is None else cache
    cache.prepare_backbone(backbone)
    split = load_dataset(dataset, category, VALIDATION_SPLIT, data_root)
    data = cache.images(split)
    tokens = cache.tokens(backbone, split, data).float()
    shots = backbone(load_dataset(dataset, category, "train", data_root).load_shots(k, seed))
    h, w = backbone.grid_size
    rows = []
    for space, f in (("tokens", lambda t: t), ("projected", backbone.project_tokens)):
        query, memory = patch_descriptors(f(tokens)), patch_descriptors(f(shots))
        for bank, mem in (("every shot patch", memory.reshape(-1, memory.shape[-1])),
                          ("mean prototypes", memory.mean(0))):
            grid = nearest_distances(query.reshape(-1, query.shape[-1]), mem).reshape(len(tokens), 1, h, w)
            maps = F.interpolate(grid, size=tuple(data.images.shape[-2:]), mode="bilinear", align_corners=False)
            m = evaluate_maps(maps[:, 0], data.masks.float(), torch.tensor(split.labels))
            rows.append({"features": space, "bank": bank, **{key: m[key] for key in SUMMARY_METRICS}})
    order = [("tokens", "every shot patch"), ("projected", "every shot patch"), ("tokens", "mean prototypes"),
             ("projected", "mean prototypes")]
    return sorted(rows, key=lambda r: order.index((r["features"], r["bank"])))
