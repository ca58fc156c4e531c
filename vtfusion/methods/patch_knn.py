"""The patch nearest-neighbour reference (:mod:`vtfusion.patch_knn`) as a registered method."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from vtfusion.methods.base import AnomalyMethod, Prediction, Shots
from vtfusion.methods.registry import register_method
from vtfusion.patch_knn import PatchKNN, PatchKNNConfig


@register_method("patch_knn")
class PatchKNNMethod(AnomalyMethod):
    """Patch nearest neighbour on the frozen multi-level tokens (PatchCore-style memory, no training)."""

    options_type = PatchKNNConfig

    def config(self) -> dict[str, Any]:
        """The backbone, the image size, the evaluation options and the :class:`PatchKNNConfig`
        (VTFusion's training options do not enter: another iteration count is the same cell)."""
        return {"backbone": dataclasses.asdict(self.cfg.backbone), "image_size": self.cfg.data.image_size,
                "eval": dataclasses.asdict(self.cfg.eval), "patch_knn": dataclasses.asdict(self.options)}

    def fit_shots(self, shots: Shots) -> None:
        self.knn = PatchKNN(self.options).fit(shots.tokens)

    def predict_batch(self, images: torch.Tensor | None, tokens: torch.Tensor | None,
                      size: tuple[int, int]) -> Prediction:
        out = self.knn.predict_tokens(tokens, size)
        return Prediction(out["final"][:, 0], out["score"])
