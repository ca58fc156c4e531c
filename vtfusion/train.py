"""Training VTFusion with Algorithm 1, and the load-or-train pattern the chapters use.

Algorithm 1, as implemented by :func:`train_vtfusion`:

1. initialise AIE, ATE and MPF (AIE from CLIP's projection, adapters at identity);
2. compute the backbone tokens of the k normal shots **once** (they never change) and
   build the frozen prototype bank from them (Eq. 1);
3. every iteration: DAS turns each shot into a synthetic abnormal image (a type drawn
   per image), the frozen backbone encodes them without gradient, and the heads are
   trained on ``L = L_NFC + L_AFS + lambda * L_SEG`` (Eq. 10, whose first term the paper
   misprints as ``L_AFS``) with Adam and the paper's per-module learning rates;
4. after the fixed number of iterations the last iterate is kept. No checkpoint or
   hyper-parameter is ever chosen on a test split.

The normal batch is the k shots themselves, without augmentation **[choice]**: the paper
names none.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vtfusion import __version__
from vtfusion.config import ExperimentConfig
from vtfusion.das import AnomalyTypeSelector, synthesize_batch
from vtfusion.foreground import category_foreground
from vtfusion.model.mpf import segmentation_loss
from vtfusion.model.network import VTFusion


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("TrainConfig.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


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


@dataclass
class TrainResult:
    """What a training run returns: the loss history (one dict per iteration) and timing."""

    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    iterations: int = 0

    def to_dict(self) -> dict:
        return {"history": self.history, "seconds": self.seconds, "iterations": self.iterations}


def train_vtfusion(model: VTFusion, shots: torch.Tensor, cfg: ExperimentConfig, dataset: str, category: str,
                   progress: bool = True) -> TrainResult:
    """Algorithm 1 on the k normal shots (``k x 3 x S x S`` in [0, 1]); see the module docstring.

    Returns the per-iteration losses (``nfc``, ``afs``, ``seg``, ``total``). Deterministic on
    CPU for a given ``cfg.train.seed``.
    """
    device = next(model.aie.parameters()).device
    shots = shots.to(device)
    k, size = shots.shape[0], tuple(shots.shape[-2:])
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    selector = AnomalyTypeSelector.from_config(cfg.das)
    foreground = category_foreground(shots, dataset, category, cfg.das.foreground)
    normal_tokens = model.backbone(shots)  # computed once: the shots never change
    if model.uses_vision:
        model.build_prototypes(normal_tokens)
    optimiser = torch.optim.Adam(model.parameter_groups(cfg.train.lr_aie, cfg.train.lr_ate, cfg.train.lr_mpf))
    normal_target = torch.zeros(k, 1, *size, device=device)
    result = TrainResult()
    bar = _progress(cfg.train.iterations, progress, f"train {dataset}/{category} k={k}")
    start = time.perf_counter()
    model.train()
    for it in range(cfg.train.iterations):
        abnormal, masks = synthesize_batch(shots, gen, cfg.das, foreground=foreground,
                                           kinds=selector.sample(k, gen))
        features = model.aie(torch.cat([normal_tokens, model.backbone(abnormal)]))
        losses = {}
        if model.uses_vision:
            if model.bank.cfg.refresh:
                model.bank.build(features[:k].detach())
            losses = model.bank.losses(features[:k], features[k:], masks)
        maps = model.maps_from_features(features, size)
        losses["seg"] = segmentation_loss(maps["final"], torch.cat([normal_target, masks]))
        total = losses.get("nfc", 0.0) + losses.get("afs", 0.0) + cfg.model.seg_weight * losses["seg"]
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        record = {"iteration": it, **{n: v.item() for n, v in losses.items()}, "total": total.item()}
        result.history.append(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({n: f"{v:.4f}" for n, v in record.items() if n != "iteration"})
    if bar is not None:
        bar.close()
    model.eval()
    result.seconds = time.perf_counter() - start
    result.iterations = cfg.train.iterations
    return result


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


# --- load-or-train ----------------------------------------------------------------------

def config_hash(cfg: ExperimentConfig) -> str:
    """Short stable hash of a config (the key of a cached run)."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def run_dir(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int,
            root: str | Path | None = None) -> Path:
    """``runs/<profile>/<dataset>/<category>/k<k>_seed<seed>_<confighash>/``."""
    from vtfusion import paths

    base = Path(root) if root is not None else paths.PROJECT_ROOT / "runs"
    return base / cfg.profile / dataset / category / f"k{k}_seed{seed}_{config_hash(cfg)}"


def train_or_load(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int,
                  root: str | Path | None = None, data_root: str | Path | None = None,
                  backbone=None, progress: bool = True, cache=None) -> tuple[VTFusion, dict]:
    """Reuse a saved model for the same config and cell, else train and save it.

    ``cache``: an optional :class:`vtfusion.cache.FeatureCache`; it supplies the text
    embeddings of the prompt ensemble from disk before training (not part of the config).

    Returns ``(model, info)``; ``info`` holds the loss history, wall time, shot files and
    whether the model was ``loaded`` from disk.
    """
    from vtfusion.checkpoint import load_checkpoint, save_checkpoint
    from vtfusion.data import load_dataset
    from vtfusion.data.datasets import storage_name
    from vtfusion.data.shots import shot_list_for
    from vtfusion.io import atomic_write_json

    cfg = cfg.replace(train=_with_seed(cfg, seed))
    path = run_dir(cfg, storage_name(dataset, data_root), category, k, seed, root) / "model.pt"
    if path.is_file():
        model, _, extra = load_checkpoint(path, backbone=backbone, device=resolve_device(cfg.train.device))
        return model, {**extra, "loaded": True, "checkpoint": str(path)}
    train_set = load_dataset(dataset, category, "train", data_root, cfg.data.image_size)
    shot_list = shot_list_for(train_set, k, seed)
    shots = train_set.load_shots(k, seed)
    model = build_model(cfg, dataset=dataset, category=category, backbone=backbone, device=cfg.train.device)
    if cache is not None:
        cache.prime_text(model)
    result = train_vtfusion(model, shots, cfg, dataset, category, progress=progress)
    extra = {**result.to_dict(), "dataset": dataset, "category": category, "k": k, "seed": seed,
             "shots": list(shot_list.files), "vtfusion_version": __version__}
    save_checkpoint(model, cfg, path, extra)
    atomic_write_json(path.with_name("history.json"), extra)
    return model, {**extra, "loaded": False, "checkpoint": str(path)}


def _with_seed(cfg: ExperimentConfig, seed: int):
    from dataclasses import replace

    return replace(cfg.train, seed=seed)
