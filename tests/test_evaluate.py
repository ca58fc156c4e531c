"""Evaluation cells and table reproduction: provenance, atomic results, resume."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vtfusion.config import get_profile
from vtfusion.evaluate import RESULT_FORMAT, read_result, result_path, run_cell

from helpers import quick_config


def test_cell_result_carries_metrics_and_provenance(toy_root, backbone, tmp_path):
    cfg = quick_config(2)
    result = run_cell(cfg, "toy", "chip", 1, 0, results_root=tmp_path / "res", runs_root=tmp_path / "runs",
                      backbone=backbone)
    assert not result["skipped"]
    path = result_path(cfg.replace(train=dataclasses.replace(cfg.train, seed=0)), "toy", "chip", 1, 0, "vtfusion",
                       tmp_path / "res")
    saved = json.loads(path.read_text())
    assert saved["format"] == RESULT_FORMAT
    for key in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "image_f1_max"):
        assert 0.0 <= saved["metrics"][key] <= 1.0
    assert len(saved["shots"]) == 1 and saved["shots"][0].startswith("train/good/")
    assert saved["profile"] == "quick" and saved["backbone"] == {"arch": "tiny", "weights": "random"}
    assert saved["config"]["train"]["iterations"] == 2 and saved["vtfusion_version"]
    assert saved["n_test"] == 28 and saved["resolution"] == 240 and saved["wall_seconds"] > 0
    assert "git_commit" in saved
    assert not list(path.parent.glob(".*.tmp")), "no temporary file may be left behind"


def test_finished_cell_is_skipped_and_changed_config_is_not(toy_root, backbone, tmp_path, monkeypatch):
    cfg = quick_config(2)
    kwargs = dict(results_root=tmp_path / "res", runs_root=tmp_path / "runs", backbone=backbone)
    first = run_cell(cfg, "toy", "chip", 1, 0, **kwargs)
    import vtfusion.evaluate as evaluate

    def must_not_train(*args, **kw):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(evaluate, "fit_or_load", must_not_train)
    again = run_cell(cfg, "toy", "chip", 1, 0, **kwargs)
    assert again["skipped"] and again["metrics"] == first["metrics"]
    with pytest.raises(AssertionError, match="recomputed"):
        run_cell(quick_config(3), "toy", "chip", 1, 0, **kwargs)


def test_unreadable_result_is_redone(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text("{ half written")
    assert read_result(bad) is None


def test_reproduce_resumes_after_an_interruption(toy_root, tmp_path, monkeypatch):
    """A run killed after its first cell redoes only the unfinished cells."""
    from vtfusion.reproduce import format_rows, reproduce

    cfg = quick_config(2)
    kwargs = dict(shots=(1,), seeds=(0,), categories=("chip", "weave"), results_root=tmp_path / "res",
                  runs_root=tmp_path / "runs", progress=False)
    import vtfusion.evaluate as evaluate

    calls = []
    original = evaluate.fit_or_load

    def counting(*args, **kw):
        calls.append(args[2])  # category
        if len(calls) == 2 and counting.interrupt:
            raise KeyboardInterrupt
        return original(*args, **kw)

    counting.interrupt = True
    monkeypatch.setattr(evaluate, "fit_or_load", counting)
    with pytest.raises(KeyboardInterrupt):
        reproduce("table1", cfg, "toy", **kwargs)
    assert calls == ["chip", "weave"]
    counting.interrupt = False
    rows = reproduce("table1", cfg, "toy", **kwargs)
    assert calls == ["chip", "weave", "weave"], "only the interrupted cell may run again"
    (row,) = rows
    assert row["method"] == "vtfusion" and row["k"] == 1 and 0 <= row["image_auroc_mean"] <= 100
    assert row["image_auroc_std"] == 0.0  # one seed
    text = format_rows(rows)
    assert "NOT COMPARABLE" in text and "vtfusion" in text


def test_ablation_tables_are_configs_of_one_model():
    from vtfusion.reproduce import table_methods

    cfg = get_profile("paper")
    t2 = table_methods("table2", cfg)
    assert [m.key for m in t2] == ["ate", "ate_aie", "full"]
    assert [m.config.model.variant for m in t2] == ["ate", "ate_aie", "full"]
    t3 = table_methods("table3", cfg)
    assert [m.config.das.types for m in t3[:4]] == [("misplaced",), ("blurry",), ("crack",), ("noise",)]
    assert t3[-1].config.das == cfg.das
    with pytest.raises(ValueError, match="table1, table2, table3"):
        table_methods("table9", cfg)
