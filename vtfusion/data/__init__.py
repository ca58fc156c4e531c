"""Data layer: datasets in MVTec layout and VisA, toy data, shot lists, downloads."""

from vtfusion.data.categories import (
    MVTEC_AD_CATEGORIES,
    REAL_AD_CATEGORIES,
    TOY_CATEGORIES,
    VISA_CATEGORIES,
    CategoryInfo,
    categories,
    category_info,
)
from vtfusion.data.datasets import AnomalyDataset, MVTecDataset, VisADataset, dataset_root, load_dataset
from vtfusion.data.images import ImageReadError, load_image, load_image_and_mask
from vtfusion.data.shots import ShotList, generate_shot_lists, load_shots, make_shot_list

__all__ = [
    "AnomalyDataset", "CategoryInfo", "ImageReadError", "MVTEC_AD_CATEGORIES", "MVTecDataset",
    "REAL_AD_CATEGORIES", "ShotList", "TOY_CATEGORIES", "VISA_CATEGORIES", "VisADataset",
    "categories", "category_info", "dataset_root", "generate_shot_lists", "load_dataset",
    "load_image", "load_image_and_mask", "load_shots", "make_shot_list",
]
