"""Shot lists: the committed files, their rule, and their use by the loader."""

from __future__ import annotations

import json

import pytest

from vtfusion.data import load_shots, make_shot_list
from vtfusion.data.categories import categories
from vtfusion.data.shots import SHOT_KS, SHOT_SEEDS, generate_shot_lists, mvtec_pools, pools_for, shot_path
from vtfusion.paths import committed_shots_dir

from test_data import make_mvtec_folder


@pytest.mark.parametrize("dataset", ["mvtec", "visa", "toy"])
def test_every_committed_shot_list_exists_and_is_valid(dataset):
    for category in categories(dataset):
        for seed in SHOT_SEEDS:
            previous: tuple[str, ...] = ()
            for k in SHOT_KS:
                sl = load_shots(dataset, category, k, seed)
                assert (sl.dataset, sl.category, sl.k, sl.seed) == (dataset, category, k, seed)
                assert len(sl.files) == k and len(set(sl.files)) == k, "an image appears twice"
                assert sl.files[: len(previous)] == previous, "lists of one seed must be nested"
                previous = sl.files


def test_committed_lists_match_the_rule():
    """Regenerating from the layout facts gives exactly the committed files."""
    pools = pools_for("mvtec")
    for category in ("bottle", "zipper"):
        for k in SHOT_KS:
            committed = load_shots("mvtec", category, k, 1)
            assert make_shot_list("mvtec", category, pools[category], k, 1) == committed
    visa = pools_for("visa")
    assert load_shots("visa", "pcb1", 4, 2) == make_shot_list("visa", "pcb1", visa["pcb1"], 4, 2)


def test_mvtec_pools_from_layout_facts():
    pools = mvtec_pools()
    assert len(pools) == 15 and len(pools["bottle"]) == 209 and pools["toothbrush"][-1] == "train/good/059.png"


def test_seeds_differ_and_same_seed_is_stable():
    pool = [f"train/good/{i:03d}.png" for i in range(100)]
    a = make_shot_list("mvtec", "bottle", pool, 8, 0)
    assert a == make_shot_list("mvtec", "bottle", list(reversed(pool)), 8, 0), "pool order must not matter"
    assert a.files != make_shot_list("mvtec", "bottle", pool, 8, 1).files
    assert a.files != make_shot_list("mvtec", "cable", pool, 8, 0).files


def test_k_larger_than_pool_and_duplicate_pool_are_errors():
    with pytest.raises(ValueError, match=r"k=5 shots requested but only 3 normal training images"):
        make_shot_list("folder", "x", ["a", "b", "c"], 5, 0)
    with pytest.raises(ValueError, match="twice"):
        make_shot_list("folder", "x", ["a", "a", "c"], 1, 0)


def test_missing_shot_list_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="vtfusion data shots --dataset mvtec"):
        load_shots("mvtec", "bottle", 3, 0, base=tmp_path)


def test_custom_folder_shots_and_validation(tmp_path):
    root = make_mvtec_folder(tmp_path / "mine", n_train=5)
    from vtfusion.data import MVTecDataset

    train = MVTecDataset(root, "widget", "train", image_size=16)
    shots = train.load_shots(k=3, seed=0, shots_dir=tmp_path / "shots")
    assert shots.shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="only 5 normal training images"):
        train.load_shots(k=8, seed=0, shots_dir=tmp_path / "shots")
    written = generate_shot_lists("folder", root=root, ks=(1, 2), seeds=(0,), base=tmp_path / "shots",
                                  validate_root=root)
    assert [p.name for p in written] == ["k1_seed0.json", "k2_seed0.json"]
    # A committed list naming a file that is not in the folder is reported.
    bad = shot_path("folder", "widget", 2, 0, tmp_path / "shots", root=root)
    data = json.loads(bad.read_text())
    data["files"][0] = "train/good/999.png"
    bad.write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match="999.png"):
        train.load_shots(k=2, seed=0, shots_dir=tmp_path / "shots")


@pytest.mark.real_data
def test_real_ad_shot_lists_validate_against_the_folder(real_ad):
    for category in ("tire", "magnetic_tile"):
        for k in SHOT_KS:
            sl = load_shots("real_ad", category, k, 0)
            assert all((real_ad / category / f).is_file() for f in sl.files)


def test_shot_files_live_where_documented():
    assert (committed_shots_dir() / "mvtec" / "bottle" / "k2_seed0.json").is_file()
