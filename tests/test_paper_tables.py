"""The paper's Tables I-IV as data: layout, exact values, lookups, and agreement with the paper text."""

from __future__ import annotations

import csv
import json
import re

import pytest

from vtfusion import paper_tables as pt
from vtfusion.paths import PROJECT_ROOT

PAPER_TXT = PROJECT_ROOT.parent / "shared" / "paper" / "vtfusion_paper.txt"
CELL_RE = re.compile(r"(<u>)?(\d+\.\d|-)(</u>)?")
DATASET_NAMES = {"MVTec AD": "mvtec", "VisA": "visa", "APPD": "appd"}


def _csv_rows() -> list[dict]:
    with (pt.paper_dir() / "tables.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("table,methods,columns", [("I", 8, 12), ("II", 3, 10), ("III", 5, 4), ("IV", 4, 4)])
def test_each_table_is_a_full_grid_of_the_printed_layout(table, methods, columns):
    cells = pt.paper_cells(table)
    info = pt.table_info(table)
    assert len(info["methods"]) == methods and len(info["columns"]) == columns
    assert len(cells) == methods * columns  # missing ("-") cells included
    # Every (row, column) of the description exists exactly once, in print order.
    expected = [(m["key"], c["dataset"], c["level"], c["k"]) for m in info["methods"] for c in info["columns"]]
    assert [(c.method_key, c.dataset, c.level, c.k) for c in cells] == expected
    assert {c.method for c in cells} == {m["name"] for m in info["methods"]}
    assert {c.metric for c in cells} == {info["metric"]}


def test_missing_cells_are_none_not_zero():
    cells = pt.load_paper_cells()
    assert all(c.value is None or 0 < c.value <= 100 for c in cells)
    missing = [c for c in cells if c.value is None]
    assert missing and all(c.table == "I" for c in missing)  # only Table I prints "-"
    assert not any(c.reported for c in missing)


def test_csv_keeps_values_as_printed():
    rows = _csv_rows()
    assert list(rows[0]) == ["table", "method", "method_key", "dataset", "level", "metric", "k", "value",
                             "mark", "notes"]
    for row in rows:
        assert row["value"] == "" or re.fullmatch(r"\d+\.\d", row["value"]), row
        if row["value"]:
            assert f"{float(row['value']):.1f}" == row["value"]  # exact one-decimal text, no float noise
    cells = pt.load_paper_cells()
    assert [c.value for c in cells] == [float(r["value"]) if r["value"] else None for r in rows]


def test_spot_values_typed_from_the_paper():
    assert pt.paper_value("I", "vtfusion", "mvtec", "image", k=2) == 96.8
    assert pt.paper_value("I", "patchcore", "visa", "pixel", k=8) == 96.8
    assert pt.paper_value("I", "regad", "visa", "pixel", k=2) is None
    assert pt.paper_value("I", "winclip_plus", "mvtec", "pixel", k=8) is None
    assert pt.paper_value("I", "rd4ad", "mvtec", "pixel", k=8) == 73.0
    assert pt.paper_value("II", "ate", "mvtec", "pixel", k=2) == 91.9
    assert pt.paper_value("II", "full", "visa", "pixel", k=8) == 96.3
    assert pt.paper_value("III", "blurry", "visa", "pixel", k=2) == 96.5
    assert pt.paper_value("III", "noise", "mvtec", "pixel") == 90.4  # Table III has only k=2
    assert pt.paper_value("IV", "vtfusion", "appd", "pixel", k=10) == 93.5
    assert pt.paper_value("IV", "cfa", "appd", "pixel", k=10, metric="PRO") == 84.3


def test_underlines_are_recorded():
    underlined = {(c.method_key, c.dataset, c.level, c.k) for c in pt.paper_cells("I") if c.mark == "underline"}
    assert ("patchcore", "visa", "pixel", 8) in underlined
    assert ("vtfusion", "visa", "pixel", 2) in underlined
    assert len(underlined) == 6
    assert all(c.mark == "" for c in pt.load_paper_cells() if c.table != "I")


def test_meaning_maps_to_our_names():
    from vtfusion.das import canonical_kind
    from vtfusion.model.network import VARIANTS

    info2 = pt.table_info("II")
    assert [m["key"] for m in info2["methods"]] == list(VARIANTS)
    assert [sum(m["modules"].values()) for m in info2["methods"]] == [1, 2, 3]
    for m in pt.table_info("III")["methods"]:
        if m["key"] != "all":
            assert canonical_kind(m["name"]) == m["key"]  # Fuzzy -> blurry
        assert all(canonical_kind(t) == t for t in m["das_types"])
    assert {c.k for c in pt.paper_cells("III")} == {2}
    assert {(c.dataset, c.level, c.metric) for c in pt.paper_cells("IV")} == {("appd", "pixel", "pro")}


def test_notes_claims_hold():
    """Cells whose notes claim equality with / difference from Table I VTFusion really do."""
    for cell in pt.load_paper_cells():
        ref_k = 2 if cell.table == "III" else cell.k
        if "equals Table I VTFusion" in cell.notes:
            assert cell.value == pt.paper_value("I", "vtfusion", cell.dataset, cell.level, k=ref_k), cell
        if "differs from Table I VTFusion" in cell.notes:
            table1 = [c.value for c in pt.paper_cells("I", method_key="vtfusion", dataset=cell.dataset,
                                                      level=cell.level)]
            assert cell.value not in table1
    visa_pixel_ii = pt.paper_cells("II", dataset="visa", level="pixel")
    assert len(visa_pixel_ii) == 3 and all("labelled '8'" in c.notes for c in visa_pixel_ii)
    # The ambiguity is also documented where people read it.
    assert any("VisA pixel-level" in n for n in pt.table_info("II")["notes"])
    assert "labelled" in (pt.paper_dir() / "README.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- lookups


@pytest.mark.parametrize("table", ["I", 1, "1", "table1", "Table I", "TABLE_1", "i"])
def test_table_aliases(table):
    assert pt.normalize_table(table) == "I"
    assert pt.table_caption(table).startswith("COMPARISON OF K-SHOT IMAGE-LEVEL")


@pytest.mark.parametrize("table,method,dataset,level,k,expected", [
    ("I", "WinCLIP+", "MVTec AD", "image-level", 2, 94.4),
    ("table1", "winclip_plus", "mvtec_ad", "Image", 4, 95.2),
    (2, "ATE+AIE", "VisA", "pixel", 8, 94.8),
    ("II", "vtfusion", "mvtec", "image", 8, 97.3),
    ("table3", "Fuzzy", "visa", "image", 2, 85.3),
    ("III", "combined", "visa", "image", None, 86.2),
    ("4", "PatchCore", "APPD", "pixel-level", 2, 56.2),
])
def test_lookup_aliases(table, method, dataset, level, k, expected):
    assert pt.paper_value(table, method, dataset, level, k=k) == expected


def test_paper_cells_filters():
    assert len(pt.paper_cells()) == 96 + 30 + 20 + 16
    assert len(pt.paper_cells("I", method="WinCLIP+")) == 12
    assert len(pt.paper_cells(dataset="MVTec AD", k=2)) == 8 * 2 + 3 * 2 + 5 * 2
    assert [c.table for c in pt.paper_cells(method_key="vtfusion", k=10)] == ["IV"]
    with pytest.raises(TypeError, match="valid filters"):
        pt.paper_cells("I", shots=2)


def test_missing_cell_raises_helpful_keyerror():
    with pytest.raises(KeyError, match=r"winclip_plus.*WinCLIP\+"):
        pt.paper_value("I", "winclip", "mvtec", "image", k=2)
    with pytest.raises(KeyError, match="valid dataset values there: 'mvtec', 'visa'"):
        pt.paper_value("I", "vtfusion", "appd", "image", k=2)
    with pytest.raises(KeyError, match="valid k values there: 2, 4, 8"):
        pt.paper_value("I", "vtfusion", "mvtec", "image", k=16)
    with pytest.raises(KeyError, match="only one VisA pixel-level column"):
        pt.paper_value("II", "ate", "visa", "pixel", k=2)
    with pytest.raises(KeyError, match="valid level values there: 'pixel'"):
        pt.paper_value("IV", "vtfusion", "appd", "image", k=2)
    with pytest.raises(ValueError, match="pass k= one of 2, 4, 8"):
        pt.paper_value("I", "vtfusion", "mvtec", "image")
    with pytest.raises(ValueError, match="choose one of I, II, III, IV"):
        pt.paper_value("V", "vtfusion", "mvtec", "image", k=2)
    try:
        pt.paper_value("I", "vtfusion", "mvtec", "image", k=16)
    except KeyError as err:
        assert not str(err).startswith("'")  # prints as a sentence, not a quoted repr


def test_tables_are_package_data_and_a_missing_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("VTFUSION_DATA_DIR", str(tmp_path))  # user data only: the tables ship in the package
    assert pt.paper_value("I", "vtfusion", "mvtec", "image", k=2) == 96.8
    monkeypatch.setattr(pt, "paper_tables_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="tables.csv"):
        pt.load_paper_cells()
    with pytest.raises(FileNotFoundError, match="tables.json"):
        pt.table_caption("I")


def test_json_is_plain_and_complete():
    doc = json.loads((pt.paper_dir() / "tables.json").read_text(encoding="utf-8"))
    assert sorted(doc["tables"]) == ["I", "II", "III", "IV"]
    for tid, info in doc["tables"].items():
        assert info["number"] == ["I", "II", "III", "IV"].index(tid) + 1
        for field in ("caption", "section", "metric", "unit", "rows", "columns", "methods", "notes"):
            assert info[field], (tid, field)


# --------------------------------------------------------------------------- against the paper text


def _forward_fill(labels: list[str]) -> list[str]:
    out, last = [], ""
    for label in labels:
        last = label or last
        out.append(last)
    return out


def _parse_paper_tables(text: str) -> dict[str, dict]:
    """Tables I-IV straight from the text copy: caption, column meaning, and printed rows."""
    lines = text.splitlines()
    tables = {}
    for i, line in enumerate(lines):
        m = re.fullmatch(r"TABLE (I|II|III|IV)", line.strip())
        if not m:
            continue
        j, caption = i + 1, []
        while "\t" not in lines[j]:
            if lines[j].strip():
                caption.append(lines[j].strip())
            j += 1
        block = []
        while j < len(lines) and "\t" in lines[j]:
            block.append(lines[j].split("\t"))
            j += 1
        caption_text = " ".join(caption).replace("**", "")
        datasets = levels = ks = None
        rows, flag_names = [], None
        for fields in block:
            if fields[:3] == ["ATE", "AIE", "MPF"]:
                flag_names, fields = fields[:3], ["", *fields[3:]]
            flags = fields[:3] if flag_names and all(f in ("✓", "") for f in fields[:3]) else None
            values = fields[3:] if flags else fields[1:]
            if values and all(CELL_RE.fullmatch(v) for v in values):
                name = "+".join(n for n, f in zip(flag_names, flags) if f) if flags else fields[0]
                rows.append((name, values))
            elif any(f in DATASET_NAMES for f in fields):
                datasets = [DATASET_NAMES[d] for d in _forward_fill(fields[1:])]
            elif any("Image" in f for f in fields):
                levels = [f.split("-")[0].lower() for f in _forward_fill(fields[1:])]
            elif labels := [int(f.removesuffix("-shot")) for f in fields if re.fullmatch(r"\d+(-shot)?", f)]:
                ks = labels
        ncols = len(rows[0][1])
        if datasets is None:  # Table IV: one dataset, named in the caption
            datasets = [DATASET_NAMES[d] for d in DATASET_NAMES if f" {d} " in f" {caption_text} "] * ncols
        if ks is None:  # Table III: k in the caption
            ks = [int(re.search(r"k = (\d+)", caption_text).group(1))] * ncols
        ks = (ks * ncols)[:ncols]  # Table I prints "2-shot 4-shot 8-shot" once for all four groups
        metric = "pro" if "PRO (%)" in caption_text else "auroc" if "AUROC" in caption_text else None
        tables[m.group(1)] = {"caption": caption_text, "rows": rows, "datasets": datasets[:ncols],
                              "levels": (levels or ["pixel"] * ncols)[:ncols], "ks": ks, "metric": metric}
    return tables


@pytest.fixture(scope="module")
def paper_text_tables() -> dict[str, dict]:
    if not PAPER_TXT.is_file():
        pytest.skip(f"paper text not present at {PAPER_TXT} (it ships beside the repository as ../shared)")
    return _parse_paper_tables(PAPER_TXT.read_text(encoding="utf-8"))


def test_csv_agrees_with_every_number_in_the_paper_text(paper_text_tables):
    assert sorted(paper_text_tables) == ["I", "II", "III", "IV"]
    rows = _csv_rows()
    for tid, parsed in paper_text_tables.items():
        ours = {(r["method"], r["dataset"], r["level"], int(r["k"])): r for r in rows if r["table"] == tid}
        n_printed = 0
        for name, values in parsed["rows"]:
            for value, dataset, level, k in zip(values, parsed["datasets"], parsed["levels"], parsed["ks"]):
                cell = ours[(name, dataset, level, k)]
                m = CELL_RE.fullmatch(value)
                assert cell["value"] == ("" if m.group(2) == "-" else m.group(2)), (tid, name, dataset, level, k)
                assert cell["mark"] == ("underline" if m.group(1) else ""), (tid, name, dataset, level, k)
                if parsed["metric"]:
                    assert cell["metric"] == parsed["metric"]
                n_printed += 1
        assert n_printed == len(ours), f"Table {tid}: {len(ours)} cells in the CSV, {n_printed} printed"
        assert pt.table_caption(tid) == parsed["caption"]
