"""Choices are made on validation data: the selection code never opens a test split, and the
training history carries the diagnostics the training chapter plots."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from helpers import quick_config
from vtfusion.data import load_dataset
from vtfusion.evaluate import run_cell
from vtfusion.evaluate import map_monitor
from vtfusion.validation import Candidate, compare, selection_score, summarize


@pytest.fixture(scope="module")
def toy_without_test(toy_root, tmp_path_factory):
    """A copy of the toy dataset whose test images and test masks are deleted."""
    root = tmp_path_factory.mktemp("toy_no_test") / "toy"
    shutil.copytree(toy_root, root)
    for category in ("chip",):
        shutil.rmtree(root / category / "test")
        shutil.rmtree(root / category / "ground_truth")
    return root


def test_selection_runs_without_any_test_split(toy_without_test, backbone, tmp_path):
    with pytest.raises((FileNotFoundError, ValueError)):
        load_dataset("toy", "chip", "test", toy_without_test)  # the copy really has no test split
    cfg = quick_config(2)
    other = cfg.replace(model=dataclasses.replace(cfg.model, prototypes=dataclasses.replace(
        cfg.model.prototypes, bank="memory")))
    rows = compare([Candidate("paper", cfg), Candidate("memory", other)], categories=("chip",), shots=(1,),
                   seeds=(0,), data_root=toy_without_test, results_root=tmp_path / "res", runs_root=tmp_path / "runs",
                   backbone=backbone, progress=False)
    assert [r["name"] for r in rows] == ["patch_knn", "paper", "memory"]
    for r in rows:
        assert 0 <= r["image_auroc"] <= 1 and r["selection_score"] == pytest.approx(selection_score(r))
        # the cells, for paired comparisons: one (chip, 1, 0), whose metrics make the summary
        assert [(c["category"], c["k"], c["seed"]) for c in r["per_cell"]] == [("chip", 1, 0)]
        assert r["per_cell"][0]["aupro"] == pytest.approx(r["aupro"])
    files = list((tmp_path / "res").rglob("*.json"))
    assert files and all(f.name.endswith("_val.json") for f in files)
    assert all(json.loads(f.read_text())["split"] == "val" for f in files)


def test_the_monitor_refuses_a_test_split(toy_root, backbone):
    with pytest.raises(ValueError, match="validation split"):
        map_monitor(load_dataset("toy", "chip", "test"), backbone)


def test_summary_is_mean_over_categories_then_over_cells():
    def res(k, seed, v):
        return {"k": k, "seed": seed, "metrics": {"image_auroc": v, "pixel_auroc": v, "aupro": v}}

    row = summarize([res(1, 0, 0.2), res(1, 0, 0.4), res(1, 1, 0.6), res(1, 1, 0.8)])
    assert row["image_auroc"] == pytest.approx(0.5) and row["image_auroc_std"] == pytest.approx(0.2)
    assert row["cells"] == 4


def test_history_holds_the_diagnostics_and_the_validation_curves(backbone, tmp_path):
    cfg = quick_config(12)
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, diagnostics_every=5, monitor_every=6))
    result = run_cell(cfg, "toy", "washer", 2, 0, results_root=tmp_path / "res", runs_root=tmp_path / "runs",
                      backbone=backbone, split="val", monitor=True)
    history = json.loads(next((tmp_path / "runs").rglob("history.json")).read_text())
    steps = history["history"]
    assert len(steps) == 12
    for record in steps:
        assert {"nfc", "afs", "seg", "total", "nfc_active", "afs_active", "afs_margin"} <= set(record)
        assert 0 <= record["nfc_active"] <= 1 and 0 <= record["afs_active"] <= 1
    diagnosed = [r["iteration"] for r in steps if "aie_change" in r]
    assert diagnosed == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11], "the first ten and every 5th (and the last)"
    assert all(r["grad_aie_seg"] >= 0 and r["aie_change"] >= 0 for r in steps if "aie_change" in r)
    assert [m["iteration"] for m in history["monitor"]] == [0, 6, 12]
    for m in history["monitor"]:
        assert {"final_image_auroc", "final_pixel_auroc", "vision_pixel_auroc", "text_pixel_auroc"} <= set(m)
    assert result["split"] == "val" and set(result["map_metrics"]) == {"vision", "text", "fused"}


def test_recipes_switch_between_the_paper_reading_and_the_project_choice(monkeypatch):
    from vtfusion import recipes
    from vtfusion.config import get_profile

    monkeypatch.setattr(recipes, "PROJECT_OVERRIDES", {"model.prototypes.bank": "memory",
                                                       "train.adaptor_lr_scale": 0.1})
    project = get_profile("quick")
    assert project.model.prototypes.bank == "memory" and project.train.adaptor_lr_scale == 0.1
    assert recipes.recipe_of(project) == "project"
    paper = recipes.apply_recipe(project, "paper")
    assert paper.model.prototypes.bank == "mean" and paper.train.adaptor_lr_scale == 1.0
    assert recipes.recipe_of(paper) == "paper" and get_profile("quick", recipe="paper") == paper
    assert paper.backbone == project.backbone and paper.train.iterations == project.train.iterations
    custom = recipes.set_path(project, "train.adaptor_lr_scale", 0.5)
    assert recipes.recipe_of(custom) == "custom"
    with pytest.raises(ValueError, match="--recipe"):
        recipes.apply_recipe(project, "best")
    with pytest.raises(ValueError, match="no field"):
        recipes.set_path(project, "train.nonsense", 1)


def test_the_committed_recipe_record_is_the_one_the_recipe_uses():
    from vtfusion import recipes

    record = recipes.recipe_selection()
    assert record["split"] == "val"
    assert record["overrides"] == recipes.PROJECT_OVERRIDES
    assert all(stage["chosen"] in {r["name"] for r in stage["rows"]} for stage in record["stages"])
