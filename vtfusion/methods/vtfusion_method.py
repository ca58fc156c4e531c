"""VTFusion as a registered method: Algorithm 1 on the shots, then the trained network's maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vtfusion import train as algorithm  # called through the module, so a replaced train_vtfusion (tests) runs
from vtfusion.checkpoint import load_checkpoint, save_checkpoint
from vtfusion.config import ExperimentConfig, cell_fields
from vtfusion.methods.base import AnomalyMethod, FitContext, Prediction, Shots
from vtfusion.methods.registry import register_method
from vtfusion.model.network import VTFusion


@register_method("vtfusion")
class VTFusionMethod(AnomalyMethod):
    """VTFusion (the paper): trained with Algorithm 1 on synthetic anomalies of the shots."""

    map_names = ("vision", "text", "fused")
    paper_key = "vtfusion"

    def __init__(self, cfg: ExperimentConfig, backbone: nn.Module | None = None, options: Any = None) -> None:
        super().__init__(cfg, backbone, options)
        self.model: VTFusion | None = None

    @classmethod
    def from_model(cls, model: VTFusion, cfg: ExperimentConfig | None = None,
                   text_cache: Any = None) -> "VTFusionMethod":
        """Wrap a built (or trained) network, to predict with it through the method interface.

        ``cfg``: the config it was built from (default: one with its :class:`ModelConfig`,
        enough to predict). ``text_cache``: as :attr:`FitContext.text_cache`.
        """
        method = cls(cfg or ExperimentConfig(model=model.cfg), backbone=model.backbone)
        method.model = model
        method.context = FitContext(text_cache=text_cache)
        return method

    @property
    def backbone_seed(self) -> int:
        return self.cfg.train.seed  # as build_model seeds it

    def config(self) -> dict[str, Any]:
        """The whole config without what only selects cells (:func:`vtfusion.config.cell_fields`)."""
        return cell_fields(self.cfg)

    def fit_config(self) -> dict[str, Any]:
        """What determines the trained network (:func:`vtfusion.train.training_fields`)."""
        return algorithm.training_fields(self.cfg)

    def fit_shots(self, shots: Shots) -> dict[str, Any]:
        model = algorithm.build_model(self.cfg, dataset=shots.dataset, category=shots.category,
                                      backbone=self.backbone, device=self.cfg.train.device)
        if self.context.text_cache is not None:
            self.context.text_cache.prime_text(model)
        result = algorithm.train_vtfusion(model, shots.images, self.cfg, shots.dataset, shots.category,
                                          progress=self.context.progress, monitor=self.context.monitor)
        self.model = model
        return result.to_dict()

    def save(self, path: Path, record: dict[str, Any]) -> None:
        save_checkpoint(self._trained(), self.cfg, path, record)

    def load(self, path: Path, context: FitContext | None = None) -> dict[str, Any]:
        device = algorithm.resolve_device(self.cfg.train.device)
        self.model, _, record = load_checkpoint(path, backbone=self._backbone, device=device)
        self._backbone = self.model.backbone
        self.context = context or FitContext()
        return record

    def prepare(self) -> None:
        model = self._trained()
        model.eval()
        if self.context.text_cache is not None:
            self.context.text_cache.prime_text(model)
        model.text_features()

    def predict_batch(self, images: torch.Tensor | None, tokens: torch.Tensor | None,
                      size: tuple[int, int]) -> Prediction:
        with algorithm.deterministic_algorithms(self.cfg.train.deterministic):
            out = self._trained().forward_tokens(tokens, size)
        extra = {name: out[name][:, 0] for name in self.map_names if name in out and out[name].shape[1] == 1}
        return Prediction(out["final"][:, 0], out["score"], extra)

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone if self.model is not None else super().backbone

    def _trained(self) -> VTFusion:
        if self.model is None:
            raise RuntimeError("VTFusion has no network yet: fit it on the shots or load a saved run first")
        return self.model
