"""Shared fixtures: quick profile, the toy dataset, and the real samples (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VTFUSION_PROFILE", "quick")

from vtfusion.paths import real_ad_root  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def real_ad() -> Path:
    """``../shared/datasets/real_ad``; tests using it skip when the folder is absent."""
    root = real_ad_root()
    if not root.is_dir():
        pytest.skip(f"real samples not present at {root} (they ship beside the repository as ../shared)")
    return root


@pytest.fixture(scope="session")
def toy_root() -> Path:
    """The default toy dataset (generated once, reused)."""
    from vtfusion.data.toy import ensure_toy_dataset

    return ensure_toy_dataset()


@pytest.fixture(scope="module")
def backbone():
    """The tiny random backbone, one per test module (it is frozen; fast for unit tests)."""
    from helpers import TINY
    from vtfusion.backbone import build_backbone

    return build_backbone(TINY)


@pytest.fixture(autouse=True)
def _seed_global_rngs():
    """Seed torch, numpy and random before each test, so no test depends on the order it runs in."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
