"""Where a cell's images come from (``DataConfig.root``) and where its results go (``storage_name``).

A config that names a dataset root is evaluated on that root, not on the default one, and
a toy root drawn with other counts never shares a result file with ``data/toy``, while
the models trained on an identical train split are shared.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vtfusion.cache import FeatureCache
from vtfusion.config import DataConfig, describe
from vtfusion.data.registry import root_digest, storage_name
from vtfusion.data.toy import MANIFEST_NAME, ToyConfig, _manifest, ensure_toy_dataset
from vtfusion.evaluate import run_method
from vtfusion.methods import register_method
from vtfusion.methods.registry import METHODS

from helpers import MeanShotDifference, quick_config

METHOD = "mean_shot_difference_root"
#: A toy root with a smaller test split than data/toy's 28 images per category.
SMALL = ToyConfig(categories=("chip",), n_train=3, n_test_good=2, n_test_per_defect=1,
                  n_val_good=1, n_val_per_defect=1)


@pytest.fixture(scope="module")
def method():
    register_method(METHOD, MeanShotDifference)
    yield METHOD
    METHODS.unregister(METHOD)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return ensure_toy_dataset(tmp_path_factory.mktemp("data") / "toy-small", SMALL)


def _with_root(dataset: str, root: Path | None):
    cfg = quick_config(1)
    return cfg.replace(data=dataclasses.replace(cfg.data, dataset=dataset, root=None if root is None else str(root)))


def _cell(method: str, cfg, dataset: str, results: Path, **kwargs) -> dict:
    return run_method(method, cfg, dataset, "chip", 2, 0, results_root=results,
                      cache=FeatureCache.disabled(workers=0), **kwargs)


def _write_manifest(root: Path, config: ToyConfig) -> Path:
    root.mkdir(parents=True)
    (root / MANIFEST_NAME).write_text(json.dumps(_manifest(config)))
    return root


# --- DataConfig.root_for ----------------------------------------------------------------------

def test_root_for_prefers_the_given_root_then_the_configs_own_dataset():
    data = DataConfig(dataset="folder", root="/parts")
    assert data.root_for("folder") == "/parts"
    assert data.root_for("folder", "/other") == "/other"
    assert data.root_for("toy") is None  # a root belongs to its dataset only
    assert DataConfig().root_for("toy") is None


def test_describe_names_the_folder_that_runs():
    cfg = _with_root("folder", Path("/parts"))
    assert "data: folder in /parts;" in describe(cfg)
    assert "data: folder in /given;" in describe(cfg, data_root="/given")
    assert "data: toy;" in describe(cfg, dataset="toy")


# --- storage_name: toy roots keyed by what their splits hold -------------------------------

def test_a_toy_root_with_the_default_draw_shares_the_toy_name(tmp_path):
    root = _write_manifest(tmp_path / "toy-copy", ToyConfig(categories=("weave",)))
    assert {storage_name("toy", root, split) for split in ("train", "val", "test", None)} == {"toy"}
    assert storage_name("toy") == "toy"


def test_a_larger_validation_split_is_keyed_apart_only_where_it_differs(tmp_path):
    big = _write_manifest(tmp_path / "big", ToyConfig(n_val_good=100, n_val_per_defect=25))
    other = _write_manifest(tmp_path / "other", ToyConfig(n_val_good=50))
    assert storage_name("toy", big, "train") == storage_name("toy", big, "test") == "toy"
    val = storage_name("toy", big, "val")
    assert val.startswith("toy-") and len(val) == len("toy-") + 8
    assert storage_name("toy", big, None) not in ("toy", val)
    assert storage_name("toy", other, "val") not in ("toy", val)
    copy = _write_manifest(tmp_path / "copy", ToyConfig(n_val_good=100, n_val_per_defect=25))
    assert storage_name("toy", copy, "val") == val  # by what it holds, not by where it lives


def test_another_seed_or_size_changes_every_split(tmp_path):
    for name, config in (("seed", ToyConfig(seed=1)), ("size", ToyConfig(image_size=128))):
        root = _write_manifest(tmp_path / name, config)
        assert all(storage_name("toy", root, split) != "toy" for split in ("train", "val", "test"))


def test_a_toy_root_without_a_manifest_is_keyed_by_its_path(tmp_path):
    assert storage_name("toy", tmp_path, "test") == f"toy-{root_digest(tmp_path)}"
    with pytest.raises(ValueError, match="unknown toy split 'dev'"):
        storage_name("toy", _write_manifest(tmp_path / "t", ToyConfig()), "dev")


def test_a_published_dataset_keeps_its_name_wherever_it_lives(tmp_path):
    assert storage_name("mvtec", tmp_path, "test") == "mvtec" and storage_name("real_ad", tmp_path) == "real_ad"


# --- the runners read DataConfig.root -------------------------------------------------------

def test_a_config_root_is_what_a_cell_reads(method, small_root, tmp_path):
    """Before DataConfig.root was read, this cell ran on data/toy (28 test images of chip)."""
    result = _cell(method, _with_root("toy", small_root), "toy", tmp_path)
    assert result["n_test"] == SMALL.n_test_good + 4 * SMALL.n_test_per_defect
    assert result["data_root"] == str(small_root)
    assert f"/{storage_name('toy', small_root, 'test')}/" in result["result_file"]


def test_a_folder_dataset_runs_from_its_config_root_alone(method, small_root, tmp_path):
    result = _cell(method, _with_root("folder", small_root), "folder", tmp_path)
    assert result["n_test"] == SMALL.n_test_good + 4 * SMALL.n_test_per_defect
    assert f"/folder-{root_digest(small_root)}/" in result["result_file"]


def test_a_given_root_wins_and_another_dataset_ignores_the_config_root(method, small_root, toy_root, tmp_path):
    cfg = _with_root("folder", small_root)
    on_toy = _cell(method, cfg, "toy", tmp_path)  # the root is the folder dataset's, not toy's
    assert on_toy["data_root"] is None and on_toy["n_test"] == len(list((toy_root / "chip" / "test").rglob("*.png")))
    given = _cell(method, _with_root("toy", toy_root / "missing"), "toy", tmp_path, data_root=small_root)
    assert given["data_root"] == str(small_root)


def test_validation_results_of_two_toy_roots_never_share_a_file(method, small_root, toy_root, tmp_path):
    small = _cell(method, _with_root("toy", small_root), "toy", tmp_path, split="val")
    default = _cell(method, _with_root("toy", None), "toy", tmp_path, split="val")
    assert small["result_file"] != default["result_file"]
    assert not default["skipped"] and small["n_test"] != default["n_test"]


def test_a_reproduction_plan_reads_the_config_root(small_root):
    from vtfusion.reproduce import plan

    cfg = _with_root("toy", small_root)
    assert plan("table1", cfg, "toy", shots=(2,), seeds=(0,), categories=("chip",)).data_root == str(small_root)
    assert plan("table1", cfg, "toy", shots=(2,), seeds=(0,), categories=("chip",), data_root="/x").data_root == "/x"
    assert plan("table1", cfg, "mvtec", shots=(2,), seeds=(0,), categories=("bottle",)).data_root is None


def test_two_folders_reproduced_alike_keep_two_summaries(method, small_root, tmp_path):
    from vtfusion.reproduce import reproduce, write_summary

    other = ensure_toy_dataset(tmp_path / "other", dataclasses.replace(SMALL, seed=1))
    kwargs = dict(shots=(2,), seeds=(0,), categories=("chip",), results_root=tmp_path / "res",
                  progress=False, cache=FeatureCache.disabled(workers=0), methods=(method,))
    written = []
    for root in (small_root, other):
        rows = reproduce("table1", _with_root("folder", root), "folder", **kwargs)
        assert rows[0]["dataset"] == "folder" and rows[0]["stored_as"] == f"folder-{root_digest(root)}"
        written.append(write_summary(rows, tmp_path / "res" / "quick")[0])
    assert written[0] != written[1] and all(path.is_file() for path in written)


def test_shot_lists_of_a_toy_root_with_another_train_split_are_user_data(small_root, tmp_path, monkeypatch):
    from vtfusion import paths
    from vtfusion.data.shots import generate_shot_lists, shot_path

    monkeypatch.setenv("VTFUSION_DATA_DIR", str(tmp_path / "user"))
    written = generate_shot_lists("toy", root=small_root, ks=(2,), seeds=(0,))
    tag = storage_name("toy", small_root, "train")
    assert tag != "toy" and written == [tmp_path / "user" / "shots" / tag / "chip" / "k2_seed0.json"]
    files = json.loads(written[0].read_text())["files"]
    assert all((small_root / "chip" / f).is_file() for f in files)  # drawn from its 3 images, not data/toy's 20
    assert shot_path("toy", "chip", 2, 0).parent.parent.parent == paths.committed_shots_dir()
