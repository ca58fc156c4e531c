"""Category tables of the built-in datasets: names, texture/object kind and the object word used in prompts.

One table per dataset, registered with it (:mod:`vtfusion.data.builtin`), so DAS
(placement), the text encoder (object names) and the data layer read the same facts
through :func:`category_info` (defined with the dataset registry, :mod:`vtfusion.data.registry`).
"""

from __future__ import annotations

from vtfusion.data.registry import CategoryInfo, categories, category_info


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

MVTEC_AD_CATEGORIES: tuple[str, ...] = tuple(MVTEC_AD)
VISA_CATEGORIES: tuple[str, ...] = tuple(VISA)
TOY_CATEGORIES: tuple[str, ...] = tuple(TOY)
REAL_AD_CATEGORIES: tuple[str, ...] = tuple(REAL_AD)


__all__ = ["CategoryInfo", "MVTEC_AD", "MVTEC_AD_CATEGORIES", "REAL_AD", "REAL_AD_CATEGORIES", "TOY",
           "TOY_CATEGORIES", "VISA", "VISA_CATEGORIES", "categories", "category_info"]
