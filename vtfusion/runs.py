"""The run store: fitted methods on disk, reused when the same fit comes again.

A method whose fit is worth keeping (VTFusion: a trained network; see
:meth:`~vtfusion.methods.base.AnomalyMethod.fit_config`) is saved once per cell and what
determines its fit::

    runs/<profile>/<dataset>/<category>/k<k>_seed<seed>_<traininghash>/
        model.pt       the fitted state (VTFusion: :mod:`vtfusion.checkpoint`)
        history.json   the fit's record (loss history, monitor, wall time, shot list)
        train.lock     held while fitting: identical runs started together fit once

Any other method is fitted again each time (patch-kNN, zero-shot: seconds at most).
:func:`train_or_load` is the VTFusion shortcut the chapters and ``vtfusion train`` use.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from vtfusion import __version__, paths
from vtfusion.config import ExperimentConfig
from vtfusion.data import load_dataset
from vtfusion.data.registry import storage_name
from vtfusion.data.shots import shot_list_for
from vtfusion.io import atomic_write_json, file_lock
from vtfusion.methods import create_method
from vtfusion.methods.base import AnomalyMethod, FitContext, Shots
from vtfusion.methods.vtfusion_method import VTFusionMethod
from vtfusion.model.network import VTFusion
from vtfusion.results import content_key
from vtfusion.train import Monitor, training_fields

#: The file of a run's fitted state, inside its run folder.
STATE_FILE = "model.pt"


def training_hash(cfg: ExperimentConfig) -> str:
    """Short stable hash of what determines a trained VTFusion model (the key of a saved run).

    The whole config without :data:`~vtfusion.config.NOT_CELL` and
    :data:`~vtfusion.train.NOT_TRAINING`: evaluating the same model with and without map
    smoothing reuses one training run.
    """
    return content_key(training_fields(cfg))


def run_path(profile: str, dataset: str, category: str, k: int, seed: int, key: str,
             root: str | Path | None = None) -> Path:
    """``<runs>/<profile>/<dataset>/<category>/k<k>_seed<seed>_<key>/`` (``root``: default ``runs/``)."""
    base = Path(root) if root is not None else paths.runs_dir()
    return base / profile / dataset / category / f"k{k}_seed{seed}_{key}"


def run_dir(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int,
            root: str | Path | None = None) -> Path:
    """``runs/<profile>/<dataset>/<category>/k<k>_seed<seed>_<traininghash>/`` of a VTFusion run."""
    return run_path(cfg.profile, dataset, category, k, seed, training_hash(cfg), root)


def cell_shots(method: AnomalyMethod, dataset: str, category: str, k: int, seed: int,
               data_root: str | Path | None = None) -> Shots:
    """The committed k-shot images of a cell, as ``method`` is fitted on them (none for a zero-shot method)."""
    size = method.cfg.data.image_size
    data_root = method.cfg.data.root_for(dataset, data_root)
    backbone = method.backbone if method.reads_tokens else None
    if not method.uses_shots:
        return Shots(torch.empty(0, 3, size, size), dataset, category, seed, (), backbone)
    train_set = load_dataset(dataset, category, "train", data_root, size)
    shot_list = shot_list_for(train_set, k, seed)
    return Shots(train_set.load_shots(k, seed), dataset, category, seed, tuple(shot_list.files), backbone)


def fit_or_load(method: AnomalyMethod, dataset: str, category: str, k: int, seed: int,
                root: str | Path | None = None, data_root: str | Path | None = None,
                context: FitContext | None = None) -> dict:
    """Fit ``method`` on a cell's shots, or load its saved fit when the same one was made before.

    Returns the fit's record with ``shots``, ``loaded`` (read from disk) and, for a method
    that saves its fit, ``checkpoint``. A corrupt saved fit is fitted again (with a warning
    naming it); identical runs started together fit once (a lock file in the run folder,
    :func:`vtfusion.io.file_lock`).
    """
    context = context or FitContext()
    data_root = method.cfg.data.root_for(dataset, data_root)
    fit_config = method.fit_config()
    if fit_config is None:  # a cheap fit: never kept
        shots = cell_shots(method, dataset, category, k, seed, data_root)
        record = method.fit(shots, context)
        return {**record, "shots": list(shots.files), "seconds": method.cost.fit_seconds, "loaded": False}
    folder = run_path(method.cfg.profile, storage_name(dataset, data_root, "train"), category, k, seed,
                      content_key(fit_config), root)
    path = folder / STATE_FILE
    saved = _load_saved(method, path, context)
    if saved is not None:
        return saved
    # One lock per run folder: a second identical run waits here, then reuses the first one's fit.
    with file_lock(folder / "train.lock",
                   on_wait=lambda lock: warnings.warn(f"waiting for {lock}: the same run is training in another "
                                                      "process", RuntimeWarning, stacklevel=4)):
        saved = _load_saved(method, path, context)
        if saved is not None:
            return saved
        shots = cell_shots(method, dataset, category, k, seed, data_root)
        record = method.fit(shots, context)
        extra = {**record, "dataset": dataset, "category": category, "k": k, "seed": seed,
                 "shots": list(shots.files), "vtfusion_version": __version__}
        method.save(path, extra)
        atomic_write_json(folder / "history.json", extra)
    return {**extra, "loaded": False, "checkpoint": str(path)}


def _load_saved(method: AnomalyMethod, path: Path, context: FitContext) -> dict | None:
    """The saved fit of a run, or None when there is none or it is corrupt (then warned: the
    run is fitted again and the file replaced)."""
    if not path.is_file():
        return None
    try:
        extra = method.load(path, context)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        warnings.warn(f"checkpoint {path} is corrupt or from another version ({err}); training it again",
                      RuntimeWarning, stacklevel=3)
        return None
    return {**extra, "loaded": True, "checkpoint": str(path)}


def train_or_load(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int,
                  root: str | Path | None = None, data_root: str | Path | None = None,
                  backbone=None, progress: bool = True, cache=None,
                  monitor: Monitor | None = None) -> tuple[VTFusion, dict]:
    """Reuse a saved VTFusion model for the same config and cell, else train and save it.

    ``cache``: an optional :class:`vtfusion.cache.FeatureCache`; it supplies the text
    embeddings of the prompt ensemble from disk before training (not part of the config).
    ``monitor``: passed to :func:`vtfusion.train.train_vtfusion` when training happens.

    Returns ``(model, info)``; ``info`` holds the loss history, wall time, shot files and
    whether the model was ``loaded`` from disk (:func:`fit_or_load`).
    """
    method = VTFusionMethod(cfg.replace(train=_with_seed(cfg, seed)), backbone=backbone)
    info = fit_or_load(method, dataset, category, k, seed, root, data_root,
                       FitContext(progress=progress, monitor=monitor, text_cache=cache))
    return method.model, info


def _with_seed(cfg: ExperimentConfig, seed: int):
    return dataclasses.replace(cfg.train, seed=seed)


def fitted_method(name: str, cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int,
                  options=None, backbone=None, root: str | Path | None = None,
                  data_root: str | Path | None = None) -> tuple[AnomalyMethod, dict]:
    """A registered method fitted on a cell's shots, its saved fit reused (:func:`fit_or_load`).

    The cell's seed goes into ``cfg.train.seed`` as :func:`vtfusion.evaluate.run_method` does,
    so a fit made by ``run_method`` (or ``vtfusion reproduce``) for the same cell is loaded.
    Returns ``(method, info)``.
    """
    method = create_method(name, cfg.replace(train=_with_seed(cfg, seed)), backbone=backbone, options=options)
    if not method.uses_shots:
        k, seed = 0, 0
    return method, fit_or_load(method, dataset, category, k, seed, root, data_root)
