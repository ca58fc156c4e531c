"""Small helpers shared by test modules (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import dataclasses

from vtfusion.config import ExperimentConfig, get_profile


def quick_config(iterations: int, **model_changes) -> ExperimentConfig:
    """The quick profile on CPU with ``iterations`` training steps; ``model_changes``
    replace fields of its :class:`~vtfusion.model.network.ModelConfig`."""
    cfg = get_profile("quick")
    return cfg.replace(train=dataclasses.replace(cfg.train, iterations=iterations, device="cpu"),
                       model=dataclasses.replace(cfg.model, **model_changes))
