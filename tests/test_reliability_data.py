"""Data reliability (issue 16, part C): user files survive toy regeneration, folder shot lists
are keyed by their root, masks are thresholded at 128 with a warning when not binary, datasets
with image labels only are evaluated on image metrics."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtfusion.data.toy import MANIFEST_NAME, ToyConfig, ensure_toy_dataset, generate_toy_dataset, generated_files

TINY_TOY = ToyConfig(n_train=1, n_test_good=1, n_test_per_defect=1, n_val_good=1, n_val_per_defect=1,
                     categories=("washer",))


def _user_files(root: Path) -> dict[Path, str]:
    """Files a user adds to a toy dataset: at the root, in a split folder, in a folder of their own."""
    files = {root / "notes.txt": "mine", root / "washer" / "train" / "good" / "extra_user.png": "not a png",
             root / "mine" / "labels.csv": "a,b"}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


# --------------------------------------------------------------------------- 3: toy regeneration


@pytest.mark.parametrize("how", ["force", "new_seed", "version_change"])
def test_regenerating_the_toy_dataset_keeps_user_files(tmp_path, how, monkeypatch):
    root = generate_toy_dataset(tmp_path / "toy", TINY_TOY)
    files = _user_files(root)
    if how == "force":  # what `vtfusion data toy --force` does, on a one-category config
        generate_toy_dataset(root, TINY_TOY)
    elif how == "new_seed":
        ensure_toy_dataset(root, ToyConfig(**{**TINY_TOY.__dict__, "seed": 3}))
    else:
        import vtfusion.data.toy as toy

        monkeypatch.setattr(toy, "GENERATOR_VERSION", "toy-next")
        ensure_toy_dataset(root, TINY_TOY)
        assert json.loads((root / MANIFEST_NAME).read_text())["generator_version"] == "toy-next"
    for path, text in files.items():
        assert path.read_text() == text, f"{path} was removed or changed by the regeneration ({how})"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"], "no temporary folder is left behind"


def test_manifest_lists_the_files_written_and_only_those_are_removed(tmp_path):
    root = generate_toy_dataset(tmp_path / "toy", ToyConfig(**{**TINY_TOY.__dict__, "n_train": 3}))
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert manifest["files"] == on_disk
    _user_files(root)
    generate_toy_dataset(root, TINY_TOY)  # fewer training images: 001 and 002 were ours, so they go
    assert not (root / "washer" / "train" / "good" / "001.png").exists()
    assert (root / "washer" / "train" / "good" / "000.png").is_file()
    assert (root / "washer" / "train" / "good" / "extra_user.png").is_file()
    assert json.loads((root / MANIFEST_NAME).read_text())["files"] == generated_files(TINY_TOY)


def test_a_user_file_where_the_generator_writes_is_never_overwritten(tmp_path):
    root = generate_toy_dataset(tmp_path / "toy", TINY_TOY)
    bigger = ToyConfig(**{**TINY_TOY.__dict__, "n_train": 2})
    (root / "washer" / "train" / "good" / "001.png").write_text("user's image")
    with pytest.raises(FileExistsError, match=r"001.png is not listed in .*manifest.json"):
        generate_toy_dataset(root, bigger)
    assert (root / "washer" / "train" / "good" / "001.png").read_text() == "user's image"


def test_an_interrupted_regeneration_leaves_no_half_written_file_and_is_redone(tmp_path, monkeypatch):
    import vtfusion.data.toy as toy

    root = generate_toy_dataset(tmp_path / "toy", TINY_TOY)
    files = _user_files(root)
    reseeded = ToyConfig(**{**TINY_TOY.__dict__, "seed": 9})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "_remove_files", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_toy_dataset(root, reseeded)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]
    assert json.loads((root / MANIFEST_NAME).read_text()).get("incomplete") is True
    assert ensure_toy_dataset(root, reseeded) == root
    assert "incomplete" not in json.loads((root / MANIFEST_NAME).read_text())
    for path, text in files.items():
        assert path.read_text() == text


def test_a_manifest_cannot_make_the_generator_delete_outside_its_root(tmp_path):
    root = generate_toy_dataset(tmp_path / "toy", TINY_TOY)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["files"] += ["../outside.txt", str(outside)]
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    generate_toy_dataset(root, TINY_TOY)
    assert outside.read_text() == "keep"


def test_a_copy_with_a_manifest_from_before_the_file_list_is_reused_and_cleaned(tmp_path):
    root = generate_toy_dataset(tmp_path / "toy", TINY_TOY)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    del manifest["files"]
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    stamp = (root / MANIFEST_NAME).stat().st_mtime_ns
    ensure_toy_dataset(root, TINY_TOY)
    assert (root / MANIFEST_NAME).stat().st_mtime_ns == stamp, "an identical older copy is not regenerated"
    files = _user_files(root)
    ensure_toy_dataset(root, ToyConfig(**{**TINY_TOY.__dict__, "seed": 4}))
    assert all(p.read_text() == t for p, t in files.items())


# --------------------------------------------------------------------------- 8: folder shot lists


def test_folder_shot_lists_are_keyed_by_their_root(tmp_path, monkeypatch):
    from test_data import make_mvtec_folder
    from vtfusion.data import MVTecDataset
    from vtfusion.data.shots import generate_shot_lists, shot_list_for, shot_path
    from vtfusion.paths import committed_shots_dir

    monkeypatch.setenv("VTFUSION_DATA_DIR", str(tmp_path / "data"))
    big, small = make_mvtec_folder(tmp_path / "big", n_train=6), make_mvtec_folder(tmp_path / "small", n_train=3)
    [written_big] = generate_shot_lists("folder", root=big, ks=(2,), seeds=(0,))
    [written_small] = generate_shot_lists("folder", root=small, ks=(2,), seeds=(0,))
    assert written_big != written_small, "two folders with a category 'widget' share one shot list"
    assert written_big.is_relative_to(tmp_path / "data" / "shots")
    for root, pool in ((big, 6), (small, 3)):
        train = MVTecDataset(root, "widget", "train", image_size=16)
        assert shot_list_for(train, 2, 0).pool_size == pool
    # The named datasets' committed lists keep their place (package data, keyed by name only).
    assert shot_path("mvtec", "bottle", 2, 0) == committed_shots_dir() / "mvtec" / "bottle" / "k2_seed0.json"
    assert shot_path("mvtec", "bottle", 2, 0).is_file()


# --------------------------------------------------------------------------- 11: mask threshold


def _mask_file(path: Path, values: list[int]) -> Path:
    mask = np.zeros((8, 8), dtype=np.uint8)
    for i, v in enumerate(values):
        mask[i] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def test_non_binary_mask_is_thresholded_at_128_with_a_warning_naming_the_file(tmp_path):
    from vtfusion.data.images import MaskWarning, read_mask

    binary = _mask_file(tmp_path / "binary_mask.png", [0, 255])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_mask(binary)[:2, 0].tolist() == [False, True]
    soft = _mask_file(tmp_path / "soft_mask.png", [0, 1, 127, 128, 255])
    with pytest.warns(MaskWarning, match=r"soft_mask\.png is not binary"):
        mask = read_mask(soft)
    assert mask[:5, 0].tolist() == [False, False, False, True, True]


def test_dataset_masks_follow_the_threshold(tmp_path):
    from test_data import make_mvtec_folder
    from vtfusion.data import MVTecDataset
    from vtfusion.data.images import MaskWarning

    root = make_mvtec_folder(tmp_path)
    arr = np.zeros((37, 53), dtype=np.uint8)
    arr[:10] = 255
    arr[10:30] = 40  # e.g. a blurred edge: not defect
    Image.fromarray(arr).save(root / "widget" / "ground_truth" / "dent" / "000_mask.png")
    test = MVTecDataset(root, "widget", "test", image_size=None)
    with pytest.warns(MaskWarning, match="000_mask.png"):
        mask = test[0]["mask"][0]
    assert int(mask.sum()) == 10 * 53


# --------------------------------------------------------------------------- 12: image labels only


def make_image_label_folder(root: Path, category: str = "widget") -> Path:
    """Defect folders without ``ground_truth``: image labels only."""
    rng = np.random.default_rng(1)
    for split, kind, n in (("train", "good", 3), ("test", "good", 2), ("test", "dent", 2)):
        for i in range(n):
            path = root / category / split / kind / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return root


def test_image_label_dataset_is_detected_and_scored_on_image_metrics(tmp_path):
    import torch

    from vtfusion.data import MVTecDataset, load_dataset
    from vtfusion.metrics import METRIC_KEYS, PIXEL_METRIC_KEYS, evaluate_maps

    root = make_image_label_folder(tmp_path / "parts")
    test = load_dataset("folder", "widget", "test", root)
    assert "image labels only" in test.pixel_metrics_unavailable and "dent/000.png" in test.pixel_metrics_unavailable
    with pytest.raises(FileNotFoundError, match=r"have no mask.*--require-masks"):
        MVTecDataset(root, "widget", "test", require_masks=True)
    maps = torch.rand(4, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "undefined, returned as NaN" warning: nothing is undefined
        metrics = evaluate_maps(maps, None, torch.tensor(test.labels))
    assert list(metrics) == list(METRIC_KEYS)
    assert all(metrics[k] is None for k in PIXEL_METRIC_KEYS)
    assert 0.0 <= metrics["image_auroc"] <= 1.0


def _reproduce_argv(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["reproduce", "table1", "--profile", "quick", "--dataset", "folder", "--root", str(root),
            "--categories", "widget", "--shots", "2", "--seeds", "0", "--iterations", "2",
            "--backbone", "tiny", "--weights", "random", "--layers", "1", "2", "3", "4", "--device", "cpu",
            "--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"), "--quiet", *extra]


@pytest.mark.slow
def test_cli_evaluates_an_image_label_dataset_and_require_masks_makes_it_an_error(tmp_path, monkeypatch, capsys):
    from vtfusion.cli import main as cli

    monkeypatch.setenv("VTFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VTFUSION_REQUIRE_MASKS", "0")  # restored after the test (--require-masks sets it)
    root = make_image_label_folder(tmp_path / "parts")
    assert cli(_reproduce_argv(root, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "n/a" in out and "image labels only" in out, out
    [cell] = [p for p in (tmp_path / "results").rglob("k2_seed0_*.json")]
    result = json.loads(cell.read_text())
    assert result["metrics"]["pixel_auroc"] is None and result["metrics"]["aupro"] is None
    assert 0.0 <= result["metrics"]["image_auroc"] <= 1.0
    assert "image labels only" in result["null_reasons"]["metrics.pixel_auroc"]

    assert cli(_reproduce_argv(root, tmp_path / "strict", "--require-masks")) == 2
    err = capsys.readouterr().err
    assert "have no mask" in err and "ground_truth" in err, err
