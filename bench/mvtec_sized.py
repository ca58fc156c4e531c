"""Generated stand-in for MVTec AD at its real sizes, for the speed benchmarks (not a dataset).

The benchmarks must measure PNG decoding and resizing honestly without the real archive,
so this module writes, once, PNG files with MVTec AD's per-category image side, colour
mode (grid, screw and zipper are 8-bit grayscale) and test-split counts:

* ``<root>/pool/<category>/test/{good,defect}/NNN.png`` and
  ``ground_truth/defect/NNN_mask.png`` (one random ellipse per defective image), plus the
  ``train/good`` images that the committed 2-shot lists of ``vtfusion/resources/shots/mvtec`` name;
* ``<root>/view_<n>/<category>/...``: symbolic links to the first images of the pool, so
  a run with ``--max-test n`` sees exactly ``n`` test images per category (good and
  defective in MVTec's proportion, at least one of each), ``view_full`` all of them.

Image content is smooth colour fields, stripes and mild Gaussian noise, saved with zlib
level 3: about 1.6 MB per 1024 x 1024 RGB file, decoded by Pillow in ~45 ms. Pixels mean
nothing; only sizes, counts and file formats are MVTec's. A view is an MVTec-layout folder,
so ``load_dataset("mvtec", category, root=view)`` and the committed shot lists work on it.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vtfusion import paths
from vtfusion.io import atomic_write, atomic_write_json

GENERATOR = "mvtec-sized-1"

# Test split per category: (good, defective) images (Bergmann et al., CVPR 2019; sum 1,725).
MVTEC_TEST_SPLIT = {
    "bottle": (20, 63), "cable": (58, 92), "capsule": (23, 109), "carpet": (28, 89),
    "grid": (21, 57), "hazelnut": (40, 70), "leather": (32, 92), "metal_nut": (22, 93),
    "pill": (26, 141), "screw": (41, 119), "tile": (33, 84), "toothbrush": (12, 30),
    "transistor": (60, 40), "wood": (19, 60), "zipper": (32, 119),
}
# Image side in pixels (all MVTec AD images are square) and the grayscale categories.
MVTEC_SIDES = {
    "bottle": 900, "cable": 1024, "capsule": 1000, "carpet": 1024, "grid": 1024, "hazelnut": 1024,
    "leather": 1024, "metal_nut": 700, "pill": 800, "screw": 1024, "tile": 840, "toothbrush": 1024,
    "transistor": 1024, "wood": 1024, "zipper": 1024,
}
GRAYSCALE = frozenset({"grid", "screw", "zipper"})
CATEGORIES = tuple(MVTEC_TEST_SPLIT)


def default_root() -> Path:
    return paths.PROJECT_ROOT / "runs" / "bench" / "mvtec_sized"


def test_split(category: str) -> tuple[int, int]:
    """(good, defective) test images: ``../shared/datasets/mvtec_ad_layout.json`` when it has
    per-category test counts (key ``test``), else :data:`MVTEC_TEST_SPLIT`."""
    layout = paths.shared_datasets_dir() / "mvtec_ad_layout.json"
    if layout.is_file():
        counts = json.loads(layout.read_text()).get("test", {}).get(category)
        if counts:
            return int(counts["good"]), int(counts["defective"])
    return MVTEC_TEST_SPLIT[category]


def view_counts(category: str, max_test: int | None) -> tuple[int, int]:
    """(good, defective) images a view with at most ``max_test`` test images holds."""
    good, bad = test_split(category)
    if max_test is None or max_test >= good + bad:
        return good, bad
    if max_test < 2:
        raise ValueError("--max-test must be >= 2 (one good and one defective image)")
    n_good = min(good, max(1, round(max_test * good / (good + bad))))
    return n_good, min(bad, max(1, max_test - n_good))


def _rng(category: str, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([CATEGORIES.index(category), ("train", "good", "defect").index(kind), index])


def synth_image(category: str, kind: str, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Deterministic image (``H x W x 3`` or ``H x W`` uint8) and, for ``defect``, its bool mask."""
    side, rng = MVTEC_SIDES[category], _rng(category, kind, index)
    low = Image.fromarray(rng.integers(40, 220, size=(6, 6, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
    img = np.asarray(low, dtype=np.float32).copy()
    t = np.arange(side, dtype=np.float32)
    img += (8 * np.sin(t * rng.uniform(0.02, 0.1)))[None, :, None] + (8 * np.sin(t * rng.uniform(0.02, 0.1)))[:, None, None]
    img += rng.standard_normal((side, side, 3), dtype=np.float32) * 2.0
    mask = None
    if kind == "defect":
        m = Image.new("L", (side, side), 0)
        cx, cy = rng.uniform(0.2, 0.8, 2) * side
        rx, ry = rng.uniform(0.02, 0.12, 2) * side
        ImageDraw.Draw(m).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        mask = np.asarray(m) > 0
        img[mask] = img[mask] * 0.5 + 20
    out = np.clip(img, 0, 255).astype(np.uint8)
    return (out[..., 0] if category in GRAYSCALE else out), mask


def _save_png(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG", compress_level=3))


def _write_one(job: tuple[str, str, int, str]) -> int:
    category, kind, index, pool = job
    base = Path(pool) / category
    image, mask = synth_image(category, kind, index)
    if kind == "train":
        _save_png(base / "train" / "good" / f"{index:03d}.png", image)
    else:
        _save_png(base / "test" / kind / f"{index:03d}.png", image)
        if mask is not None:
            _save_png(base / "ground_truth" / kind / f"{index:03d}_mask.png", mask.astype(np.uint8) * 255)
    return 1


def _shot_indices(category: str, ks: tuple[int, ...] = (2,), seeds: tuple[int, ...] = (0,)) -> set[int]:
    from vtfusion.data.shots import load_shots

    out: set[int] = set()
    for k in ks:
        for seed in seeds:
            out |= {int(Path(f).stem) for f in load_shots("mvtec", category, k, seed).files}
    return out


def ensure_view(categories: tuple[str, ...] = CATEGORIES, max_test: int | None = None,
                root: Path | None = None, workers: int | None = None, ks: tuple[int, ...] = (2,),
                seeds: tuple[int, ...] = (0,), log=print) -> Path:
    """Write the missing pool files (in ``workers`` processes) and return the view folder."""
    root = Path(root or default_root())
    pool = root / "pool"
    view = root / ("view_full" if max_test is None else f"view_{max_test}")
    jobs = []
    for cat in categories:
        if cat not in MVTEC_TEST_SPLIT:
            raise ValueError(f"unknown MVTec AD category {cat!r}; choose from {', '.join(CATEGORIES)}")
        stamp = pool / cat / ".generator.json"
        if stamp.is_file() and json.loads(stamp.read_text()).get("generator") != GENERATOR:
            import shutil

            shutil.rmtree(pool / cat)
        n_good, n_bad = view_counts(cat, max_test)
        wanted = ([("train", i) for i in sorted(_shot_indices(cat, ks, seeds))]
                  + [("good", i) for i in range(n_good)] + [("defect", i) for i in range(n_bad)])
        for kind, i in wanted:
            sub = "train/good" if kind == "train" else f"test/{kind}"
            if not (pool / cat / sub / f"{i:03d}.png").is_file() or (
                    kind == "defect" and not (pool / cat / "ground_truth" / "defect" / f"{i:03d}_mask.png").is_file()):
                jobs.append((cat, kind, i, str(pool)))
    if jobs:
        n = workers if workers is not None else min(4, os.cpu_count() or 1)
        log(f"generating {len(jobs)} MVTec-sized PNG files under {pool} ({n} processes, once) ...")
        if n > 1:
            with ProcessPoolExecutor(n) as ex:
                list(ex.map(_write_one, jobs, chunksize=4))
        else:
            for job in jobs:
                _write_one(job)
    for cat in categories:
        atomic_write_json(pool / cat / ".generator.json", {"generator": GENERATOR, "side": MVTEC_SIDES[cat]})
        n_good, n_bad = view_counts(cat, max_test)
        links = ([f"train/good/{i:03d}.png" for i in sorted(_shot_indices(cat, ks, seeds))]
                 + [f"test/good/{i:03d}.png" for i in range(n_good)]
                 + [f"test/defect/{i:03d}.png" for i in range(n_bad)]
                 + [f"ground_truth/defect/{i:03d}_mask.png" for i in range(n_bad)])
        for rel in links:
            link = view / cat / rel
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((pool / cat / rel).resolve())
    return view


def png_stats(view: Path, categories: tuple[str, ...]) -> dict:
    """Mean file size (MB) and count of the test PNGs of a view."""
    sizes = [p.stat().st_size for c in categories for p in (view / c / "test").rglob("*.png")]
    return {"files": len(sizes), "mean_mb": (sum(sizes) / len(sizes) / 1e6) if sizes else 0.0}
