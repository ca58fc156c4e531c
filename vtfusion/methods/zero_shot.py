"""Zero-shot CLIP as a registered method: the untrained text map of the prompt ensemble."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from vtfusion.config import ExperimentConfig
from vtfusion.methods.base import AnomalyMethod, Prediction, Shots
from vtfusion.methods.registry import register_method
from vtfusion.model.network import VTFusion
from vtfusion.train import build_model


@register_method("zero_shot")
class ZeroShotCLIP(AnomalyMethod):
    """Zero-shot CLIP: the untrained ATE's text map (prompt ensemble, Eq. 6); no shot, no training.

    The ``ate`` variant of VTFusion before any training: ``M^f = M^t / L`` upsampled, the
    image score read as ``ModelConfig.image_score`` says (the plain maximum in the paper's
    recipe, the maximum after a Gaussian in the project's). It needs no normal image, so it
    is one cell per category (stored as ``k0_seed0``).
    """

    uses_shots = False
    map_names = ("text",)

    def __init__(self, cfg: ExperimentConfig, backbone: nn.Module | None = None, options: Any = None) -> None:
        super().__init__(cfg.replace(model=dataclasses.replace(cfg.model, variant="ate")), backbone, options)
        self.model: VTFusion | None = None

    def config(self) -> dict[str, Any]:
        """The backbone, the text encoder's config, the image size and the evaluation options."""
        return {"backbone": dataclasses.asdict(self.cfg.backbone), "ate": dataclasses.asdict(self.cfg.model.ate),
                "image_size": self.cfg.data.image_size, "eval": dataclasses.asdict(self.cfg.eval)}

    def fit_shots(self, shots: Shots) -> None:
        self.model = build_model(self.cfg, dataset=shots.dataset, category=shots.category, backbone=self.backbone,
                                 device=self.cfg.train.device)

    def prepare(self) -> None:
        self.model.eval()
        if self.context.text_cache is not None:
            self.context.text_cache.prime_text(self.model)
        self.model.text_features()

    def predict_batch(self, images: torch.Tensor | None, tokens: torch.Tensor | None,
                      size: tuple[int, int]) -> Prediction:
        out = self.model.forward_tokens(tokens, size)
        return Prediction(out["final"][:, 0], out["score"], {"text": out["text"][:, 0]})
