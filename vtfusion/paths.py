"""Where things live on disk: the project root, package resources, user data, shared real data.

Two kinds of data:

* **package resources** (:func:`resources_dir`, ``vtfusion/resources/``): the paper's tables
  and the committed shot lists. They ship inside the wheel and are read through
  :mod:`importlib.resources`, so an installed ``vtfusion`` finds them wherever it runs.
* **user data** (:func:`data_dir`): generated and downloaded datasets, caches, the shot
  lists of a user's own folders. ``$VTFUSION_DATA_DIR`` moves it; every other path can be
  overridden by its own environment variable so that notebooks, tests and the CLI agree
  without passing paths around.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent


def resources_dir() -> Path:
    """The package's read-only data, ``vtfusion/resources`` (inside the installed package)."""
    return Path(str(resources.files("vtfusion") / "resources"))


def paper_tables_dir() -> Path:
    """The paper's Tables I-IV as data: ``vtfusion/resources/paper`` (package data)."""
    return resources_dir() / "paper"


def committed_shots_dir() -> Path:
    """Committed shot lists of the named datasets (package data):
    ``vtfusion/resources/shots/<dataset>/<category>/k<k>_seed<s>.json``."""
    return resources_dir() / "shots"


def work_dir() -> Path:
    """Where ``data/``, ``runs/`` and ``results/`` go by default: ``$VTFUSION_WORK_DIR``;
    else the checkout's root when ``vtfusion`` runs from a source checkout; else the current
    directory (an installed wheel must never write into ``site-packages``)."""
    env = os.environ.get("VTFUSION_WORK_DIR")
    if env:
        return Path(env)
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT
    return Path.cwd()


def runs_dir() -> Path:
    """Default folder of trained models: ``<work dir>/runs``."""
    return work_dir() / "runs"


def results_dir() -> Path:
    """Default folder of result files and table summaries: ``<work dir>/results``."""
    return work_dir() / "results"


def data_dir() -> Path:
    """Root of the user data folder (``<work dir>/data``), or ``$VTFUSION_DATA_DIR``."""
    return Path(os.environ.get("VTFUSION_DATA_DIR", work_dir() / "data"))


def toy_root() -> Path:
    """Where the generated toy dataset lives (``data/toy``), or ``$VTFUSION_TOY_ROOT``."""
    return Path(os.environ.get("VTFUSION_TOY_ROOT", data_dir() / "toy"))


def shots_dir() -> Path:
    """Shot lists of a user's own folders: ``data/shots/folder-<root hash>/<category>/...``
    (the named datasets' lists are package data, :func:`committed_shots_dir`)."""
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
