"""Tiling an MVTec-layout category into patches (APPD-style data)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vtfusion.data import load_dataset
from vtfusion.data.tiling import patch_origins, tile_category


@pytest.mark.parametrize("length,patch,expected", [(240, 240, [0]), (500, 240, [0, 130, 260]),
                                                   (480, 240, [0, 240]), (100, 240, [])])
def test_patch_origins_cover_the_image(length: int, patch: int, expected: list[int]) -> None:
    origins = patch_origins(length, patch)
    assert origins == expected
    if origins:
        covered = np.zeros(length, bool)
        for o in origins:
            covered[o:o + patch] = True
        assert covered.all()


def _write_category(root, size=(300, 500)) -> None:
    h, w = size
    rng = np.random.default_rng(0)
    cat = root / "part"
    for i in range(3):
        (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(cat / "train" / "good" / f"{i:03d}.png")
    (cat / "test" / "good").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(cat / "test" / "good" / "000.png")
    (cat / "test" / "scratch").mkdir(parents=True)
    (cat / "ground_truth" / "scratch").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(cat / "test" / "scratch" / "000.png")
    mask = np.zeros((h, w), np.uint8)
    mask[10:20, 480:495] = 255  # only in the top-right patch (x origin 260, y origin 0)
    Image.fromarray(mask).save(cat / "ground_truth" / "scratch" / "000_mask.png")


def test_tile_category_writes_a_loadable_mvtec_folder(tmp_path) -> None:
    _write_category(tmp_path / "src")
    report = tile_category(tmp_path / "src", "part", tmp_path / "tiles", patch=240)
    # 300 x 500 -> 2 rows x 3 columns = 6 patches per image
    assert (report.train_patches, report.test_good_patches, report.test_defective_patches) == (18, 11, 1)
    test = load_dataset("folder", "part", "test", root=tmp_path / "tiles", image_size=None)
    assert len(test) == 12 and sum(test.labels) == 1
    defective = next(test[i] for i in range(len(test)) if test.labels[i] == 1)
    assert defective["path"].endswith("scratch_000_r0_c2.png") and defective["defect_type"] == "scratch"
    assert int(defective["mask"].sum()) == 10 * 15
    src = np.asarray(Image.open(tmp_path / "src/part/test/scratch/000.png"))
    tile = np.asarray(Image.open(defective["path"]))
    assert np.array_equal(tile, src[0:240, 260:500])
    shots = load_dataset("folder", "part", "train", root=tmp_path / "tiles").load_shots(2, 0)
    assert shots.shape == (2, 3, 240, 240)


def test_tile_category_is_reused_and_refuses_other_settings(tmp_path) -> None:
    _write_category(tmp_path / "src")
    first = tile_category(tmp_path / "src", "part", tmp_path / "tiles")
    stamp = (tmp_path / "tiles/part/tiling.json").stat().st_mtime_ns
    assert tile_category(tmp_path / "src", "part", tmp_path / "tiles") == first
    assert (tmp_path / "tiles/part/tiling.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other settings"):
        tile_category(tmp_path / "src", "part", tmp_path / "tiles", patch=120)
    again = tile_category(tmp_path / "src", "part", tmp_path / "tiles", patch=120, overwrite=True)
    assert again.train_patches == 3 * 3 * 5


def test_keep_filter_and_too_small_images(tmp_path) -> None:
    _write_category(tmp_path / "src")

    def left_column_only(tile: np.ndarray) -> bool:  # stands in for a foreground test
        return bool(tile[0, 0, 0] % 2 == 0)

    report = tile_category(tmp_path / "src", "part", tmp_path / "tiles", keep=left_column_only)
    assert report.skipped_background > 0
    assert report.train_patches + report.test_good_patches + report.test_defective_patches \
        + report.skipped_background == 30
    with pytest.raises(ValueError, match="smaller patch"):
        tile_category(tmp_path / "src", "part", tmp_path / "big", patch=1000)
    assert not (tmp_path / "big" / "part").exists() and not (tmp_path / "big" / ".part.tiling").exists()


def test_custom_folders_never_share_runs_or_results(tmp_path) -> None:
    from vtfusion.data.registry import storage_name

    a, b = storage_name("folder", tmp_path / "a"), storage_name("folder", tmp_path / "b")
    assert a != b and a.startswith("folder-") and storage_name("folder", tmp_path / "a" / ".." / "a") == a
    assert storage_name("toy") == "toy"
    with pytest.raises(ValueError, match="root"):
        storage_name("folder")


def test_max_images_per_type_takes_the_first_images_of_each_type(tmp_path) -> None:
    _write_category(tmp_path / "src")
    report = tile_category(tmp_path / "src", "part", tmp_path / "tiles", max_images_per_type=2)
    # train/good: 2 of 3 images; test: 1 good and 1 scratch image (each type has only one)
    assert (report.train_patches, report.test_good_patches, report.test_defective_patches) == (12, 11, 1)
    names = sorted(p.name for p in (tmp_path / "tiles/part/train/good").iterdir())
    assert {n.split("_")[0] for n in names} == {"000", "001"}
    with pytest.raises(ValueError, match="max_images_per_type"):
        tile_category(tmp_path / "src", "part", tmp_path / "other", max_images_per_type=0)
