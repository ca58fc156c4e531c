"""The procedurally generated toy dataset: layout, exact masks, determinism, caching, speed."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtfusion.data.categories import TOY_CATEGORIES, category_info
from vtfusion.data.datasets import MVTecDataset
from vtfusion.data.toy import (
    MANIFEST_NAME,
    ToyConfig,
    ensure_toy_dataset,
    generate_toy_dataset,
    main,
    render_defect,
    render_normal,
    render_sample,
    toy_defect_types,
)

SMALL = ToyConfig(n_train=2, n_test_good=2, n_test_per_defect=1, n_val_good=1, n_val_per_defect=1)
ALL_DEFECTS = [(c, d) for c in TOY_CATEGORIES for d in toy_defect_types(c)]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return generate_toy_dataset(tmp_path_factory.mktemp("toy_a") / "toy", SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


# --------------------------------------------------------------------------- API


def test_categories_and_defect_types():
    assert set(TOY_CATEGORIES) == {"weave", "granite", "washer", "chip"}
    assert {c for c in TOY_CATEGORIES if category_info("toy", c).texture} == {"weave", "granite"}
    for cat in TOY_CATEGORIES:
        types = toy_defect_types(cat)
        assert 3 <= len(types) <= 4 and list(types) == sorted(types) and "good" not in types
    assert {"missing_pin", "bent_pin"} <= set(toy_defect_types("chip"))
    assert "missing_part" in toy_defect_types("washer")


@pytest.mark.parametrize("call", [
    lambda: toy_defect_types("wood"),
    lambda: render_normal("wood", np.random.default_rng(0), 256),
    lambda: ToyConfig(categories=("weave", "wood")),
])
def test_unknown_category_lists_the_valid_ones(call):
    with pytest.raises(ValueError, match="valid categories: weave, granite, washer, chip"):
        call()


def test_bad_input_is_rejected_with_a_clear_message():
    img = render_normal("washer", np.random.default_rng(0), 128)
    with pytest.raises(ValueError, match="valid defect types: dent, missing_part"):
        render_defect("washer", "crack", img, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8 RGB"):
        render_defect("washer", "dent", img.astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="no washer found"):
        render_defect("washer", "dent", np.zeros((128, 128, 3), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="image_size"):
        ToyConfig(image_size=16)
    with pytest.raises(ValueError, match="seed"):
        ToyConfig(seed=-1)


@pytest.mark.parametrize("category", TOY_CATEGORIES)
def test_normal_images_vary_a_little(category):
    a = render_normal(category, np.random.default_rng(1), 256)
    b = render_normal(category, np.random.default_rng(2), 256)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_normal(category, np.random.default_rng(1), 256))
    diff = np.abs(a.astype(int) - b.astype(int))
    assert (diff > 0).mean() > 0.2  # pose / phase / lighting differ ...
    assert abs(a.mean() - b.mean()) < 25  # ... but it is the same product under the same setup


@pytest.mark.parametrize(("category", "defect"), ALL_DEFECTS)
def test_render_defect_changes_exactly_the_masked_pixels(category, defect):
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        clean = render_normal(category, rng, 256)
        before = clean.copy()
        out, mask = render_defect(category, defect, clean, rng)
        assert np.array_equal(clean, before), "the input image must not be modified"
        assert out.shape == clean.shape and out.dtype == np.uint8
        assert mask.shape == clean.shape[:2] and mask.dtype == bool
        assert mask.any(), "a defective image needs a non-empty mask"
        assert mask.mean() < 0.1, "defects are local"
        changed = np.any(out != clean, axis=-1)
        assert np.array_equal(out[~mask], clean[~mask]), "pixels outside the mask must be untouched"
        assert np.array_equal(changed, mask), "the mask is exactly the set of changed pixels"


# --------------------------------------------------------------------------- files


def test_validation_split_is_disjoint_from_test(small_root):
    """val/ holds its own images and masks, drawn from other seeds than test/ (never the same pixels)."""
    for cat in TOY_CATEGORIES:
        c = small_root / cat
        assert sorted(p.name for p in (c / "val").iterdir()) == sorted(["good", *toy_defect_types(cat)])
        assert sorted(p.name for p in (c / "val_ground_truth").iterdir()) == sorted(toy_defect_types(cat))
        test_images = {p.read_bytes() for p in c.glob("test/*/*.png")} | {p.read_bytes() for p in c.glob("train/*/*.png")}
        val_images = [p.read_bytes() for p in c.glob("val/*/*.png")]
        assert val_images and not any(v in test_images for v in val_images)
    val = MVTecDataset(small_root, "chip", "val", image_size=240, dataset_name="toy")
    assert len(val) == 1 + len(toy_defect_types("chip")) and sum(val.labels) == len(toy_defect_types("chip"))
    defective = [val[i] for i in range(len(val)) if val[i]["label"] == 1]
    assert all(s["mask"].sum() > 0 and "/val/" in s["path"] for s in defective)


def test_layout_is_mvtec(small_root):
    manifest = json.loads((small_root / MANIFEST_NAME).read_text())
    assert manifest["config"]["seed"] == 0 and manifest["generator_version"]
    for cat in TOY_CATEGORIES:
        c = small_root / cat
        assert sorted(p.name for p in (c / "train" / "good").iterdir()) == ["000.png", "001.png"]
        assert sorted(p.name for p in (c / "test").iterdir()) == sorted(["good", *toy_defect_types(cat)])
        assert sorted(p.name for p in (c / "ground_truth").iterdir()) == sorted(toy_defect_types(cat))
        assert len(list((c / "test" / "good").glob("*.png"))) == 2
        for img_path in c.glob("t*/*/*.png"):
            img = Image.open(img_path)
            assert img.mode == "RGB" and img.size == (256, 256)
        for defect in toy_defect_types(cat):
            images = sorted((c / "test" / defect).glob("*.png"))
            masks = sorted((c / "ground_truth" / defect).glob("*.png"))
            assert [p.stem + "_mask" for p in images] == [m.stem for m in masks]
            for img_path, mask_path in zip(images, masks):
                mask_img = Image.open(mask_path)
                assert mask_img.mode == "L" and mask_img.size == Image.open(img_path).size
                mask = np.asarray(mask_img)
                assert set(np.unique(mask)) == {0, 255}


def test_files_hold_what_the_renderer_draws(small_root):
    """The saved mask marks exactly where the saved image differs from its own clean render."""
    image, mask = render_sample("chip", "test/missing_pin", 0, SMALL)
    assert np.array_equal(_read(small_root / "chip" / "test" / "missing_pin" / "000.png"), image)
    assert np.array_equal(_read(small_root / "chip" / "ground_truth" / "missing_pin" / "000_mask.png") > 0, mask)
    normal, none = render_sample("weave", "train", 1, SMALL)
    assert none is None and np.array_equal(_read(small_root / "weave" / "train" / "good" / "001.png"), normal)


def test_loader_reads_it(small_root):
    from vtfusion.data import MVTecDataset

    ds = MVTecDataset(small_root, "washer", "test", image_size=240, dataset_name="toy")
    assert len(ds) == 2 + len(toy_defect_types("washer"))
    bad = next(ds[i] for i in range(len(ds)) if ds[i]["label"] == 1)
    assert bad["image"].shape == (3, 240, 240) and bad["mask"].sum() > 0


def test_same_seed_same_bytes_other_seed_other_images(small_root, tmp_path):
    again = generate_toy_dataset(tmp_path / "again", SMALL)
    assert _files(again) == _files(small_root)
    other = _files(generate_toy_dataset(tmp_path / "other", ToyConfig(seed=1, n_train=2, n_test_good=2,
                                                                        n_test_per_defect=1)))
    base = _files(small_root)
    pngs = [k for k in base if k.endswith(".png") and "ground_truth" not in k]
    assert all(other[k] != base[k] for k in pngs)


def test_output_does_not_depend_on_generation_order(small_root, tmp_path):
    only_chip = generate_toy_dataset(tmp_path / "chip_only", ToyConfig(n_train=2, n_test_good=2, n_test_per_defect=1, n_val_good=1, n_val_per_defect=1,
                                                                       categories=("chip",)))
    chip = {k: v for k, v in _files(small_root).items() if k.startswith("chip/")}
    assert {k: v for k, v in _files(only_chip).items() if k.startswith("chip/")} == chip


# --------------------------------------------------------------------------- ensure / atomicity


def test_ensure_reuses_a_matching_copy_and_regenerates_otherwise(tmp_path):
    root = tmp_path / "toy"
    cfg = ToyConfig(n_train=1, n_test_good=1, n_test_per_defect=1, n_val_good=1, n_val_per_defect=1, categories=("washer", "granite"))
    assert ensure_toy_dataset(root, cfg) == root
    manifest = root / MANIFEST_NAME
    stamp = manifest.stat().st_mtime_ns
    image = root / "washer" / "train" / "good" / "000.png"
    first = image.read_bytes()
    time.sleep(0.01)
    ensure_toy_dataset(root, cfg)
    assert manifest.stat().st_mtime_ns == stamp, "a matching copy must not be regenerated"

    reseeded = ToyConfig(seed=5, n_train=1, n_test_good=1, n_test_per_defect=1, n_val_good=1, n_val_per_defect=1, categories=("washer", "granite"))
    ensure_toy_dataset(root, reseeded)
    assert json.loads(manifest.read_text())["config"]["seed"] == 5
    assert image.read_bytes() != first

    (root / "granite" / "test" / "good" / "000.png").unlink()  # an incomplete copy is regenerated
    ensure_toy_dataset(root, reseeded)
    assert (root / "granite" / "test" / "good" / "000.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"], "no temporary folders are left behind"


def test_concurrent_callers_do_not_corrupt_the_dataset(tmp_path):
    root = tmp_path / "toy"
    cfg = ToyConfig(n_train=1, n_test_good=1, n_test_per_defect=1, n_val_good=1, n_val_per_defect=1,
                    categories=("weave",))
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            ensure_toy_dataset(root, cfg)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(list(root.rglob("*.png"))) == 1 + 2 * (1 + 2 * len(toy_defect_types("weave")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_never_replaces_a_folder_that_is_not_a_toy_dataset(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        generate_toy_dataset(tmp_path, SMALL)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert main(["--root", str(tmp_path), "--force"]) == 2


# --------------------------------------------------------------------------- CLI and speed


def test_cli_generates_the_default_dataset_quickly(tmp_path, capsys):
    """Default config (4 categories, 192 images) through the CLI; the target is < 30 s, we allow 60."""
    root = tmp_path / "toy"
    start = time.perf_counter()
    assert main(["--root", str(root), "--seed", "0", "--force"]) == 0
    took = time.perf_counter() - start
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\ntoy dataset (default config) generated in {took:.1f} s")
    assert took < 60
    assert len(list(root.rglob("*.png"))) == 352 + 4 * 4 * 4 + 4 * 4 * 5  # images, test masks, val masks
    assert len(list(root.rglob("*.png"))) == 352 + 2 * 4 * 4 * 4 + 4 * 4 * 5 - 4 * 4 * 4  # images + masks
    assert main(["--root", str(root), "--ensure"]) == 0
    assert "up to date" in capsys.readouterr().out
