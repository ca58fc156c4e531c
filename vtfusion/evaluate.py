"""Evaluation runs: one result file per (dataset, category, k, seed, method) cell.

A cell trains (or loads) the model of its config, scores the test split in batches and
writes ``results/<profile>/<dataset>/<method>/<category>/k<k>_seed<seed>_<confighash>.json``
with every metric of :mod:`vtfusion.metrics`, the full config and its hash, the shot list,
the backbone, the package version, the git commit and the wall times. Writes are atomic; a
rerun finds the file of a finished cell (same config hash) and skips the work; a file that
fails validation (:mod:`vtfusion.results`) is recomputed with a warning.

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

import hashlib
import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F

from vtfusion import __version__, paths
from vtfusion.cache import FeatureCache, settings_dict, supports
from vtfusion.config import ExperimentConfig
from vtfusion.io import atomic_write_json
from vtfusion.metrics import PIXEL_METRIC_KEYS, evaluate_maps, gaussian_smooth
from vtfusion.results import RESULT_FORMAT, read_cell_result

if TYPE_CHECKING:
    from vtfusion.patch_knn import PatchKNNConfig

def git_commit() -> str | None:
    """``HEAD`` of the project checkout (``+dirty`` with uncommitted changes), or None.

    Read-only: ``git status`` and even ``git diff`` refresh and rewrite ``.git/index``
    (racing the user's own git commands on every evaluated cell), so only plumbing runs,
    with ``GIT_OPTIONAL_LOCKS=0``: see :func:`_checkout_dirty`.
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=paths.PROJECT_ROOT,
                              capture_output=True, text=True, timeout=10, env=env)
        if head.returncode != 0:
            return None
        top, commit = head.stdout.strip().splitlines()
        return commit + ("+dirty" if _checkout_dirty(Path(top), env) else "")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _checkout_dirty(top: Path, env: dict[str, str]) -> bool:
    """Whether tracked files differ from ``HEAD``, without writing the index.

    Staged changes: ``diff --cached`` (index vs HEAD, no stat refresh). Worktree:
    ``diff-files`` lists files whose stat differs from the index, which includes files
    merely touched; their content is hashed (``hash-object``, nothing written) and
    compared with the index's blob.
    """
    def git(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=top, capture_output=True, text=True, timeout=30, env=env,
                              input=stdin)

    if git("diff", "--cached", "--quiet").returncode != 0:
        return True
    changed = [f for f in git("diff-files", "--name-only", "-z").stdout.split("\0") if f]
    if not changed:
        return False
    if any(not (top / f).is_file() for f in changed):  # deleted (or replaced by a folder)
        return True
    staged = {}
    for entry in git("ls-files", "-s", "-z", "--", *changed).stdout.split("\0"):
        if entry:
            meta, name = entry.split("\t", 1)
            staged[name] = meta.split()[1]
    hashed = git("hash-object", "--stdin-paths", stdin="\n".join(changed)).stdout.split()
    return hashed != [staged.get(f) for f in changed]


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


GRID_MAPS = ("vision", "text", "fused")
"""The single-modal and fused grid maps a VTFusion model returns besides ``final``."""


@torch.no_grad()
def predict_split(model, split, batch_size: int = 32, cache: FeatureCache | None = None,
                  timings: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Run ``model`` over a split in batches; returns ``final`` maps, ``score``s, ``masks``, ``labels``.

    Also the grid maps the model returns (``vision`` ``M^v``, ``text`` ``M^t``, ``fused``
    ``M^vt``; ``N x h x w``), so that each can be scored on its own.

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
    grids: dict[str, list[torch.Tensor]] = {}
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
            for name in GRID_MAPS:
                if name in out and out[name].shape[1] == 1:
                    grids.setdefault(name, []).append(out[name][:, 0].float().cpu())
    return {"final": torch.cat(finals), "score": torch.cat(scores), "masks": data.masks.float(),
            "labels": torch.tensor(split.labels), **{n: torch.cat(v) for n, v in grids.items()}}


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


def score_predictions(pred: dict[str, torch.Tensor], smoothing_sigma: float = 0.0,
                      maps: tuple[str, ...] = ("final",), pixel_metrics: bool = True
                      ) -> dict[str, dict[str, float | None]]:
    """Metrics of each named map of :func:`predict_split`'s output, ``{map: metrics}``.

    Grid maps (``vision``, ``text``, ``fused``) are upsampled bilinearly to the masks'
    size first. With ``smoothing_sigma > 0`` each pixel map is Gaussian-smoothed
    (:func:`vtfusion.metrics.gaussian_smooth`) and its image scores are the maxima of the
    smoothed map; without smoothing, ``final`` uses the model's own ``score``.
    ``pixel_metrics=False`` (a split with image labels only): the pixel metrics are None.
    """
    size = tuple(pred["masks"].shape[-2:])
    out = {}
    for name in maps:
        if name not in pred:
            continue
        m = pred[name]
        if tuple(m.shape[-2:]) != size:
            m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        scores = pred["score"] if name == "final" and smoothing_sigma == 0 else None
        m = gaussian_smooth(m, smoothing_sigma)
        out[name] = evaluate_maps(m, pred["masks"] if pixel_metrics else None, pred["labels"], image_scores=scores)
    return out


def evaluate_model(model, split, batch_size: int = 32, cache: FeatureCache | None = None,
                   timings: dict[str, float] | None = None, smoothing_sigma: float = 0.0,
                   maps: tuple[str, ...] = ("final",)) -> dict[str, float] | dict[str, dict[str, float]]:
    """All metrics of :func:`vtfusion.metrics.evaluate_maps` for ``model`` on ``split``.

    ``cache`` and ``timings`` as in :func:`predict_split`; ``timings["metrics"]`` is added.
    With the default ``maps=("final",)`` the metrics of ``M^f``; with several map names,
    ``{map: metrics}`` for each (:func:`score_predictions`).
    """
    pred = predict_split(model, split, batch_size, cache=cache, timings=timings)
    with _stage(timings, "metrics", torch.device("cpu")):
        scored = score_predictions(pred, smoothing_sigma, maps, pixel_metrics=has_masks(split))
    return scored["final"] if maps == ("final",) else scored


def has_masks(split) -> bool:
    """Whether every defective image of ``split`` has a mask (else: image metrics only)."""
    return getattr(split, "pixel_metrics_unavailable", None) is None


def _unmeasured(split, metrics: dict[str, dict]) -> dict:
    """``{"null_reasons": {"metrics.pixel_auroc": why, ...}}`` for a split without masks, else ``{}``:
    its pixel metrics are null (not measured) with the reason, never NaN."""
    reason = getattr(split, "pixel_metrics_unavailable", None)
    if reason is None:
        return {}
    where = {name: "metrics" if name == "final" else f"map_metrics.{name}" for name in metrics}
    return {"null_reasons": {f"{where[name]}.{key}": reason for name in metrics for key in PIXEL_METRIC_KEYS}}


def result_path(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int, method: str,
                root: str | Path | None = None, split: str = "test", key: str | None = None) -> Path:
    """``results/<profile>/<dataset>/<method>/<category>/k<k>_seed<seed>_<key>[_val].json``.

    ``key`` defaults to the config's hash, so a cell run with other options never
    overwrites this one; results on the validation split end in ``_val``.
    """
    from vtfusion.train import config_hash

    base = Path(root) if root is not None else paths.results_dir()
    suffix = "" if split == "test" else f"_{split}"
    return base / cfg.profile / dataset / method / category / f"k{k}_seed{seed}_{key or config_hash(cfg)}{suffix}.json"


def read_result(path: str | Path) -> dict | None:
    """A finished cell's result, or None when absent or invalid (then it is redone; an
    invalid file with a warning naming it: :func:`vtfusion.results.read_cell_result`)."""
    return read_cell_result(path)


def _write_result(path: Path, cfg: ExperimentConfig, key: str, split_data, metrics: dict, info: dict,
                  **fields) -> dict:
    result = {
        "format": RESULT_FORMAT,
        **fields,
        "split": split_data.split,
        "metrics": metrics["final"],
        "map_metrics": {name: m for name, m in metrics.items() if name != "final"},
        "resolution": cfg.data.image_size,
        "n_test": len(split_data), "n_defective": int(sum(split_data.labels)),
        "shots": info.get("shots"),
        "profile": cfg.profile,
        "backbone": {"arch": cfg.backbone.arch, "weights": cfg.backbone.weights},
        "config": cfg.to_dict(),
        "config_hash": key,
        "vtfusion_version": __version__,
        "git_commit": git_commit(),
        **{k: v for k, v in info.items() if k not in ("shots",)},
    }
    atomic_write_json(path, result)
    return {**result, "skipped": False, "result_file": str(path)}


def run_cell(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int, method: str = "vtfusion",
             results_root: str | Path | None = None, runs_root: str | Path | None = None,
             data_root: str | Path | None = None, backbone=None, progress: bool = False,
             cache: FeatureCache | None = None, split: str = "test", monitor: bool = False) -> dict:
    """Train or load, evaluate and record one cell; a finished cell with the same config is reused.

    ``cache``: decoded-image and backbone-token caches (:mod:`vtfusion.cache`); ``None``
    means ``FeatureCache.from_env()``. Share one across cells (as ``reproduce`` does) so
    that cells of one category reuse its test tokens from memory.

    ``split``: ``test``, or ``val`` where a dataset has a validation split (the toy data):
    every choice of a default is made on ``val`` (:mod:`vtfusion.validation`).
    ``monitor``: when training, score the validation maps during training
    (:func:`vtfusion.validation.map_monitor`; needs a ``val`` split).

    Returns the result dictionary (``metrics`` of ``M^f``, ``map_metrics`` of ``M^v``,
    ``M^t`` and ``M^vt``, ``config``, timing, provenance; ``skipped`` tells whether it was
    read from an earlier run).
    """
    from vtfusion.data import load_dataset
    from vtfusion.data.registry import storage_name
    from vtfusion.train import config_hash, deterministic_algorithms, train_or_load

    cell_cfg = cfg.replace(train=_train_with_seed(cfg, seed))
    key = config_hash(cell_cfg)
    path = result_path(cell_cfg, storage_name(dataset, data_root), category, k, seed, method, results_root,
                       split, key)
    previous = read_result(path)
    if previous is not None and previous.get("config_hash") == key:
        return {**previous, "skipped": True, "result_file": str(path)}
    start = time.perf_counter()
    cache = FeatureCache.from_env() if cache is None else cache
    if backbone is None and (cache.settings.compile or monitor):  # shared by training and the monitor
        from vtfusion.backbone import build_backbone

        backbone = build_backbone(cell_cfg.backbone, seed=cell_cfg.train.seed)  # as build_model would
    if backbone is not None:
        cache.prepare_backbone(backbone)
    watcher = None
    if monitor:
        from vtfusion.validation import map_monitor

        watcher = map_monitor(load_dataset(dataset, category, "val", data_root, cell_cfg.data.image_size),
                              backbone, cache, cell_cfg.eval.smoothing_sigma)
    model, info = train_or_load(cell_cfg, dataset, category, k, seed, root=runs_root, data_root=data_root,
                                backbone=backbone, progress=progress, cache=cache, monitor=watcher)
    evaluated = load_dataset(dataset, category, split, data_root, cell_cfg.data.image_size)
    t_eval = time.perf_counter()
    stages: dict[str, float] = {}
    with deterministic_algorithms(cell_cfg.train.deterministic):
        metrics = evaluate_model(model, evaluated, cache=cache, timings=stages,
                                 smoothing_sigma=cell_cfg.eval.smoothing_sigma,
                                 maps=("final", "vision", "text", "fused"))
    timing = {
        "shots": info.get("shots"),
        "train_seconds": None if info.get("loaded") else info.get("seconds"),
        "model_loaded_from_cache": bool(info.get("loaded")),
        "eval_seconds": time.perf_counter() - t_eval,
        "eval_stage_seconds": stages,
        "eval_cache": settings_dict(cache),
        "wall_seconds": time.perf_counter() - start,
    }
    return _write_result(path, cell_cfg, key, evaluated, metrics, timing, dataset=dataset,
                         **_unmeasured(evaluated, metrics),
                         data_root=str(data_root) if data_root is not None else None,
                         category=category, k=k, seed=seed, method=method)


def run_patch_knn_cell(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int,
                       knn: "PatchKNNConfig | None" = None, results_root: str | Path | None = None,
                       data_root: str | Path | None = None, backbone=None, cache: FeatureCache | None = None,
                       split: str = "test", method: str = "patch_knn") -> dict:
    """The training-free patch-kNN reference (:mod:`vtfusion.patch_knn`) on one cell.

    Same shot list, same frozen tokens (read from the same cache) and same metrics as
    :func:`run_cell`; the result is keyed by the backbone, image size, smoothing and
    the :class:`~vtfusion.patch_knn.PatchKNNConfig`, not by VTFusion's training options.
    """
    import dataclasses

    from vtfusion.backbone import build_backbone
    from vtfusion.data import load_dataset
    from vtfusion.data.registry import storage_name
    from vtfusion.data.shots import shot_list_for
    from vtfusion.patch_knn import PatchKNN, PatchKNNConfig

    knn = knn or PatchKNNConfig()
    payload = {"backbone": cfg.backbone, "image_size": cfg.data.image_size, "eval": cfg.eval, "patch_knn": knn}
    key = hashlib.sha256(json.dumps({n: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                                     for n, v in payload.items()}, sort_keys=True).encode()).hexdigest()[:12]
    path = result_path(cfg, storage_name(dataset, data_root), category, k, seed, method, results_root, split, key)
    previous = read_result(path)
    if previous is not None and previous.get("config_hash") == key:
        return {**previous, "skipped": True, "result_file": str(path)}
    start = time.perf_counter()
    cache = FeatureCache.from_env() if cache is None else cache
    backbone = backbone if backbone is not None else build_backbone(cfg.backbone, seed=0)
    cache.prepare_backbone(backbone)
    train = load_dataset(dataset, category, "train", data_root, cfg.data.image_size)
    shot_list = shot_list_for(train, k, seed)
    device = next(backbone.parameters()).device
    t_fit = time.perf_counter()
    model = PatchKNN(knn).fit(backbone(train.load_shots(k, seed).to(device)))
    fit_seconds = time.perf_counter() - t_fit
    evaluated = load_dataset(dataset, category, split, data_root, cfg.data.image_size)
    t_eval = time.perf_counter()
    data = cache.images(evaluated)
    tokens = cache.tokens(backbone, evaluated, data)
    out = model.predict_tokens(tokens.to(device).float(), tuple(data.images.shape[-2:]))
    pred = {"final": out["final"][:, 0].cpu(), "score": out["score"].cpu(), "masks": data.masks.float(),
            "labels": torch.tensor(evaluated.labels)}
    metrics = score_predictions(pred, cfg.eval.smoothing_sigma, pixel_metrics=has_masks(evaluated))
    timing = {"shots": list(shot_list.files), "train_seconds": fit_seconds, "model_loaded_from_cache": False,
              "eval_seconds": time.perf_counter() - t_eval, "eval_cache": settings_dict(cache),
              "wall_seconds": time.perf_counter() - start, "patch_knn": dataclasses.asdict(knn)}
    return _write_result(path, cfg, key, evaluated, metrics, timing, dataset=dataset,
                         **_unmeasured(evaluated, metrics),
                         data_root=str(data_root) if data_root is not None else None,
                         category=category, k=k, seed=seed, method=method)


def run_zero_shot_cell(cfg: ExperimentConfig, dataset: str, category: str, results_root: str | Path | None = None,
                       data_root: str | Path | None = None, backbone=None, cache: FeatureCache | None = None,
                       split: str = "test", method: str = "zero_shot") -> dict:
    """Zero-shot CLIP: the untrained ATE's text map (the prompt ensemble, Eq. 6), no shot, no training.

    The ``ate`` variant of VTFusion before any training: ``M^f = M^t / L`` upsampled, image
    score its maximum. It needs no normal image, so it is one cell per category
    (stored as ``k0_seed0``).
    """
    import dataclasses

    from vtfusion.data import load_dataset
    from vtfusion.data.registry import storage_name
    from vtfusion.train import build_model

    zs_cfg = cfg.replace(model=dataclasses.replace(cfg.model, variant="ate"))
    payload = {"backbone": dataclasses.asdict(zs_cfg.backbone), "ate": dataclasses.asdict(zs_cfg.model.ate),
               "image_size": zs_cfg.data.image_size, "eval": dataclasses.asdict(zs_cfg.eval)}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    path = result_path(zs_cfg, storage_name(dataset, data_root), category, 0, 0, method, results_root, split, key)
    previous = read_result(path)
    if previous is not None and previous.get("config_hash") == key:
        return {**previous, "skipped": True, "result_file": str(path)}
    start = time.perf_counter()
    cache = FeatureCache.from_env() if cache is None else cache
    model = build_model(zs_cfg, dataset=dataset, category=category, backbone=backbone, device=zs_cfg.train.device)
    cache.prepare_backbone(model.backbone)
    evaluated = load_dataset(dataset, category, split, data_root, zs_cfg.data.image_size)
    metrics = evaluate_model(model, evaluated, cache=cache, smoothing_sigma=zs_cfg.eval.smoothing_sigma,
                             maps=("final", "text"))
    timing = {"shots": [], "train_seconds": 0.0, "model_loaded_from_cache": False,
              "eval_seconds": time.perf_counter() - start, "eval_cache": settings_dict(cache),
              "wall_seconds": time.perf_counter() - start}
    return _write_result(path, zs_cfg, key, evaluated, metrics, timing, dataset=dataset,
                         **_unmeasured(evaluated, metrics),
                         data_root=str(data_root) if data_root is not None else None,
                         category=category, k=0, seed=0, method=method)


def _train_with_seed(cfg: ExperimentConfig, seed: int):
    import dataclasses

    return dataclasses.replace(cfg.train, seed=seed)
