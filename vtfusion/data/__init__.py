"""Data layer: datasets in MVTec layout and VisA, toy data, shot lists, downloads.

Datasets are registered by name (:mod:`vtfusion.data.registry`); importing this package
registers the built-in ones (:mod:`vtfusion.data.builtin`).
"""

from vtfusion.data.categories import (
    MVTEC_AD_CATEGORIES,
    REAL_AD_CATEGORIES,
    TOY_CATEGORIES,
    VISA_CATEGORIES,
)
from vtfusion.data.datasets import AnomalyDataset, MVTecDataset, VisADataset, dataset_root, load_dataset
from vtfusion.data.images import ImageReadError, load_image, load_image_and_mask
from vtfusion.data.registry import (
    CategoryInfo,
    DatasetSpec,
    categories,
    category_info,
    get_dataset,
    list_datasets,
    register_dataset,
)
from vtfusion.data.shots import ShotList, generate_shot_lists, load_shots, make_shot_list
from vtfusion.data import builtin  # noqa: F401  (registers the built-in datasets)

__all__ = [
    "AnomalyDataset", "CategoryInfo", "DatasetSpec", "ImageReadError", "MVTEC_AD_CATEGORIES", "MVTecDataset",
    "REAL_AD_CATEGORIES", "ShotList", "TOY_CATEGORIES", "VISA_CATEGORIES", "VisADataset",
    "categories", "category_info", "dataset_root", "generate_shot_lists", "get_dataset", "list_datasets",
    "load_dataset", "load_image", "load_image_and_mask", "load_shots", "make_shot_list", "register_dataset",
]
