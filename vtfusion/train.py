"""Training VTFusion with Algorithm 1 (the method's fit; saving and reusing runs is :mod:`vtfusion.runs`).

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
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from vtfusion.augment import AugmentConfig, augment_shots
from vtfusion.backbone import build_backbone, tokens_in_batches
from vtfusion.config import NOT_CELL, ExperimentConfig, TrainConfig, without_fields
from vtfusion.das import AnomalyTypeSelector, synthesize_batch
from vtfusion.data.categories import category_info
from vtfusion.foreground import category_foreground
from vtfusion.model.mpf import segmentation_loss
from vtfusion.model.network import VTFusion
from vtfusion.prompts import object_name_for

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
            :func:`vtfusion.evaluate.map_monitor`), called in eval mode before training,
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
    # from the first CUDA work on, so cuBLAS reads its deterministic workspace setting
    with deterministic_algorithms(tc.deterministic):
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


#: added to the training seed for the calibration's augmentation draws
CALIBRATION_SEED_OFFSET = 7919


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
    tokens = tokens_in_batches(model.backbone, views)
    model.calibrate(model.aie(tokens), tokens=tokens, unseen=True)


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, leave=False)


# --- what determines a training run -----------------------------------------------------

#: Config fields that change neither the trained weights nor the training's randomness:
#: a saved model is reused across them (evaluation options; what the history records).
NOT_TRAINING = (("eval",), ("train", "diagnostics_every"), ("train", "monitor_every"))


def training_fields(cfg: ExperimentConfig) -> dict[str, Any]:
    """What of ``cfg`` determines a trained model: the cell's fields
    (:func:`vtfusion.config.cell_fields`) without :data:`NOT_TRAINING`. Evaluating the same
    model with and without map smoothing reuses one training run."""
    return without_fields(cfg, NOT_CELL + NOT_TRAINING)
