"""Small helpers shared by test modules (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import dataclasses

from vtfusion.config import BackboneConfig, ExperimentConfig, get_profile
from vtfusion.methods import AnomalyMethod, Prediction, Shots


TINY = BackboneConfig(arch="tiny", weights="random", layers=(1, 2, 3, 4), precision="fp32")
"""The random tiny backbone: unit tests use it (fast); the quick profile uses the pocket CLIP."""


def quick_config(iterations: int, **model_changes) -> ExperimentConfig:
    """The quick profile on CPU with the tiny backbone and ``iterations`` training steps;
    ``model_changes`` replace fields of its :class:`~vtfusion.model.network.ModelConfig`."""
    cfg = get_profile("quick")
    return cfg.replace(backbone=TINY, train=dataclasses.replace(cfg.train, iterations=iterations, device="cpu"),
                       model=dataclasses.replace(cfg.model, **model_changes))


class MeanShotDifference(AnomalyMethod):
    """Mean absolute pixel difference from the mean shot: a method for tests (no backbone, no training)."""

    reads_tokens = False

    def fit_shots(self, shots: Shots) -> None:
        self.mean_shot = shots.images.mean(0)

    def predict_batch(self, images, tokens, size) -> Prediction:
        maps = (images - self.mean_shot.to(images.device)).abs().mean(1)
        return Prediction(maps, maps.flatten(1).amax(1))
