"""Paired comparisons (vtfusion.stats) on hand-checked examples, and their table in vtfusion.viz."""

from __future__ import annotations

import math

import pytest

from vtfusion import viz
from vtfusion.stats import paired_difference, per_cell_records, shot_difference, verdict


def cells(values: dict[tuple[str, int, int], float], metric: str = "aupro") -> list[dict]:
    return [{"category": c, "k": k, "seed": s, metric: v} for (c, k, s), v in values.items()]


GRID = [(c, k, s) for c in ("a", "b") for k in (1, 2) for s in (0, 1, 2)]


def test_a_constant_shift_is_its_own_interval_and_wins_every_unit():
    ref = {key: 0.5 + 0.01 * key[2] + 0.1 * (key[0] == "a") for key in GRID}
    d = paired_difference(cells({key: v + 0.02 for key, v in ref.items()}), cells(ref), "aupro")
    assert d["cells"] == 12 and d["units"] == 6  # (category, seed) units, each averaging its two k
    assert d["mean"] == pytest.approx(0.02) and d["low"] == pytest.approx(0.02) and d["high"] == pytest.approx(0.02)
    assert (d["wins"], d["losses"], d["ties"]) == (6, 0, 0)
    assert verdict(d) == "above"
    assert d["p_wilcoxon"] == pytest.approx(1 / 32)  # all 6 signs agree: 2 / 2^6


def test_units_average_their_k_before_the_mean():
    # unit (a, 0): k1 +0.04, k2 0.00 -> +0.02; unit (b, 0): k1 -0.01, k2 -0.01 -> -0.01
    cand = cells({("a", 1, 0): 0.54, ("a", 2, 0): 0.50, ("b", 1, 0): 0.49, ("b", 2, 0): 0.49})
    ref = cells({("a", 1, 0): 0.50, ("a", 2, 0): 0.50, ("b", 1, 0): 0.50, ("b", 2, 0): 0.50})
    d = paired_difference(cand, ref, "aupro")
    assert d["units"] == 2 and d["mean"] == pytest.approx(0.005)
    assert (d["wins"], d["losses"]) == (1, 1)
    assert d["low"] <= -0.01 + 1e-12 and d["high"] >= 0.02 - 1e-12  # the bootstrap can only pick those two
    assert verdict(d, min_units=2) == "level"
    assert verdict(d) == "few units"  # 2 units: a bootstrap cannot say more than their range


def test_only_common_cells_are_paired_and_ties_are_counted():
    ref = cells({("a", 1, 0): 0.5, ("a", 1, 1): 0.6, ("b", 1, 0): 0.7})
    cand = cells({("a", 1, 0): 0.5, ("a", 1, 1): 0.6})  # no (b, 1, 0): it is not paired
    d = paired_difference(cand, ref, "aupro")
    assert d["cells"] == 2 and d["ties"] == 2 and d["mean"] == 0.0 and math.isnan(d["p_wilcoxon"])
    assert verdict(d, min_units=1) == "level"


def test_bad_inputs_say_what_is_wrong():
    ref = cells({("a", 1, 0): 0.5})
    with pytest.raises(ValueError, match="share no cell"):
        paired_difference(cells({("b", 1, 0): 0.5}), ref, "aupro")
    with pytest.raises(ValueError, match="appears twice"):
        paired_difference(ref + ref, ref, "aupro")


def test_per_cell_records_keep_the_cell_and_its_metrics():
    results = [{"category": "a", "k": 2, "seed": 1, "metrics": {"image_auroc": 0.6, "pixel_auroc": 0.8,
                                                                  "aupro": None}}]
    assert per_cell_records(results) == [{"category": "a", "k": 2, "seed": 1, "image_auroc": 0.6,
                                          "pixel_auroc": 0.8}]


def test_paired_table_reads_a_committed_grid(monkeypatch):
    ref = {key: 0.6 + 0.02 * key[2] for key in GRID}
    worse = {key: v - 0.03 for key, v in ref.items()}
    record = {"parts": {
        "toy/tiny": [{"row": "patch_knn/tiny", "k": "all", "per_cell": cells(ref)},
                     {"row": "vtfusion-project/tiny", "k": "all", "per_cell": cells(worse)},
                     {"row": "vtfusion-project/tiny", "k": 2}],
        "real/tire": [{"row": "patch_knn/vitb_random", "k": "all"}]}}
    monkeypatch.setattr(viz, "latest_bench_result", lambda name: (record, "2026-12-04-test"))
    text = viz.paired_table("recipe", "patch_knn", metrics=("aupro",))
    assert "[toy/tiny] minus patch_knn/tiny" in text
    assert "-3.0 [-3.0, -3.0] 0/6 below" in text
    assert "[real/tire]\nno per-cell metrics" in text


def test_paired_validation_table_prints_means_differences_and_the_decision(monkeypatch):
    ref = {key: 0.6 + 0.02 * key[2] for key in GRID}
    better = {key: v + 0.01 for key, v in ref.items()}
    metrics = ("image_auroc", "pixel_auroc", "aupro")
    rows = [{"name": n, "cells": 12, **{m: sum(v.values()) / 12 for m in metrics},
             "selection_score": sum(v.values()) / 12} for n, v in (("patch_knn", ref), ("project", better))]
    diff = {m: paired_difference(cells(better, m), cells(ref, m), m) for m in metrics}
    record = {"split": "val", "backbone": "tiny", "shots": [1, 2], "seeds": [0, 1, 2], "rows": rows,
              "vs_patch_knn": [{"name": "project", "reference": "patch_knn", **diff}],
              "vs_project": [{"name": "project", "reference": "project", **diff}], "would_replace": []}
    monkeypatch.setattr(viz, "latest_bench_result", lambda name: (record, "2026-12-04-test"))
    text = viz.paired_validation_table()
    assert "val split, backbone tiny" in text and "minus patch_knn" in text
    assert "+1.0 [+1.0, +1.0] 6/0 above" in text
    assert text.endswith("would replace the recipe: none")


def test_shot_difference_pairs_each_unit_across_k():
    """k = 2 is 0.05 above k = 1 in every (category, seed) unit, whatever the unit's level."""
    values = {(c, k, s): 0.5 + 0.1 * s + (0.05 if k == 2 else 0.0) + (0.2 if c == "b" else 0.0)
              for c, k, s in GRID}
    diff = shot_difference(cells(values), 2, 1, "aupro")
    assert diff["units"] == 6 and diff["wins"] == 6
    assert math.isclose(diff["mean"], 0.05) and math.isclose(diff["low"], 0.05)
    with pytest.raises(ValueError, match="k = 8"):
        shot_difference(cells(values), 8, 1, "aupro")


def test_shot_trend_table_skips_rows_without_the_asked_k(monkeypatch):
    rising = {key: 0.6 + 0.05 * (key[1] - 1) for key in GRID}
    record = {"parts": {"toy/tiny": [{"row": "patch_knn/tiny", "k": "all", "per_cell": cells(rising, "image_auroc")},
                                     {"row": "old/tiny", "k": "all"}]}}
    monkeypatch.setattr(viz, "latest_bench_result", lambda name: (record, "2026-12-04-test"))
    text = viz.shot_trend_table("recipe", steps=((2, 1),))
    assert "patch_knn/tiny" in text and "+5.0 [+5.0, +5.0] 6/0 above" in text and "old/tiny" not in text
    assert "no part holds" in viz.shot_trend_table("recipe", steps=((8, 1),))
