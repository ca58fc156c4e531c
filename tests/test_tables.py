"""Reproduced tables in the paper's layout (vtfusion.tables), and the files `vtfusion reproduce` writes."""

from __future__ import annotations

import csv
import json
import io
import re
from html.parser import HTMLParser

import pytest

from vtfusion import tables
from vtfusion.tables import MEAN, layout, show_table, to_csv, to_html, to_markdown


def _row(method: str, k: int, table: str = "table1", categories=("bottle", "cable"), profile: str = "paper",
         dataset: str = "mvtec", image=(90.0, 1.0), pixel=(95.0, 0.5), paper=(96.8, 96.3)) -> dict:
    """A row as vtfusion.reproduce.reproduce returns it, with made-up numbers per category."""
    per_category = {c: {"image_auroc_mean": image[0] + 2 * i, "image_auroc_std": 0.2,
                        "pixel_auroc_mean": pixel[0] - i, "pixel_auroc_std": 0.1,
                        "aupro_mean": 80.0 + i, "aupro_std": 0.3} for i, c in enumerate(categories)}
    return {"table": table, "method": method, "k": k, "dataset": dataset, "seeds": [0, 1, 2],
            "categories": list(categories), "profile": profile, "paper_dataset": "mvtec",
            "config_hash": "abc123", "image_auroc_mean": image[0], "image_auroc_std": image[1],
            "pixel_auroc_mean": pixel[0], "pixel_auroc_std": pixel[1], "aupro_mean": 80.5, "aupro_std": 0.4,
            "per_category": per_category, "paper_image_auroc": paper[0], "paper_pixel_auroc": paper[1]}


class _Cells(HTMLParser):
    """Rows of an HTML table as lists of cell texts, plus each <tr>'s raw HTML."""

    def __init__(self):
        super().__init__()
        self.rows, self.raw, self._cell, self.spans = [], [], None, []

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
            self.spans.append(dict(attrs).get("colspan"))
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")
        elif tag == "span" and self._cell is not None:
            style = dict(attrs).get("style", "")
            colour = re.search(r"color:(#[0-9a-f]{6})", style)
            if colour:
                self._cell.append(f"[{colour.group(1)}]")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(html_text: str) -> _Cells:
    parser = _Cells()
    parser.feed(html_text)
    return parser


def test_html_has_category_rows_a_mean_row_and_a_column_group_per_k():
    rows = [_row("vtfusion", k, image=(95.0 + k / 2, 1.0)) for k in (2, 4, 8)]
    parsed = _parse(to_html(layout(rows)))
    header_k, header_metric, *body = parsed.rows
    assert header_k == ["category", "k = 2 (AUROC)", "k = 4 (AUROC)", "k = 8 (AUROC)"]
    assert header_metric == ["image", "pixel"] * 3
    assert [r[0] for r in body] == ["bottle", "cable", "mean"]
    assert "3" not in [s for s in parsed.spans if s] and parsed.spans.count("2") == 3  # k groups span 2
    mean = body[-1]
    # k=2 image: ours 96.0 +- 1.0 beside the paper's 96.8: -0.8, red (more than half a point lower)
    assert mean[1].startswith("96.0 ± 1.0 96.8")
    assert f"[{tables.COLOURS['lower']}]−0.8" in mean[1]
    # k=8 image: 99.0 vs 96.8 -> +2.2, green
    assert f"[{tables.COLOURS['higher']}]+2.2" in mean[5]
    # category rows: ours only (the paper reports means over categories)
    assert body[0][1] == "96.0 ± 0.2" and body[1][1] == "98.0 ± 0.2"


def test_difference_colours_and_the_neutral_band():
    assert tables.difference_colour(0.4) == tables.COLOURS["same"] == tables.difference_colour(-0.5)
    assert tables.difference_colour(0.6) == tables.COLOURS["higher"]
    assert tables.difference_colour(-3.0) == tables.COLOURS["lower"]


def test_ablation_tables_get_one_block_per_method_with_the_papers_names():
    rows = [_row(m, 2, table="table2") for m in ("ate", "ate_aie", "full")]
    parsed = _parse(to_html(layout(rows)))
    heads = [r for r in parsed.rows[2:] if len(r) == 4]  # block starts carry the method cell
    assert [r[0] for r in heads] == ["ATE", "ATE+AIE", "ATE+AIE+MPF"]
    assert sum(1 for r in parsed.rows[2:] if "mean" in r) == 3
    means_only = _parse(to_html(layout(rows), by_category=False))
    assert len(means_only.rows) == 2 + 3


def test_one_category_is_its_own_mean_and_quick_profile_says_not_comparable():
    rows = [_row("vtfusion", 2, categories=("washer",), profile="quick", dataset="toy")]
    text = to_html(layout(rows))
    body = _parse(text).rows[2:]
    assert [r[0] for r in body] == ["washer"]
    assert "NOT COMPARABLE" in text and "NOT COMPARABLE" in to_markdown(layout(rows))


def test_missing_paper_values_and_undefined_metrics():
    row = _row("vtfusion", 2, paper=(96.8, None))
    row["image_auroc_mean"] = row["image_auroc_std"] = None
    row["null_reasons"] = {"image_auroc_mean": "no normal test image"}
    body = _parse(to_html(layout([row]))).rows[2:]
    assert body[-1][1].startswith("n/a") and body[-1][2] == "95.0 ± 0.5 –"
    assert "n/a: no normal test image" in to_markdown(layout([row]))


def test_markdown_and_csv_carry_the_same_numbers():
    rows = [_row("vtfusion", k) for k in (2, 4)]
    md = to_markdown(layout(rows))
    table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert table_lines[0] == "| category | k=2 image AUROC | k=2 pixel AUROC | k=4 image AUROC | k=4 pixel AUROC |"
    assert "90.0 ± 1.0 (paper 96.8, -6.8)" in table_lines[-1]
    records = list(csv.DictReader(io.StringIO(to_csv(layout(rows, metrics=tuple(tables.METRIC_LABELS))))))
    assert len(records) == 3 * 2 * 3  # (2 categories + mean) x 2 k x 3 metrics
    mean_image = next(r for r in records if r["category"] == MEAN and r["k"] == "2" and r["metric"] == "image_auroc")
    assert float(mean_image["ours_mean"]) == 90.0 and float(mean_image["difference"]) == pytest.approx(-6.8)
    aupro = next(r for r in records if r["category"] == "cable" and r["metric"] == "aupro")
    assert float(aupro["ours_mean"]) == 81.0 and aupro["paper"] == "" and aupro["difference"] == ""


@pytest.mark.parametrize("rows, option", [
    ([], "rows"),
    ([_row("vtfusion", 2), _row("vtfusion", 2)], "rows"),
    ([_row("vtfusion", 2), _row("vtfusion", 4, dataset="visa")], "rows"),
])
def test_bad_rows_name_the_option(rows, option):
    with pytest.raises(ValueError, match=f"^{option}:"):
        layout(rows)
    with pytest.raises(ValueError, match="^metrics:"):
        layout([_row("vtfusion", 2)], metrics=("f1",))


def test_notebook_display_and_chart():
    import matplotlib

    matplotlib.use("Agg")
    rows = [_row(m, k, table="table2") for m in ("ate", "full") for k in (2, 4)]
    shown = show_table(rows, caption="my caption")
    assert "<table" in shown._repr_html_() and "my caption" in shown._repr_html_()
    assert repr(shown).startswith("**my caption. Table II (ATE, ATE+AIE+MPF) on mvtec")
    fig = tables.comparison_chart(rows)
    assert len(fig.axes) == 2
    bars = [p for p in fig.axes[0].patches]
    assert len(bars) == 2 * 4  # ours and paper for each (method, k)


def test_reproduce_writes_markdown_and_csv_beside_its_summary(monkeypatch, tmp_path, capsys):
    """`vtfusion reproduce` lays out the rows with these functions (the runs are stubbed)."""
    import vtfusion.reproduce
    from vtfusion.cli import main

    def fake_reproduce(table, cfg, dataset, shots=None, **kwargs):
        return [_row("vtfusion", k, categories=("washer",), profile=cfg.profile, dataset=dataset)
                for k in shots]

    monkeypatch.setattr(vtfusion.reproduce, "reproduce", fake_reproduce)
    assert main(["reproduce", "table1", "--profile", "quick", "--shots", "2", "4", "--seeds", "0",
                 "--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"), "--quiet"]) == 0
    out = tmp_path / "results" / "quick"
    (summary,) = out.glob("table1_*.json")
    md, table_csv = summary.with_suffix(".md"), out / (summary.stem + ".categories.csv")
    assert md.is_file() and table_csv.is_file()
    assert "| **washer** | 90.0 ± 1.0 (paper 96.8, -6.8) |" in md.read_text()
    records = list(csv.DictReader(open(table_csv)))
    assert {r["k"] for r in records} == {"2", "4"} and {r["metric"] for r in records} == set(tables.METRIC_LABELS)
    assert str(md) in capsys.readouterr().out


def test_bench_table_prints_a_dash_for_a_metric_a_row_lacks(tmp_path, monkeypatch):
    from vtfusion import paths
    from vtfusion.viz import bench_table

    folder = tmp_path / "bench" / "results" / "2026-01-01-test"
    folder.mkdir(parents=True)
    summaries = [{"row": "full/pocket", "k": "all", "pixel_auroc": 0.8, "pixel_auroc_std": 0.01,
                  "text_pixel_auroc": 0.4, "text_pixel_auroc_std": 0.02},
                 {"row": "patch_knn/pocket", "k": "all", "pixel_auroc": 0.7, "pixel_auroc_std": 0.0}]
    (folder / "demo.json").write_text(json.dumps({"summaries": summaries}))
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    lines = bench_table("demo", metrics=("pixel_auroc", "text_pixel_auroc")).splitlines()
    assert lines[0].startswith("bench/results/2026-01-01-test/demo.json")
    knn = next(line for line in lines if line.startswith("patch_knn/pocket")).split()
    full = next(line for line in lines if line.startswith("full/pocket"))
    assert knn[-1] == "-" and "70.0" in knn
    assert "40.0 +- 2.0" in full


def test_latest_bench_result_orders_session_suffixes_as_numbers(tmp_path, monkeypatch):
    from vtfusion import paths
    from vtfusion.viz import latest_bench_result

    for folder in ("2026-01-01-cpu", "2026-01-01-cpu-s9", "2026-01-01-cpu-s10", "2025-12-31-cpu-s99"):
        (tmp_path / "bench" / "results" / folder).mkdir(parents=True)
        (tmp_path / "bench" / "results" / folder / "demo.json").write_text(json.dumps({"from": folder}))
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    record, folder = latest_bench_result("demo")
    assert folder == "2026-01-01-cpu-s10" and record == {"from": folder}
    assert latest_bench_result("absent") is None


def test_gpu_costs_table_reads_a_gpu_session_and_says_when_there_is_none(tmp_path, monkeypatch):
    from vtfusion import paths
    from vtfusion.viz import gpu_costs_table

    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    assert gpu_costs_table().startswith("no committed GPU session yet")
    folder = tmp_path / "bench" / "results" / "2026-01-01-some-gpu"
    folder.mkdir(parents=True)
    for precision, seconds in (("fp32", 0.04), ("bf16", 0.01)):
        (folder / f"forward_{precision}.json").write_text(json.dumps(
            {"batch": 32, "seconds": {"backbone": {"mean": seconds}}}))
    (folder / "precision.json").write_text(json.dumps(
        {"map_max_abs_diff": 1e-3, "images": 28, "metric_change": {"image_auroc": 0.0, "aupro": -0.001}}))
    (folder / "train.json").write_text(json.dumps(
        {"iterations_per_s": 20.0, "full_category_s": 50.0, "full_iterations": 1000,
         "split_s": {"das": 0.01, "backbone": 0.005, "heads": 0.035}, "environment": {"gpu": "Some GPU"}}))
    pair = {"param_max_abs_diff": 0.0, "seconds_per_run": 4.0}
    (folder / "cuda_determinism.json").write_text(json.dumps(
        {"pairs": {"deterministic": pair, "default": {**pair, "param_max_abs_diff": 0.002}}}))
    text = gpu_costs_table()
    assert text.startswith("bench/results/2026-01-01-some-gpu (Some GPU;")
    assert "1.25 ms/image (batch 32)" in text and "0.31 ms/image (4.0x)" in text
    assert "aupro -0.100" in text and "50 s per category" in text and "2.0e-03" in text
