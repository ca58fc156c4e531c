"""The built-in datasets: MVTec AD, VisA, the toy data, the real samples, and any MVTec-layout folder.

Each is one :func:`~vtfusion.data.registry.register_dataset` call; a new dataset is a file
like this one (its category table, where its data lives, how a split opens), imported by
:mod:`vtfusion.data` or by the code that uses it.
"""

from __future__ import annotations

from pathlib import Path

from vtfusion import paths
from vtfusion.data.categories import MVTEC_AD, REAL_AD, TOY, VISA
from vtfusion.data.datasets import VisADataset, folder_pools
from vtfusion.data.registry import DatasetSpec, register_dataset
from vtfusion.data.shots import mvtec_pools, toy_pools, visa_pools


def _toy_data() -> Path:
    """The generated toy dataset's root, generated on first use."""
    from vtfusion.data.toy import ensure_toy_dataset  # local: the generator (scipy, 1,900 lines) only when needed

    return ensure_toy_dataset()


def _toy_pools(root: Path | None) -> dict[str, list[str]]:
    """The default toy data's pools from the generator's sizes (nothing rendered); another root's
    from its folder, which may hold another number of training images."""
    return toy_pools() if root is None else folder_pools(root, "toy")


def _toy_split_variant(root: Path, split: str | None) -> str | None:
    from vtfusion.data.toy import split_variant  # local, as above

    return split_variant(root, split)


def _real_ad_pools(root: Path | None) -> dict[str, list[str]]:
    real = root or paths.real_ad_root()
    if not real.is_dir():
        raise FileNotFoundError(f"{real} not found: the real samples ship as ../shared/datasets/real_ad")
    return folder_pools(real, "real_ad")


def _folder_pools(root: Path | None) -> dict[str, list[str]]:
    if root is None:
        raise ValueError("dataset 'folder' needs --root (an MVTec-layout folder)")
    return folder_pools(root, "folder")


register_dataset(DatasetSpec(
    name="toy", description="the generated toy industrial data (4 categories, with a val split; no download)",
    categories=TOY, default_root=paths.toy_root, prepare_root=_toy_data,
    root_hint="generate it with `vtfusion data toy --root {root}`",
    training_pools=_toy_pools, committed_shots=True, split_variant=_toy_split_variant))

register_dataset(DatasetSpec(
    name="mvtec", description="MVTec AD (15 categories; `vtfusion data download mvtec`)",
    categories=MVTEC_AD, default_root=lambda: paths.default_dataset_root("mvtec"),
    root_hint="download it with `vtfusion data download mvtec --root {root}`",
    training_pools=lambda root: mvtec_pools(), committed_shots=True, paper_tables=True))

register_dataset(DatasetSpec(
    name="visa", description="VisA, official one-class split (12 categories; `vtfusion data download visa`)",
    categories=VISA, default_root=lambda: paths.default_dataset_root("visa"), opener=VisADataset,
    root_hint="download it with `vtfusion data download visa --root {root}`",
    training_pools=lambda root: visa_pools(), committed_shots=True, paper_tables=True))

register_dataset(DatasetSpec(
    name="real_ad", description="the real industrial samples in ../shared/datasets/real_ad (MVTec layout)",
    categories=REAL_AD, default_root=paths.real_ad_root,
    root_hint="it ships beside the repository as ../shared/datasets/real_ad (set $VTFUSION_REAL_AD)",
    training_pools=_real_ad_pools, committed_shots=True))

register_dataset(DatasetSpec(
    name="folder", description="any folder in MVTec layout (--root DIR; categories are its sub-folders)",
    training_pools=_folder_pools, keyed_by_root=True))
