"""Evaluation runs: one result file per (dataset, category, k, seed, method) cell, for every registered method.

A cell fits its method on the shots (VTFusion trains, or loads a saved run:
:mod:`vtfusion.runs`), scores the test split in batches and writes
``results/<profile>/<dataset>/<method>/<category>/k<k>_seed<seed>_<key>.json`` with every
metric of :mod:`vtfusion.metrics`, the full config, the method's config and its hash (the
key, :func:`vtfusion.results.result_key`), the shot list, the backbone, the package
version, the git commit, the wall times and the method's cost. Writes are atomic; a rerun
finds the file of a finished cell (same key) and skips the work; a file that fails
validation (:mod:`vtfusion.results`) is recomputed with a warning.

:func:`run_method` runs any registered method (:mod:`vtfusion.methods`); :func:`run_cell`
(VTFusion), :func:`run_patch_knn_cell` and :func:`run_zero_shot_cell` are its shortcuts.

Evaluation protocol (DESIGN §7): test images resized to the config's image size (240 px,
no centre crop), masks nearest-resized, image score = the method's (VTFusion: max of the
final map).

Speed (:mod:`vtfusion.cache`): the test split is decoded once into a ``uint8`` image cache
and, by default, the frozen backbone's test tokens are computed once and kept on disk in
``float16``; a method that reads tokens then runs only its own part in batches, so
rerunning a cell, another method, seed, k or ablation variant on the same category never
recomputes the backbone. The switches (:class:`~vtfusion.cache.PerfSettings`) are not part
of the config hash; each result file records them under ``eval_cache``.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from vtfusion import __version__
from vtfusion.cache import FeatureCache, settings_dict, supports
from vtfusion.config import ExperimentConfig
from vtfusion.data import load_dataset
from vtfusion.data.registry import storage_name
from vtfusion.io import atomic_write_json
from vtfusion.methods import AnomalyMethod, FitContext, create_method, get_method
from vtfusion.methods.vtfusion_method import VTFusionMethod
from vtfusion.metrics import PIXEL_METRIC_KEYS, evaluate_maps, gaussian_smooth
from vtfusion.patch_knn import PatchKNNConfig
from vtfusion.provenance import git_commit
from vtfusion.results import RESULT_FORMAT, read_cell_result, result_key, result_path
from vtfusion.runs import fit_or_load


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
    """Run a method (or a VTFusion network) over a split in batches.

    Returns ``final`` maps (``N x H x W``), ``score``s, ``masks`` and ``labels``, and the
    extra maps the method names (VTFusion: ``vision`` ``M^v``, ``text`` ``M^t``, ``fused``
    ``M^vt``; ``N x h x w``), so that each can be scored on its own.

    Args:
        model: an :class:`~vtfusion.methods.base.AnomalyMethod`, or a
            :class:`~vtfusion.model.network.VTFusion` network (wrapped with
            :meth:`VTFusionMethod.from_model <vtfusion.methods.vtfusion_method.VTFusionMethod.from_model>`).
        cache: where decoded images and backbone tokens come from (:mod:`vtfusion.cache`);
            ``None`` means ``FeatureCache.from_env()`` (on disk by default),
            ``FeatureCache.disabled()`` decodes and runs the backbone every time.
        timings: if given, seconds per stage are added to it: ``images`` (decode and
            resize, or cache read), ``setup`` (the method's :meth:`prepare`: VTFusion's
            prompt-ensemble embedding), ``backbone`` (tokens: computed or read) and
            ``heads`` (the method's own part: VTFusion's AIE, prototypes, ATE, MPF).
    """
    cache = FeatureCache.from_env() if cache is None else cache
    method = model if isinstance(model, AnomalyMethod) else VTFusionMethod.from_model(model, text_cache=cache)
    if method.context.text_cache is None:
        method.context.text_cache = cache
    device = method.device
    if not supports(split):  # e.g. a split opened without resizing: the sample-by-sample path
        return _predict_samples(method, split, batch_size)
    with _stage(timings, "images", device):
        data = cache.images(split)
    with _stage(timings, "setup", device):
        method.prepare()
    size = tuple(data.images.shape[-2:])
    tokens = None
    if method.reads_tokens:
        if cache.settings.tokens:
            with _stage(timings, "backbone", device):
                tokens = cache.tokens(method.backbone, split, data, batch_size)
        else:
            cache.prepare_backbone(method.backbone)
    finals, scores, extra = [], [], {}
    for start in range(0, len(split), batch_size):
        stop = min(len(split), start + batch_size)
        batch_tokens = images = None
        if tokens is not None:
            batch_tokens = tokens[start:stop].to(device, non_blocking=True).float()
        elif method.reads_tokens:
            with _stage(timings, "backbone", device):
                batch_tokens = method.backbone(data.batch(start, stop, device))
        else:
            images = data.batch(start, stop, device)
        with _stage(timings, "heads", device):
            pred = method.predict(images, batch_tokens, size)
            _collect(pred, method, finals, scores, extra)
    return {"final": torch.cat(finals), "score": torch.cat(scores), "masks": data.masks.float(),
            "labels": torch.tensor(split.labels), **{n: torch.cat(v) for n, v in extra.items()}}


def _collect(pred, method: AnomalyMethod, finals: list, scores: list, extra: dict[str, list]) -> None:
    finals.append(pred.maps.float().cpu())
    scores.append(pred.scores.float().cpu())
    for name in method.map_names:
        if name in pred.extra_maps:
            extra.setdefault(name, []).append(pred.extra_maps[name].float().cpu())


def _predict_samples(method: AnomalyMethod, split, batch_size: int) -> dict[str, torch.Tensor]:
    method.prepare()
    finals, scores, masks, extra = [], [], [], {}
    for start in range(0, len(split), batch_size):
        samples = [split[i] for i in range(start, min(start + batch_size, len(split)))]
        _collect(method.predict(torch.stack([s["image"] for s in samples])), method, finals, scores, extra)
        masks.append(torch.stack([s["mask"][0] for s in samples]))
    return {"final": torch.cat(finals), "score": torch.cat(scores), "masks": torch.cat(masks),
            "labels": torch.tensor(split.labels), **{n: torch.cat(v) for n, v in extra.items()}}


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


def map_monitor(split, backbone, cache: FeatureCache | None = None,
                smoothing_sigma: float = 0.0) -> Callable:
    """``monitor(model) -> {"<map>_<metric>": value}`` on a validation split.

    Scores ``final`` (``M^f``), ``vision`` (``M^v``) and ``text`` (``M^t``) for image and
    pixel AUROC. The split's tokens come from ``cache`` (computed once, then read from
    memory), so a call costs only the trained heads. Give it to training
    (:func:`vtfusion.runs.train_or_load`, :func:`run_cell` with ``monitor=True``).
    """
    if split.split == "test":
        raise ValueError("map_monitor watches a validation split; monitoring the test split would let "
                         "it steer choices (load the 'val' split)")
    cache = FeatureCache.from_env() if cache is None else cache
    cache.prepare_backbone(backbone)

    def monitor(model) -> dict:
        scored = score_predictions(predict_split(model, split, cache=cache), smoothing_sigma,
                                   ("final", "vision", "text"))
        return {f"{name}_{metric}": m[metric] for name, m in scored.items()
                for metric in ("image_auroc", "pixel_auroc")}

    return monitor


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


def run_method(method: str, cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int,
               options: Any = None, folder: str | None = None, results_root: str | Path | None = None,
               runs_root: str | Path | None = None, data_root: str | Path | None = None, backbone=None,
               progress: bool = False, cache: FeatureCache | None = None, split: str = "test",
               monitor: bool = False) -> dict:
    """Fit (or load), evaluate and record one cell of a registered method; a finished cell is reused.

    Args:
        method: a name of :func:`vtfusion.methods.list_methods`.
        options: the method's own options (its ``options_type``; default: its defaults).
        folder: the results folder of the method (default: its name; ``reproduce`` uses
            ``<table>-<row>``).
        backbone: a frozen backbone to share (built from ``cfg.backbone`` when None).
        cache: decoded-image and backbone-token caches (:mod:`vtfusion.cache`); ``None``
            means ``FeatureCache.from_env()``. Share one across cells (as ``reproduce``
            does) so that every method and cell of a category reuses its test tokens.
        split: ``test``, or ``val`` where a dataset has a validation split (the toy data):
            every choice of a default is made on ``val`` (:mod:`vtfusion.validation`).
        monitor: when the method trains, score the validation maps during training
            (:func:`map_monitor`; needs a ``val`` split).

    A method without shots (``uses_shots = False``) runs once per category as ``k = 0``,
    ``seed = 0``. Returns the result dictionary (``metrics`` of the final map,
    ``map_metrics`` of the method's other maps, ``config``, ``method_config``, ``cost``,
    timing, provenance; ``skipped`` tells whether it was read from an earlier run).
    """
    data_root = cfg.data.root_for(dataset, data_root)
    instance, k, seed, key, path = _locate(method, cfg, dataset, category, k, seed, options, folder,
                                           results_root, data_root, backbone, split)
    cell_cfg = instance.cfg
    previous = read_result(path)
    if previous is not None and previous.get("config_hash") == key:
        return {**previous, "skipped": True, "result_file": str(path)}
    start = time.perf_counter()
    cache = FeatureCache.from_env() if cache is None else cache
    if instance.reads_tokens:
        cache.prepare_backbone(instance.backbone)
    watcher = None
    if monitor:
        if instance.fit_config() is None:
            raise ValueError(f"monitor=True watches a method while it trains; {method!r} does not train")
        watcher = map_monitor(load_dataset(dataset, category, "val", data_root, cell_cfg.data.image_size),
                              instance.backbone, cache, cell_cfg.eval.smoothing_sigma)
    info = fit_or_load(instance, dataset, category, k, seed, runs_root, data_root,
                       FitContext(progress=progress, monitor=watcher, text_cache=cache))
    evaluated = load_dataset(dataset, category, split, data_root, cell_cfg.data.image_size)
    t_eval = time.perf_counter()
    stages: dict[str, float] = {}
    pred = predict_split(instance, evaluated, cache=cache, timings=stages)
    with _stage(stages, "metrics", torch.device("cpu")):
        metrics = score_predictions(pred, cell_cfg.eval.smoothing_sigma, ("final", *instance.map_names),
                                    pixel_metrics=has_masks(evaluated))
    timing = {
        "shots": info.get("shots"),
        "train_seconds": None if info.get("loaded") else info.get("seconds"),
        "model_loaded_from_cache": bool(info.get("loaded")),
        # what the fit took when the run was made (also when it is read back now)
        "recorded_train_seconds": info.get("seconds"),
        "eval_seconds": time.perf_counter() - t_eval,
        "eval_stage_seconds": stages,
        "eval_cache": settings_dict(cache),
        "wall_seconds": time.perf_counter() - start,
        "method_config": instance.config(),
        "cost": instance.cost.to_dict(),
    }
    return _write_result(path, cell_cfg, key, evaluated, metrics, timing, dataset=dataset,
                         **_unmeasured(evaluated, metrics),
                         data_root=str(data_root) if data_root is not None else None,
                         category=category, k=k, seed=seed, method=folder or method)


def cell_result_file(method: str, cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int,
                     options: Any = None, folder: str | None = None, results_root: str | Path | None = None,
                     data_root: str | Path | None = None, backbone=None, split: str = "test") -> tuple[Path, str]:
    """``(result file, result key)`` of :func:`run_method` with the same arguments (the file
    need not exist; a finished one holds the key as its ``config_hash``).

    ``backbone``: share one (the method is only built, not fitted); ``None`` builds it.
    """
    _, _, _, key, path = _locate(method, cfg, dataset, category, k, seed, options, folder, results_root,
                                 cfg.data.root_for(dataset, data_root), backbone, split)
    return path, key


def _locate(method, cfg, dataset, category, k, seed, options, folder, results_root, data_root, backbone, split):
    """``(method instance, k, seed, result key, result path)`` of a cell, as :func:`run_method` keys it."""
    if not get_method(method).uses_shots:
        k, seed = 0, 0
    instance = create_method(method, cfg.replace(train=dataclasses.replace(cfg.train, seed=seed)),
                             backbone=backbone, options=options)
    key = result_key(instance.config())
    path = result_path(instance.cfg, storage_name(dataset, data_root, split), category, k, seed, folder or method,
                       results_root, split, key)
    return instance, k, seed, key, path


def run_cell(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int, method: str = "vtfusion",
             results_root: str | Path | None = None, runs_root: str | Path | None = None,
             data_root: str | Path | None = None, backbone=None, progress: bool = False,
             cache: FeatureCache | None = None, split: str = "test", monitor: bool = False) -> dict:
    """VTFusion on one cell (:func:`run_method` of ``vtfusion``): train or load, evaluate, record.

    ``method``: the results folder of the cell (default ``vtfusion``). The result's
    ``metrics`` are those of ``M^f``, its ``map_metrics`` those of ``M^v``, ``M^t`` and ``M^vt``.
    """
    return run_method("vtfusion", cfg, dataset, category, k, seed, folder=method, results_root=results_root,
                      runs_root=runs_root, data_root=data_root, backbone=backbone, progress=progress, cache=cache,
                      split=split, monitor=monitor)


def run_patch_knn_cell(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int,
                       knn: PatchKNNConfig | None = None, results_root: str | Path | None = None,
                       data_root: str | Path | None = None, backbone=None, cache: FeatureCache | None = None,
                       split: str = "test", method: str = "patch_knn") -> dict:
    """The training-free patch-kNN reference (:mod:`vtfusion.patch_knn`) on one cell.

    Same shot list, same frozen tokens (read from the same cache) and same metrics as
    :func:`run_cell`; the result is keyed by the backbone, image size, smoothing and
    the :class:`~vtfusion.patch_knn.PatchKNNConfig`, not by VTFusion's training options.
    """
    return run_method("patch_knn", cfg, dataset, category, k, seed, options=knn, folder=method,
                      results_root=results_root, data_root=data_root, backbone=backbone, cache=cache, split=split)


def run_zero_shot_cell(cfg: ExperimentConfig, dataset: str, category: str, results_root: str | Path | None = None,
                       data_root: str | Path | None = None, backbone=None, cache: FeatureCache | None = None,
                       split: str = "test", method: str = "zero_shot") -> dict:
    """Zero-shot CLIP (:class:`~vtfusion.methods.zero_shot.ZeroShotCLIP`) on one category, stored as ``k0_seed0``."""
    return run_method("zero_shot", cfg, dataset, category, 0, 0, folder=method, results_root=results_root,
                      data_root=data_root, backbone=backbone, cache=cache, split=split)
