"""Small helpers shared by test modules (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import dataclasses

from vtfusion.config import BackboneConfig, ExperimentConfig, get_profile


TINY = BackboneConfig(arch="tiny", weights="random", layers=(1, 2, 3, 4), precision="fp32")
"""The random tiny backbone: unit tests use it (fast); the quick profile uses the pocket CLIP."""


def quick_config(iterations: int, **model_changes) -> ExperimentConfig:
    """The quick profile on CPU with the tiny backbone and ``iterations`` training steps;
    ``model_changes`` replace fields of its :class:`~vtfusion.model.network.ModelConfig`."""
    cfg = get_profile("quick")
    return cfg.replace(backbone=TINY, train=dataclasses.replace(cfg.train, iterations=iterations, device="cpu"),
                       model=dataclasses.replace(cfg.model, **model_changes))
