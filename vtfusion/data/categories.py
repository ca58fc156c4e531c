"""Category tables: names, texture/object kind and the object word used in prompts.

One table for every dataset the package knows, so DAS (placement), the text
encoder (object names) and the data layer read the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CategoryInfo:
    """Facts about one category.

    Attributes:
        name: folder name of the category.
        texture: True for texture categories (a defect may appear anywhere),
            False for objects (synthetic anomalies go on the foreground).
        object_name: the noun inserted into the text prompts ("a photo of a normal [o]").
    """

    name: str
    texture: bool
    object_name: str


def _table(rows: list[tuple[str, bool, str]]) -> dict[str, CategoryInfo]:
    return {name: CategoryInfo(name, texture, obj) for name, texture, obj in rows}


MVTEC_AD = _table([
    ("bottle", False, "bottle"),
    ("cable", False, "cable"),
    ("capsule", False, "capsule"),
    ("carpet", True, "carpet"),
    ("grid", True, "grid"),
    ("hazelnut", False, "hazelnut"),
    ("leather", True, "leather"),
    ("metal_nut", False, "metal nut"),
    ("pill", False, "pill"),
    ("screw", False, "screw"),
    ("tile", True, "tile"),
    ("toothbrush", False, "toothbrush"),
    ("transistor", False, "transistor"),
    ("wood", True, "wood"),
    ("zipper", False, "zipper"),
])

VISA = _table([
    ("candle", False, "candle"),
    ("capsules", False, "capsules"),
    ("cashew", False, "cashew"),
    ("chewinggum", False, "chewing gum"),
    ("fryum", False, "fryum"),
    ("macaroni1", False, "macaroni"),
    ("macaroni2", False, "macaroni"),
    ("pcb1", False, "printed circuit board"),
    ("pcb2", False, "printed circuit board"),
    ("pcb3", False, "printed circuit board"),
    ("pcb4", False, "printed circuit board"),
    ("pipe_fryum", False, "pipe fryum"),
])

# The procedurally generated toy industrial dataset (vtfusion.data.toy).
TOY = _table([
    ("weave", True, "woven fabric"),
    ("granite", True, "granite surface"),
    ("washer", False, "metal washer"),
    ("chip", False, "integrated circuit chip"),
])

# Real samples in ../shared/datasets/real_ad (MVTec layout).
REAL_AD = _table([
    ("tire", False, "tire"),
    ("magnetic_tile", True, "magnetic tile"),
])

DATASETS: dict[str, dict[str, CategoryInfo]] = {
    "mvtec": MVTEC_AD,
    "visa": VISA,
    "toy": TOY,
    "real_ad": REAL_AD,
}

MVTEC_AD_CATEGORIES: tuple[str, ...] = tuple(MVTEC_AD)
VISA_CATEGORIES: tuple[str, ...] = tuple(VISA)
TOY_CATEGORIES: tuple[str, ...] = tuple(TOY)
REAL_AD_CATEGORIES: tuple[str, ...] = tuple(REAL_AD)


def categories(dataset: str) -> tuple[str, ...]:
    """Category names of a known dataset, in the canonical (paper table) order."""
    return tuple(_dataset_table(dataset))


def category_info(dataset: str, category: str) -> CategoryInfo:
    """Facts about ``category`` of ``dataset``.

    For a custom folder (``dataset="folder"`` or any unknown name) the category is
    treated as an object whose prompt word is its folder name with ``_`` as spaces.
    Raises ``ValueError`` listing the valid names when a known dataset lacks it.
    """
    if dataset not in DATASETS:
        return CategoryInfo(category, False, category.replace("_", " "))
    table = DATASETS[dataset]
    if category not in table:
        raise ValueError(
            f"unknown category {category!r} for dataset {dataset!r}; "
            f"valid categories: {', '.join(table)}"
        )
    return table[category]


def _dataset_table(dataset: str) -> dict[str, CategoryInfo]:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[dataset]
