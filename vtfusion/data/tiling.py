"""Cut an MVTec-layout category of large images into fixed-size patches (APPD-style data).

The paper's own industrial dataset (APPD, Sec. IV-F) photographs plastic parts at high
resolution and cuts them into 240-pixel patches after background removal, so that small
defects keep their pixels instead of vanishing in a resize to 240. :func:`tile_category`
does the same to any folder in MVTec layout and writes a new MVTec-layout folder, so the
rest of the package (loader, shots, training, evaluation) runs on it unchanged.

A test patch is defective when its mask has at least ``min_defect_pixels`` anomalous
pixels; it then keeps its image's defect type and gets its own mask file. Patches of
``train/good`` images stay normal. Patch files are named ``<stem>_r<row>_c<col>.png``
(test patches: ``<source type>_<stem>_r<row>_c<col>.png``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from vtfusion.data.datasets import MVTecDataset
from vtfusion.data.images import read_mask, read_rgb
from vtfusion.io import atomic_write_json


@dataclass(frozen=True)
class TilingReport:
    """What :func:`tile_category` wrote: patch counts per split and label."""

    out_dir: Path
    train_patches: int
    test_good_patches: int
    test_defective_patches: int
    skipped_background: int

    def __str__(self) -> str:
        return (f"{self.out_dir}: train/good {self.train_patches}, test good {self.test_good_patches}, "
                f"test defective {self.test_defective_patches} patches "
                f"({self.skipped_background} background patches skipped)")


def patch_origins(length: int, patch: int) -> list[int]:
    """Start offsets of patches that cover ``[0, length)`` with as little overlap as possible.

    ``ceil(length / patch)`` patches, evenly spread, the first at 0 and the last ending at
    ``length``; an image smaller than the patch gives no patch.
    """
    if length < patch:
        return []
    n = -(-length // patch)
    if n == 1:
        return [0]
    return [round(i * (length - patch) / (n - 1)) for i in range(n)]


def tile_category(root: str | Path, category: str, out_root: str | Path, patch: int = 240,
                  min_defect_pixels: int = 1,
                  keep: Callable[[np.ndarray], bool] | None = None, overwrite: bool = False,
                  max_images_per_type: int | None = None) -> TilingReport:
    """Write ``out_root/category`` in MVTec layout with the patches of ``root/category``.

    Args:
        root, category: the source folder in MVTec layout (``train/good``, ``test/<type>``,
            ``ground_truth/<type>/<stem>_mask.png``).
        out_root: where the patched category is written (a new dataset root).
        patch: patch side in pixels (the paper's APPD uses 240).
        min_defect_pixels: a test patch with fewer anomalous mask pixels counts as good.
        keep: optional filter on the ``patch x patch x 3`` uint8 patch (e.g. enough
            foreground after background removal); rejected patches are not written.
        overwrite: replace an existing output category (else it is reused when complete).
        max_images_per_type: tile only the first ``n`` source images (sorted by name) of
            ``train/good`` and of each test type: a smaller, still deterministic folder for
            a quick look; ``None`` tiles every image.

    Returns:
        a :class:`TilingReport`. A ``tiling.json`` in the output records the arguments, so
        a second call with the same arguments returns at once.
    """
    src = Path(root)
    out_dir = Path(out_root) / category
    settings = {"source": str(src.resolve() / category), "patch": patch, "min_defect_pixels": min_defect_pixels,
                "keep": getattr(keep, "__name__", None) if keep else None}
    if max_images_per_type is not None:
        if max_images_per_type < 1:
            raise ValueError(f"max_images_per_type must be >= 1 or None, got {max_images_per_type}")
        settings["max_images_per_type"] = max_images_per_type
    marker = out_dir / "tiling.json"
    if marker.exists() and not overwrite:
        done = json.loads(marker.read_text())
        if done.get("settings") == settings:
            return TilingReport(out_dir, **done["counts"])
        raise FileExistsError(f"{out_dir} was tiled with other settings ({done.get('settings')}); "
                              "pass overwrite=True or choose another out_root")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    # Written into a temporary folder and renamed at the end: never a half-tiled category.
    tmp_dir = out_dir.with_name(f".{category}.tiling")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    counts = {"train_patches": 0, "test_good_patches": 0, "test_defective_patches": 0, "skipped_background": 0}
    for split in ("train", "test"):
        ds = MVTecDataset(src, category, split, image_size=None)
        taken: dict[str, int] = {}
        for rec in sorted(ds.records, key=lambda r: (r.defect_type, r.image.name)):
            taken[rec.defect_type] = taken.get(rec.defect_type, 0) + 1
            if max_images_per_type is not None and taken[rec.defect_type] > max_images_per_type:
                continue
            rgb = read_rgb(rec.image)
            mask = read_mask(rec.mask) if rec.mask is not None else np.zeros(rgb.shape[:2], dtype=bool)
            if mask.shape != rgb.shape[:2]:
                raise ValueError(f"mask {rec.mask} is {mask.shape[1]}x{mask.shape[0]} but its image "
                                 f"{rec.image} is {rgb.shape[1]}x{rgb.shape[0]}; they must match")
            for r, y in enumerate(patch_origins(rgb.shape[0], patch)):
                for c, x in enumerate(patch_origins(rgb.shape[1], patch)):
                    tile = rgb[y:y + patch, x:x + patch]
                    if keep is not None and not keep(tile):
                        counts["skipped_background"] += 1
                        continue
                    tile_mask = mask[y:y + patch, x:x + patch]
                    defective = split == "test" and int(tile_mask.sum()) >= min_defect_pixels
                    kind = rec.defect_type if defective else "good"
                    # The source type in the name: good patches of defective images must not
                    # collide with those of good images of the same stem.
                    stem = rec.image.stem if split == "train" else f"{rec.defect_type}_{rec.image.stem}"
                    name = f"{stem}_r{r}_c{c}.png"
                    target = tmp_dir / split / kind / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(tile).save(target)
                    if defective:
                        mask_path = tmp_dir / "ground_truth" / kind / f"{stem}_r{r}_c{c}_mask.png"
                        mask_path.parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray((tile_mask > 0).astype(np.uint8) * 255).save(mask_path)
                    key = ("train_patches" if split == "train" else
                           "test_defective_patches" if defective else "test_good_patches")
                    counts[key] += 1
    if counts["train_patches"] == 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise ValueError(f"no train/good patch of {patch} px in {src / category}: images smaller than the "
                         "patch, or every patch rejected by `keep`; use a smaller patch")
    atomic_write_json(tmp_dir / "tiling.json", {"settings": settings, "counts": counts})
    tmp_dir.rename(out_dir)
    return TilingReport(out_dir, **counts)
