"""Registries of methods, datasets and DAS anomaly kinds: a new one is one registration, nothing else.

The method (``helpers.MeanShotDifference``), dataset and DAS kind are defined in the tests only; registering them
makes them run through ``reproduce``, ``load_dataset``, ``synthesize`` and the command line.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vtfusion.cli import main
from vtfusion.das import DASConfig, DASKind, get_das_kind, list_das_kinds, register_das_kind, synthesize
from vtfusion.data import CategoryInfo, DatasetSpec, get_dataset, list_datasets, load_dataset, register_dataset
from vtfusion.data.toy import ensure_toy_dataset
from vtfusion.methods import get_method, list_methods, register_method
from vtfusion.methods.registry import METHODS
from vtfusion.registry import Registry

from helpers import MeanShotDifference, quick_config

TOY_METHOD = "mean_shot_difference"


@pytest.fixture(scope="module")
def toy_method():
    """The toy method, registered for this module's tests only."""
    register_method(TOY_METHOD, MeanShotDifference)
    yield MeanShotDifference
    METHODS.unregister(TOY_METHOD)


# --- the registry itself ---------------------------------------------------------------------

def test_registry_names_the_unknown_entry_and_the_known_ones():
    fruit: Registry[int] = Registry("fruit")
    fruit.register("apple", 1)

    @fruit.register("pear")
    def pear() -> int:
        return 2

    assert fruit.names() == ("apple", "pear") and fruit.get("pear") is pear and "apple" in fruit
    with pytest.raises(ValueError) as err:
        fruit.get("plum")
    assert str(err.value) == "unknown fruit 'plum'; known: apple, pear"
    with pytest.raises(ValueError, match="already registered"):
        fruit.register("apple", 3)
    assert fruit.register("apple", 3, replace=True) == 3 and fruit.get("apple") == 3
    with pytest.raises(ValueError, match="invalid fruit name"):
        fruit.register("Not A Name", 4)
    assert fruit.unregister("pear") is pear and fruit.names() == ("apple",)


def test_built_in_entries_are_registered():
    assert list_methods()[:3] == ("vtfusion", "patch_knn", "zero_shot")
    assert get_method("zero_shot").uses_shots is False and get_method("vtfusion").paper_key == "vtfusion"
    assert set(list_datasets()) >= {"toy", "mvtec", "visa", "real_ad", "folder"}
    assert list_das_kinds()[:5] == ("misplaced", "blurry", "crack", "noise", "combined")
    assert get_das_kind("fuzzy").name == "blurry"
    for lookup, kind in ((get_method, "method"), (get_dataset, "dataset"), (get_das_kind, "DAS anomaly")):
        with pytest.raises(ValueError, match=f"unknown {kind}"):
            lookup("no_such_thing")


# --- a method defined in this file runs through reproduce ---------------------------------------

def test_a_registered_method_runs_through_reproduce(toy_root, toy_method, tmp_path):
    from vtfusion.cache import FeatureCache
    from vtfusion.reproduce import format_rows, reproduce, write_summary

    cfg = quick_config(2)
    kwargs = dict(shots=(1,), seeds=(0,), categories=("chip",), results_root=tmp_path / "res",
                  runs_root=tmp_path / "runs", progress=False, cache=FeatureCache.disabled(workers=0))
    rows = reproduce("table1", cfg, "toy", methods=("vtfusion", TOY_METHOD, "patch_knn", "zero_shot"), **kwargs)
    by_method = {r["method"]: r for r in rows}
    assert list(by_method) == ["vtfusion", TOY_METHOD, "patch_knn", "zero_shot"]
    for name, row in by_method.items():
        assert 0 <= row["image_auroc_mean"] <= 100 and 0 <= row["pixel_auroc_mean"] <= 100, name
        assert row["cells"] == 1 and row["categories"] == ["chip"]
    assert by_method[TOY_METHOD]["k"] == 1 and by_method["zero_shot"]["k"] == 0  # no shots: one k = 0 row
    assert by_method[TOY_METHOD]["paper_image_auroc"] is None, "the paper has no row of the toy method"
    cell = json.loads((tmp_path / "res" / "quick" / by_method[TOY_METHOD]["cell_files"][0]).read_text())
    assert cell["method"] == f"table1-{TOY_METHOD}" and cell["shots"] and cell["method_config"]["method"] == TOY_METHOD
    assert cell["cost"]["predicted_images"] == cell["n_test"] and cell["cost"]["predict_seconds_per_image"] > 0
    assert TOY_METHOD in format_rows(rows)
    json_path, _ = write_summary(rows, tmp_path / "res" / "quick")
    vtfusion_only = reproduce("table1", cfg, "toy", **kwargs)
    assert [r["method"] for r in vtfusion_only] == ["vtfusion"]
    assert vtfusion_only[0]["config_hash"] != rows[0]["config_hash"], "another set of rows is another summary"
    assert vtfusion_only[0]["cell_files"] == by_method["vtfusion"]["cell_files"], "the finished cell is reused"


def test_a_registered_method_runs_from_the_command_line(toy_root, toy_method, tmp_path, capsys):
    argv = ["reproduce", "table1", "--profile", "quick", "--backbone", "tiny", "--weights", "random",
            "--layers", "1", "2", "3", "4", "--shots", "1", "--seeds", "0", "--categories", "chip",
            "--methods", TOY_METHOD, "--results", str(tmp_path / "res"), "--runs", str(tmp_path / "runs"), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (row,) = [line.split() for line in out.splitlines() if line.startswith(TOY_METHOD + " ")]
    assert row[1] == "1" and "+-" in row, "the toy method's row: k = 1, mean +- std"
    assert list((tmp_path / "res" / "quick" / "toy" / f"table1-{TOY_METHOD}" / "chip").glob("k1_seed0_*.json"))


def test_unknown_method_and_methods_of_an_ablation_table_are_one_line_errors(capsys):
    assert main(["reproduce", "table1", "--profile", "quick", "--methods", "vtfusion", "no_such_method"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no_such_method" in err and "patch_knn" in err and "--methods" in err
    assert main(["reproduce", "table2", "--profile", "quick", "--methods", "patch_knn"]) == 2
    assert "table1" in capsys.readouterr().err


# --- a dataset and a DAS kind defined in this file ----------------------------------------------

@pytest.fixture
def chip_only():
    """The toy data's chip category as a dataset of its own (its own table and shot lists)."""
    spec = register_dataset(DatasetSpec(name="chip_only", description="the toy chips alone (tests)",
                                        categories={"chip": CategoryInfo("chip", False, "chip")},
                                        default_root=ensure_toy_dataset))
    yield spec
    from vtfusion.data.registry import DATASETS

    DATASETS.unregister("chip_only")


def test_a_registered_dataset_opens_and_runs_a_cell(toy_root, toy_method, chip_only, tmp_path):
    from vtfusion.cache import FeatureCache
    from vtfusion.evaluate import run_method

    split = load_dataset("chip_only", "chip", "test")
    assert split.dataset_name == "chip_only" and len(split) == len(load_dataset("toy", "chip", "test"))
    with pytest.raises(ValueError, match="valid categories: chip"):
        load_dataset("chip_only", "washer")
    result = run_method(TOY_METHOD, quick_config(2), "chip_only", "chip", 2, 0, results_root=tmp_path,
                        cache=FeatureCache.disabled(workers=0))
    assert result["dataset"] == "chip_only" and len(result["shots"]) == 2 and "chip_only" in result["result_file"]
    again = run_method(TOY_METHOD, quick_config(2), "chip_only", "chip", 2, 0, results_root=tmp_path,
                       cache=FeatureCache.disabled(workers=0))
    assert again["skipped"] and again["metrics"] == result["metrics"]


@dataclasses.dataclass(frozen=True)
class InvertParams:
    area: tuple[float, float] = (0.02, 0.1)


def draw_inverted_square(d, images, foreground, cfg, strength, area_scale, quantise):
    """Invert the pixels of a random square (the area bounds of :class:`InvertParams`)."""
    n, _, h, w = images.shape
    lo, hi = InvertParams().area
    side = (d.uniform(lo, hi, n) * area_scale * h * w).sqrt()
    top, left = d.rand(n) * (h - side), d.rand(n) * (w - side)
    yy = torch.arange(h, device=images.device)[None, :, None].float()
    xx = torch.arange(w, device=images.device)[None, None, :].float()
    region = ((yy >= top[:, None, None]) & (yy < (top + side)[:, None, None])
              & (xx >= left[:, None, None]) & (xx < (left + side)[:, None, None]))
    return 1.0 - images, region & foreground


@pytest.fixture
def inverted_square():
    kind = register_das_kind(DASKind("inverted_square", draw_inverted_square, "an inverted square (tests)",
                                     "textural", params=InvertParams(), aliases=("negative",)))
    yield kind
    from vtfusion.das import DAS_KINDS

    DAS_KINDS.unregister("inverted_square")


def test_a_registered_das_kind_is_drawn_and_configurable(inverted_square):
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    out, mask = synthesize(image, "negative", generator=1)
    assert mask.any() and torch.equal(out[:, ~mask], image[:, ~mask])
    assert torch.allclose(out[:, mask], 1.0 - image[:, mask])
    assert 0.02 <= float(mask.float().mean()) <= 0.1
    assert DASConfig(types=("inverted_square", "crack")).types == ("inverted_square", "crack")
    assert DASConfig().types == ("misplaced", "blurry", "crack", "noise", "combined"), "defaults never change"
    with pytest.raises(ValueError, match="has no section in DASConfig"):
        register_das_kind(DASKind("no_params", draw_inverted_square))


def test_list_prints_every_registered_name(toy_method, chip_only, inverted_square, capsys):
    for what, expected in (("methods", list_methods()), ("datasets", list_datasets()),
                           ("das-kinds", list_das_kinds())):
        assert main(["list", what]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in lines] == list(expected)
    assert TOY_METHOD in list_methods() and "chip_only" in list_datasets() and "inverted_square" in list_das_kinds()
