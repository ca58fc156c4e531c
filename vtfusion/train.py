"""Training VTFusion with Algorithm 1, and the load-or-train pattern the chapters use.

Algorithm 1, as implemented by :func:`train_vtfusion`:

1. initialise AIE, ATE and MPF (AIE from CLIP's projection, adapters at identity);
2. compute the backbone tokens of the k normal shots **once** (they never change unless
   the shots are augmented) and build the frozen prototype bank from them (Eq. 1);
3. every iteration (:func:`training_step`): DAS turns each shot into a synthetic
   abnormal image (a type drawn per image), the frozen backbone encodes them without
   gradient, and the heads are trained on ``L = L_NFC + L_AFS + lambda * L_SEG`` (Eq. 10,
   whose first term the paper misprints as ``L_AFS``) with Adam and the paper's
   per-module learning rates;
4. after the fixed number of iterations the last iterate is kept. No checkpoint or
   hyper-parameter is ever chosen on a test split.

The options that the training-recipe study added (all **[choice]**, paper reading by
default; :class:`~vtfusion.config.TrainConfig`): leave-one-out prototypes for the training
normals, light augmentation of the shots, a learning-rate warm-up and a separate
learning-rate scale for the AIE's feature adaptor, deterministic algorithms.

Every iteration's record in the history holds each loss, the fraction of active hinge
cells of Eqs. 3-4 and the AFS margin; every ``diagnostics_every`` iterations (and in the
first ten) also the gradient norm that each loss sends into the AIE (``grad_aie_<loss>``)
and the AIE's relative feature change caused by the step (``aie_change``). A validation
monitor, if given, scores ``M^v``, ``M^t`` and ``M^f`` every ``monitor_every`` iterations.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from vtfusion import __version__
from vtfusion.augment import AugmentConfig, augment_shots
from vtfusion.config import ExperimentConfig, TrainConfig
from vtfusion.das import AnomalyTypeSelector, synthesize_batch
from vtfusion.data.categories import category_info
from vtfusion.foreground import category_foreground
from vtfusion.model.mpf import segmentation_loss
from vtfusion.model.network import VTFusion

LOSSES = ("nfc", "afs", "seg")
Monitor = Callable[[VTFusion], dict]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("TrainConfig.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Within the block, use only deterministic algorithms (CUDA included), then restore.

    Sets ``torch.use_deterministic_algorithms(True)``, disables cuDNN benchmarking and sets
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (needed by deterministic cuBLAS). A no-op when
    ``enabled`` is False.
    """
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]
        if previous[2] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def build_model(cfg: ExperimentConfig, object_name: str | None = None, dataset: str | None = None,
                category: str | None = None, backbone=None, device: str | torch.device = "auto") -> VTFusion:
    """The one way to build VTFusion from a config (seeded by ``cfg.train.seed``).

    The prompt word comes from ``object_name`` or else the category table
    (``dataset``/``category``).
    """
    from vtfusion.backbone import build_backbone
    from vtfusion.prompts import object_name_for

    if object_name is None:
        if dataset is None or category is None:
            raise ValueError("build_model needs object_name, or dataset and category to look it up")
        object_name = object_name_for(dataset, category)
    if backbone is None:
        backbone = build_backbone(cfg.backbone, seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model = VTFusion(backbone, cfg.model, object_name)
    return model.to(resolve_device(device) if isinstance(device, str) else device)


def make_optimiser(model: VTFusion, cfg: ExperimentConfig) -> tuple[torch.optim.Optimizer,
                                                                   torch.optim.lr_scheduler.LRScheduler]:
    """Adam with the paper's per-module learning rates, and the (optional) linear warm-up."""
    t = cfg.train
    optimiser = torch.optim.Adam(model.parameter_groups(t.lr_aie, t.lr_ate, t.lr_mpf, t.adaptor_lr_scale))
    warmup = t.warmup_iterations
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)
    return optimiser, schedule


def _grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    if not params or not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None) + 0.0))


def training_step(model: VTFusion, optimiser: torch.optim.Optimizer, normal_tokens: torch.Tensor,
                  abnormal_tokens: torch.Tensor, abnormal_masks: torch.Tensor, seg_weight: float = 1.0,
                  exclude: torch.Tensor | None = None, diagnose: bool = False) -> dict[str, float]:
    """One update of Algorithm 1 (lines 5-13): Eqs. 2-10 on a batch, backward, Adam step.

    Args:
        model: a :class:`VTFusion` in train mode with its prototype bank built.
        optimiser: from :func:`make_optimiser`.
        normal_tokens, abnormal_tokens: ``B x L x h x w x D`` frozen-backbone tokens of the
            normal images and of the synthetic anomalies made from them.
        abnormal_masks: ``B x 1 x H x W`` synthetic masks (``H x W`` is the image size).
        seg_weight: ``lambda`` of Eq. 10.
        exclude: optional ``B`` shot indices for leave-one-out prototypes (both halves of
            the batch use them: image ``b`` and its anomaly come from shot ``exclude[b]``).
        diagnose: also measure the gradient norm each loss sends into the AIE and the
            relative change of the AIE's normal features caused by this step (skipped
            when the AIE has nothing to train, as in the ``ate`` variant).

    Returns:
        the record of the step as floats: ``nfc``, ``afs``, ``seg``, ``total`` (Eq. 10),
        ``nfc_active``, ``afs_active``, ``afs_margin`` and, with ``diagnose``,
        ``grad_aie_nfc``, ``grad_aie_afs``, ``grad_aie_seg`` and ``aie_change``.
    """
    k = normal_tokens.shape[0]
    size = tuple(abnormal_masks.shape[-2:])
    features = model.aie(torch.cat([normal_tokens, abnormal_tokens]))
    losses: dict[str, torch.Tensor] = {}
    if model.uses_vision:
        if model.bank.cfg.refresh:
            model.bank.build(features[:k].detach())
        losses = model.bank.losses(features[:k], features[k:], abnormal_masks, exclude, exclude)
    both = None if exclude is None else torch.cat([exclude, exclude])
    maps = model.maps_from_features(features, size, exclude=both,
                                    tokens=torch.cat([normal_tokens, abnormal_tokens]))
    target = torch.cat([torch.zeros_like(abnormal_masks), abnormal_masks])
    losses["seg"] = segmentation_loss(maps["final"], target)
    total = losses.get("nfc", 0.0) + losses.get("afs", 0.0) + seg_weight * losses["seg"]
    record = {n: float(v.detach()) for n, v in losses.items()}
    record["total"] = float(total.detach())
    params = [p for p in model.aie.parameters() if p.requires_grad]
    diagnose = diagnose and bool(params)  # the `ate` variant has no trainable AIE to diagnose
    if diagnose:
        for name in LOSSES:
            if name in losses:
                record[f"grad_aie_{name}"] = _grad_norm(losses[name], params)
        before = features[:k].detach()
    optimiser.zero_grad(set_to_none=True)
    total.backward()
    optimiser.step()
    if diagnose:
        with torch.no_grad():
            after = model.aie(normal_tokens)
        record["aie_change"] = float((after - before).norm() / before.norm().clamp_min(1e-12))
    return record


@dataclass
class TrainResult:
    """What a training run returns: per-iteration records, validation monitor, timing."""

    history: list[dict] = field(default_factory=list)
    monitor: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    iterations: int = 0
    leave_one_out: bool = False

    def to_dict(self) -> dict:
        return {"history": self.history, "monitor": self.monitor, "seconds": self.seconds,
                "iterations": self.iterations, "leave_one_out_used": self.leave_one_out}


def _diagnose_at(it: int, cfg: ExperimentConfig) -> bool:
    every = cfg.train.diagnostics_every
    return every > 0 and (it < 10 or (it + 1) % every == 0 or it == cfg.train.iterations - 1)


def _run_monitor(model: VTFusion, monitor: Monitor, iteration: int) -> dict:
    was_training = model.training
    model.eval()
    try:
        return {"iteration": iteration, **monitor(model)}
    finally:
        model.train(was_training)


def train_vtfusion(model: VTFusion, shots: torch.Tensor, cfg: ExperimentConfig, dataset: str, category: str,
                   progress: bool = True, monitor: Monitor | None = None) -> TrainResult:
    """Algorithm 1 on the k normal shots (``k x 3 x S x S`` in [0, 1]); see the module docstring.

    Args:
        monitor: optional ``monitor(model) -> dict`` of validation numbers (e.g.
            :func:`vtfusion.validation.map_monitor`), called in eval mode before training,
            every ``cfg.train.monitor_every`` iterations and at the end. It only observes:
            the last iterate is returned whatever it says.

    Returns the per-iteration records (:func:`training_step`), the monitor's records and
    the wall time. Deterministic on CPU for a given ``cfg.train.seed``.
    """
    device = next(model.aie.parameters()).device
    shots = shots.to(device)
    k, size = shots.shape[0], tuple(shots.shape[-2:])
    tc = cfg.train
    gen = torch.Generator(device=device).manual_seed(tc.seed)
    selector = AnomalyTypeSelector.from_config(cfg.das)
    texture = category_info(dataset, category).texture if dataset != "folder" else False
    foreground = category_foreground(shots, dataset, category, cfg.das.foreground)
    shot_tokens = model.backbone(shots)  # computed once: the shots never change
    if model.uses_vision:
        model.build_prototypes(shot_tokens)
    leave_one_out = tc.leave_one_out and k >= 2 and model.uses_vision
    if tc.leave_one_out and not leave_one_out and model.uses_vision:
        warnings.warn(f"TrainConfig.leave_one_out needs k >= 2 shots (k = {k}): training without it",
                      RuntimeWarning, stacklevel=2)
    exclude = torch.arange(k, device=device) if leave_one_out else None
    optimiser, schedule = make_optimiser(model, cfg)
    result = TrainResult(leave_one_out=leave_one_out)
    bar = _progress(tc.iterations, progress, f"train {dataset}/{category} k={k}")
    start = time.perf_counter()
    with deterministic_algorithms(tc.deterministic):
        if monitor is not None:
            result.monitor.append(_run_monitor(model, monitor, 0))
        model.train()
        for it in range(tc.iterations):
            normal, normal_tokens, fg = shots, shot_tokens, foreground
            if tc.augment.enabled:
                normal = augment_shots(shots, gen, tc.augment, texture)
                normal_tokens = model.backbone(normal)
                fg = category_foreground(normal, dataset, category, cfg.das.foreground)
            abnormal, masks = synthesize_batch(normal, gen, cfg.das, foreground=fg,
                                               kinds=selector.sample(k, gen))
            record = training_step(model, optimiser, normal_tokens, model.backbone(abnormal), masks,
                                   cfg.model.seg_weight, exclude, diagnose=_diagnose_at(it, cfg))
            schedule.step()
            result.history.append({"iteration": it, **record})
            if monitor is not None and tc.monitor_every > 0 and (it + 1) % tc.monitor_every == 0 \
                    and it + 1 < tc.iterations:
                result.monitor.append(_run_monitor(model, monitor, it + 1))
            if bar is not None:
                bar.update(1)
                bar.set_postfix({n: f"{record[n]:.4f}" for n in ("total", *LOSSES) if n in record})
        model.eval()
        calibrate_after_training(model, shots, shot_tokens, tc, texture)
        if monitor is not None:
            result.monitor.append(_run_monitor(model, monitor, tc.iterations))
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - start
    result.iterations = tc.iterations
    return result


@torch.no_grad()
def calibrate_after_training(model: VTFusion, shots: torch.Tensor, shot_tokens: torch.Tensor,
                             tc: TrainConfig, texture: bool = False) -> None:
    """Store the normal statistics of the maps (:meth:`VTFusion.calibrate`) as ``tc.calibration`` says.

    ``shots``: ``k x 3 x S x S``; ``shot_tokens``: their backbone tokens. Augmented copies
    come from their own generator (seeded by ``tc.seed``), so the training draws are
    unchanged by this choice.
    """
    k, device = shots.shape[0], shots.device
    augmented = tc.calibration == "augmented" or (tc.calibration == "augmented_single" and k == 1)
    if not augmented:  # leave-one-out statistics whenever possible
        model.calibrate(model.aie(shot_tokens), torch.arange(k, device=device) if k >= 2 else None,
                        tokens=shot_tokens)
        return
    gen = torch.Generator(device=device).manual_seed(tc.seed + CALIBRATION_SEED_OFFSET)
    copies = shots.repeat((tc.calibration_views + k - 1) // k, 1, 1, 1)[:tc.calibration_views]
    views = augment_shots(copies, gen, AugmentConfig(kind="light"), texture)
    tokens = torch.cat([model.backbone(views[i:i + 32]) for i in range(0, len(views), 32)])
    model.calibrate(model.aie(tokens), tokens=tokens, unseen=True)


#: added to the training seed for the calibration's augmentation draws
CALIBRATION_SEED_OFFSET = 7919


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


# --- load-or-train ----------------------------------------------------------------------

#: Config fields that do not determine a cell: a cell names its dataset, category, k and
#: seed itself, so the profile's default dataset/root, the list of categories or seeds a
#: reproduction loops over and the default k never enter a cell's key (``reproduce
#: --categories chip weave`` and ``train --category chip`` share chip's run and result).
NOT_CELL = (("data", "dataset"), ("data", "root"), ("data", "categories"), ("data", "shots"), ("data", "seeds"))

#: Config fields that change neither the trained weights nor the training's randomness:
#: a saved model is reused across them (evaluation options; what the history records).
NOT_TRAINING = (("eval",), ("train", "diagnostics_every"), ("train", "monitor_every"))


def _hash_without(cfg: ExperimentConfig, dropped: tuple[tuple[str, ...], ...]) -> str:
    """Short stable hash of ``cfg.to_dict()`` without the ``dropped`` field paths."""
    data = cfg.to_dict()
    for path in dropped:
        node = data
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1], None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def config_hash(cfg: ExperimentConfig) -> str:
    """Short stable hash of what determines a cell's result (the key of a result file).

    The whole config without :data:`NOT_CELL`.
    """
    return _hash_without(cfg, NOT_CELL)


def training_hash(cfg: ExperimentConfig) -> str:
    """Short stable hash of what determines a trained model (the key of a saved run).

    The whole config without :data:`NOT_CELL` and :data:`NOT_TRAINING`: evaluating the
    same model with and without map smoothing reuses one training run.
    """
    return _hash_without(cfg, NOT_CELL + NOT_TRAINING)


def run_dir(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int,
            root: str | Path | None = None) -> Path:
    """``runs/<profile>/<dataset>/<category>/k<k>_seed<seed>_<traininghash>/``."""
    from vtfusion import paths

    base = Path(root) if root is not None else paths.runs_dir()
    return base / cfg.profile / dataset / category / f"k{k}_seed{seed}_{training_hash(cfg)}"


def train_or_load(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int,
                  root: str | Path | None = None, data_root: str | Path | None = None,
                  backbone=None, progress: bool = True, cache=None,
                  monitor: Monitor | None = None) -> tuple[VTFusion, dict]:
    """Reuse a saved model for the same config and cell, else train and save it.

    ``cache``: an optional :class:`vtfusion.cache.FeatureCache`; it supplies the text
    embeddings of the prompt ensemble from disk before training (not part of the config).
    ``monitor``: passed to :func:`train_vtfusion` when training happens.

    Returns ``(model, info)``; ``info`` holds the loss history, wall time, shot files and
    whether the model was ``loaded`` from disk. A corrupt ``model.pt`` is trained again
    (with a warning naming it); identical runs started together train once (a lock file
    in the run dir, see :func:`vtfusion.io.file_lock`).
    """
    from vtfusion.checkpoint import save_checkpoint
    from vtfusion.data import load_dataset
    from vtfusion.data.registry import storage_name
    from vtfusion.data.shots import shot_list_for
    from vtfusion.io import atomic_write_json, file_lock

    cfg = cfg.replace(train=_with_seed(cfg, seed))
    path = run_dir(cfg, storage_name(dataset, data_root), category, k, seed, root) / "model.pt"
    device = resolve_device(cfg.train.device)
    saved = _load_saved_run(path, backbone, device)
    if saved is not None:
        return saved
    # One lock per run dir: a second identical run waits here, then reuses the first one's model.
    with file_lock(path.with_name("train.lock"),
                   on_wait=lambda lock: warnings.warn(f"waiting for {lock}: the same run is training in another "
                                                      "process", RuntimeWarning, stacklevel=4)):
        saved = _load_saved_run(path, backbone, device)
        if saved is not None:
            return saved
        train_set = load_dataset(dataset, category, "train", data_root, cfg.data.image_size)
        shot_list = shot_list_for(train_set, k, seed)
        shots = train_set.load_shots(k, seed)
        model = build_model(cfg, dataset=dataset, category=category, backbone=backbone, device=cfg.train.device)
        if cache is not None:
            cache.prime_text(model)
        result = train_vtfusion(model, shots, cfg, dataset, category, progress=progress, monitor=monitor)
        extra = {**result.to_dict(), "dataset": dataset, "category": category, "k": k, "seed": seed,
                 "shots": list(shot_list.files), "vtfusion_version": __version__}
        save_checkpoint(model, cfg, path, extra)
        atomic_write_json(path.with_name("history.json"), extra)
    return model, {**extra, "loaded": False, "checkpoint": str(path)}


def _load_saved_run(path: Path, backbone, device: torch.device) -> tuple[VTFusion, dict] | None:
    """The saved model of a run, or None when there is none or it is corrupt (then warned:
    the run is trained again and the file replaced)."""
    from vtfusion.checkpoint import load_checkpoint

    if not path.is_file():
        return None
    try:
        model, _, extra = load_checkpoint(path, backbone=backbone, device=device)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        warnings.warn(f"checkpoint {path} is corrupt or from another version ({err}); training it again",
                      RuntimeWarning, stacklevel=3)
        return None
    return model, {**extra, "loaded": True, "checkpoint": str(path)}


def _with_seed(cfg: ExperimentConfig, seed: int):
    from dataclasses import replace

    return replace(cfg.train, seed=seed)
