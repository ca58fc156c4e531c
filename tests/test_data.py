"""The MVTec-layout loader, VisA through its split CSV, image conversions and errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vtfusion.data import (
    MVTEC_AD_CATEGORIES,
    VISA_CATEGORIES,
    ImageReadError,
    MVTecDataset,
    VisADataset,
    category_info,
    load_dataset,
    load_image,
)
from vtfusion.data.images import read_mask


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)


def make_mvtec_folder(root: Path, category: str = "widget", size=(37, 53), n_train=3) -> Path:
    """A tiny MVTec-layout category with odd, non-square images and one defect type."""
    rng = np.random.default_rng(0)
    h, w = size
    for i in range(n_train):
        _save(root / category / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    _save(root / category / "test" / "good" / "000.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    _save(root / category / "test" / "dent" / "000.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[10:20, 5:30] = 255
    _save(root / category / "ground_truth" / "dent" / "000_mask.png", mask)
    return root


def test_category_tables_have_the_benchmark_sizes():
    assert len(MVTEC_AD_CATEGORIES) == 15 and len(set(MVTEC_AD_CATEGORIES)) == 15
    assert len(VISA_CATEGORIES) == 12 and len(set(VISA_CATEGORIES)) == 12
    textures = {c for c in MVTEC_AD_CATEGORIES if category_info("mvtec", c).texture}
    assert textures == {"carpet", "grid", "leather", "tile", "wood"}
    assert category_info("mvtec", "metal_nut").object_name == "metal nut"
    with pytest.raises(ValueError, match="valid categories: bottle"):
        category_info("mvtec", "bottel")


def test_mvtec_layout_sample_contract(tmp_path):
    root = make_mvtec_folder(tmp_path)
    test = MVTecDataset(root, "widget", "test", image_size=32)
    assert len(test) == 2 and test.labels == [1, 0]  # "dent" sorts before "good"
    bad, good = test[0], test[1]
    assert bad["image"].shape == (3, 32, 32) and bad["image"].dtype == torch.float32
    assert 0.0 <= float(bad["image"].min()) and float(bad["image"].max()) <= 1.0
    assert bad["mask"].shape == (1, 32, 32)
    assert set(torch.unique(bad["mask"]).tolist()) == {0.0, 1.0}
    assert good["mask"].sum() == 0 and good["label"] == 0 and good["defect_type"] == "good"
    assert bad["label"] == 1 and bad["defect_type"] == "dent" and bad["path"].endswith("dent/000.png")
    # Nearest-neighbour resize keeps the masked share roughly the same.
    assert abs(float(bad["mask"].mean()) - (10 * 25) / (37 * 53)) < 0.05


def test_no_resize_keeps_original_size(tmp_path):
    root = make_mvtec_folder(tmp_path)
    s = MVTecDataset(root, "widget", "test", image_size=None)[0]
    assert s["image"].shape == (3, 37, 53) and s["mask"].shape == (1, 37, 53)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA"])
def test_every_pixel_format_becomes_rgb(tmp_path, mode):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    if mode == "I;16":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    else:
        Image.fromarray(np.stack([gray] * 3, axis=2)).convert(mode).save(path)
    img = load_image(path, image_size=None)
    assert img.shape == (3, 20, 30)
    if mode in ("L", "I;16", "LA"):
        # Gray sources: three equal channels carrying the gray values.
        assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
        assert torch.allclose(img[0] * 255, torch.from_numpy(gray).float(), atol=1.0)


def test_mask_of_wrong_size_is_reported_with_both_files(tmp_path):
    root = make_mvtec_folder(tmp_path)
    _save(root / "widget" / "ground_truth" / "dent" / "000_mask.png", np.zeros((10, 10), dtype=np.uint8))
    ds = MVTecDataset(root, "widget", "test")
    with pytest.raises(ImageReadError, match=r"000_mask.png is 10x10.*dent/000.png is 53x37"):
        ds[0]


def test_unreadable_image_names_the_file(tmp_path):
    root = make_mvtec_folder(tmp_path)
    broken = root / "widget" / "test" / "good" / "000.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    ds = MVTecDataset(root, "widget", "test")
    with pytest.raises(ImageReadError, match=r"cannot read image file .*good/000.png"):
        ds[1]


def test_missing_root_suggests_the_download_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vtfusion data download mvtec --root"):
        load_dataset("mvtec", "bottle", root=tmp_path / "nowhere")


def test_unknown_category_lists_valid_ones(tmp_path):
    root = make_mvtec_folder(tmp_path)
    with pytest.raises(ValueError, match=r"Valid categories here: widget"):
        MVTecDataset(root, "gadget", "test")
    with pytest.raises(ValueError, match=r"valid categories: bottle, cable"):
        load_dataset("mvtec", "bottel", root=tmp_path)


def test_defective_image_without_mask_is_an_error(tmp_path):
    root = make_mvtec_folder(tmp_path)
    (root / "widget" / "ground_truth" / "dent" / "000_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"have no mask.*000_mask.png"):
        MVTecDataset(root, "widget", "test", require_masks=True)
    ds = MVTecDataset(root, "widget", "test")  # default: image labels only, pixel metrics n/a
    assert ds[0]["mask"].sum() == 0 and ds.pixel_metrics_unavailable


def test_unknown_split_and_dataset():
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("toy", "weave", "validation")
    with pytest.raises(ValueError, match="unknown dataset 'mvtech'"):
        load_dataset("mvtech", "bottle")


def make_visa_folder(root: Path) -> Path:
    rng = np.random.default_rng(2)
    rows = [("object", "split", "label", "image", "mask")]
    for i in range(3):
        rel = f"candle/Data/Images/Normal/{i:04d}.JPG"
        _save(root / rel, rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
        rows.append(("candle", "train" if i < 2 else "test", "normal", rel, ""))
    rel, mrel = "candle/Data/Images/Anomaly/0000.JPG", "candle/Data/Masks/Anomaly/0000.png"
    _save(root / rel, rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[5:15, 5:15] = 1  # VisA masks are small integers, not 255
    _save(root / mrel, mask)
    rows.append(("candle", "test", "anomaly", rel, mrel))
    (root / "split_csv").mkdir(parents=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


def test_visa_released_layout_through_split_csv(tmp_path):
    root = make_visa_folder(tmp_path)
    train = load_dataset("visa", "candle", "train", root=root)
    test = VisADataset(root, "candle", "test", image_size=24)
    assert len(train) == 2 and train.labels == [0, 0]
    assert train.train_pool() == ["Data/Images/Normal/0000.JPG", "Data/Images/Normal/0001.JPG"]
    assert sorted(test.labels) == [0, 1]
    bad = test[test.labels.index(1)]
    assert bad["defect_type"] == "anomaly" and bad["mask"].shape == (1, 24, 24) and bad["mask"].sum() > 0
    with pytest.raises(ValueError, match="valid categories: candle"):
        VisADataset(root, "candel")


def test_shared_visa_split_csv_has_the_official_counts():
    from vtfusion.paths import shared_datasets_dir

    path = shared_datasets_dir() / "visa_split" / "1cls.csv"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 10821
    assert {r["object"] for r in rows} == set(VISA_CATEGORIES)


@pytest.mark.real_data
@pytest.mark.parametrize("category,n_train,n_good,n_bad", [("tire", 16, 25, 87), ("magnetic_tile", 60, 120, 392)])
def test_real_ad_counts_and_masks(real_ad, category, n_train, n_good, n_bad):
    train = load_dataset("real_ad", category, "train")
    test = load_dataset("real_ad", category, "test")
    assert len(train) == n_train and set(train.labels) == {0}
    assert test.labels.count(0) == n_good and test.labels.count(1) == n_bad
    for i, rec in enumerate(test.records):
        if rec.label == 0:
            continue
        s = test[i]
        assert s["image"].shape == (3, 240, 240) and s["mask"].shape == (1, 240, 240)
        # Nearest-neighbour resizing (DESIGN §7) keeps every defect of at least a few output
        # pixels' area. Smaller ones can vanish (one magnetic-tile mask has 3 pixels), and a few
        # magnetic-tile source masks are empty after the dataset's own thresholding.
        src = read_mask(rec.mask)
        if src.sum() >= 4 * src.size / 240**2:
            assert s["mask"].sum() > 0, rec.mask
