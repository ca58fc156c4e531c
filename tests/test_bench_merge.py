"""Benchmark helpers: merged parts keep every row and label summaries right; pocket targets read the right rows."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from merge_results import merge  # noqa: E402


def rows(method: str, ks: list, value: float) -> list[dict]:
    return [{"row": method, "k": k, "image_auroc": value} for k in [*ks, "all"]]


def test_a_part_from_two_inputs_relabels_its_summaries_and_later_inputs_win():
    old = {"argv": ["a"], "parts": {"toy/pocket": rows("knn", [1, 2, 4], 0.5), "toy/tiny": rows("knn", [1], 0.7)}}
    new = {"argv": ["b"], "parts": {"toy/pocket": rows("knn", [8], 0.6) + [{"row": "knn", "k": 4, "image_auroc": 0.9}]}}
    out = merge([("old.json", old), ("new.json", new)])
    pocket = {(r["row"], r["k"]): r for r in out["parts"]["toy/pocket"]}
    assert set(pocket) == {("knn", 1), ("knn", 2), ("knn", 4), ("knn", 8), ("knn", "all of 1, 2, 4"),
                           ("knn", "all of 4, 8")}
    assert pocket[("knn", 4)]["image_auroc"] == 0.9 and pocket[("knn", 8)]["image_auroc"] == 0.6
    assert {r["k"] for r in out["parts"]["toy/tiny"]} == {1, "all"}  # one input: its summary stays "all"
    assert out["sources"] == {"toy/pocket": ["old.json", "new.json"], "toy/tiny": ["old.json"]}
    assert [m["argv"] for m in out["merged_from"]] == [["a"], ["b"]]


def test_whole_parts_replace_an_earlier_part_instead_of_mixing_rows():
    old = {"parts": {"real/tire": rows("knn", [2, 4], 0.5) + rows("paper", [2], 0.4), "toy/tiny": rows("knn", [1], 0.7)}}
    new = {"parts": {"real/tire": rows("knn", [2, 4], 0.6)}}
    out = merge([("old.json", old), ("new.json", new)], whole_parts=True)
    tire = {(r["row"], r["k"]): r["image_auroc"] for r in out["parts"]["real/tire"]}
    assert tire == {("knn", 2): 0.6, ("knn", 4): 0.6, ("knn", "all"): 0.6}  # no paper rows, "all" kept
    assert out["sources"] == {"real/tire": ["new.json"], "toy/tiny": ["old.json"]}


def test_pocket_targets_compare_the_named_pocket_backbone_with_tiny_and_skip_rows_that_did_not_run():
    from bench_pocket import targets

    summaries = [{"row": r, "k": "all", "image_auroc": v}
                 for r, v in (("zero_shot/pocket-v2", 0.72), ("patch_knn/pocket-v2", 0.70), ("patch_knn/tiny", 0.66))]
    checks = targets(summaries, "pocket-v2")
    assert set(checks) == {"zero-shot image AUROC >= 0.70 (pocket-v2)", "patch-kNN pocket-v2 - tiny >= 0.05 image AUROC"}
    assert checks["zero-shot image AUROC >= 0.70 (pocket-v2)"]["met"]
    gap = checks["patch-kNN pocket-v2 - tiny >= 0.05 image AUROC"]
    assert abs(gap["value"] - 0.04) < 1e-9 and not gap["met"]
