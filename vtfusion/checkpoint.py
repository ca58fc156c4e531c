"""Checkpoints of VTFusion: trainable parameters, prototypes and config only (a few MB).

The model's file format; where runs are kept and when one is reused is :mod:`vtfusion.runs`.

The frozen backbone is not saved; it is rebuilt from the config's backbone section.
Files are written atomically and read with ``torch.load(weights_only=True)``, which
refuses arbitrary pickled objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vtfusion import __version__
from vtfusion.config import ExperimentConfig
from vtfusion.io import atomic_write
from vtfusion.train import build_model

FORMAT = "vtfusion-checkpoint-1"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` via a temporary file and a rename (never half-written)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(model, config, path: str | Path, extra: dict | None = None) -> Path:
    """Save a :class:`~vtfusion.model.network.VTFusion` with its :class:`ExperimentConfig`.

    ``extra`` (JSON-like: numbers, strings, lists, dicts) is stored alongside, e.g. the
    loss history and the dataset/category it was trained on.
    """
    payload = {
        "format": FORMAT,
        "vtfusion_version": __version__,
        "config": config.to_dict(),
        "object_name": model.object_name,
        "state_dict": {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()},
        "extra": extra or {},
    }
    return atomic_torch_save(payload, path)


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dictionary, safely loaded; clear errors for other files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train one with `vtfusion train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors of many kinds
        raise ValueError(f"{path} is not a readable vtfusion checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vtfusion checkpoint (expected format {FORMAT!r})")
    return payload


def load_checkpoint(path: str | Path, backbone=None, device: str | torch.device = "cpu"):
    """Rebuild the model of a checkpoint; returns ``(model, config, extra)``.

    ``backbone``: reuse an already built :class:`~vtfusion.backbone.FrozenCLIP` (it must
    match the checkpoint's backbone config); otherwise one is built from the config.
    """
    payload = read_checkpoint(path)
    config = ExperimentConfig.from_dict(payload["config"])
    model = build_model(config, object_name=payload["object_name"], backbone=backbone, device="cpu")
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the model built from its config: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.to(device).eval()
    return model, config, payload["extra"]
