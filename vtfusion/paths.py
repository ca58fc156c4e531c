"""Where things live on disk: the project root, embedded data, shared real data.

Every path can be overridden by an environment variable so that notebooks, tests
and the CLI agree without passing paths around.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent


def data_dir() -> Path:
    """Root of the embedded data folder (``data/``), or ``$VTFUSION_DATA_DIR``."""
    return Path(os.environ.get("VTFUSION_DATA_DIR", PROJECT_ROOT / "data"))


def toy_root() -> Path:
    """Where the generated toy dataset lives (``data/toy``), or ``$VTFUSION_TOY_ROOT``."""
    return Path(os.environ.get("VTFUSION_TOY_ROOT", data_dir() / "toy"))


def shots_dir() -> Path:
    """Committed shot lists: ``data/shots/<dataset>/<category>/k<k>_seed<s>.json``."""
    return data_dir() / "shots"


def real_ad_root() -> Path:
    """The real industrial samples shipped beside the repository (may be absent).

    Defaults to ``../shared/datasets/real_ad`` relative to the project root;
    ``$VTFUSION_REAL_AD`` overrides it.
    """
    env = os.environ.get("VTFUSION_REAL_AD")
    if env:
        return Path(env)
    return PROJECT_ROOT.parent / "shared" / "datasets" / "real_ad"


def shared_datasets_dir() -> Path:
    """``../shared/datasets`` (layout facts for MVTec AD and VisA live there)."""
    return real_ad_root().parent


def default_dataset_root(dataset: str) -> Path:
    """Default root of a downloaded benchmark: ``$VTFUSION_<NAME>_ROOT`` or ``data/<name>``."""
    env = os.environ.get(f"VTFUSION_{dataset.upper()}_ROOT")
    if env:
        return Path(env)
    folder = {"mvtec": "mvtec_ad", "visa": "visa"}.get(dataset, dataset)
    return data_dir() / folder


def cache_dir() -> Path:
    """Cache for weights, token caches and run outputs: ``$VTFUSION_CACHE`` or ``data/cache``."""
    return Path(os.environ.get("VTFUSION_CACHE", data_dir() / "cache"))
