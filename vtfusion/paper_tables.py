"""The paper's Tables I-IV as data: look up any printed cell by meaning.

The cells live in ``vtfusion/resources/paper/tables.csv`` (long format, one row per printed
cell, the text kept exactly as printed) and each table's meaning in ``tables.json`` beside it
(caption, metric, row meaning, columns in print order, notes on the paper's oddities). They
are package data, read through :mod:`importlib.resources`, so an installed package has them.

* Table I: k-shot comparison with other methods, MVTec AD and VisA, image/pixel AUROC (%).
* Table II: module ablation; ``method_key`` is our ``ModelConfig.variant``
  (``ate``, ``ate_aie``, ``full``).
* Table III: DAS ablation at k=2; ``method_key`` is our DAS type name
  (``misplaced``, ``blurry`` = the paper's *Fuzzy*, ``crack``, ``noise``, ``all``).
* Table IV: APPD, PRO (%), k = 2, 4, 8, 10.

A ``-`` in the paper (not reported) is stored as a missing value, ``None`` here, never 0::

    >>> paper_value("I", "vtfusion", "mvtec", "image", k=2)
    96.8
    >>> paper_value("table1", "RegAD", "VisA", "pixel", k=2) is None
    True

Table ids accept ``"I"``, ``1``, ``"1"``, ``"table1"``, ``"Table I"``; methods accept the
paper's name or our key (``"WinCLIP+"`` or ``"winclip_plus"``, ``"Fuzzy"`` or ``"blurry"``);
datasets accept ``"MVTec AD"``/``"mvtec"``, ``"VisA"``; levels ``"image-level"``/``"image"``.
"""

from __future__ import annotations

import csv
import functools
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vtfusion.paths import paper_tables_dir

__all__ = [
    "PaperCell", "PaperCellNotFound", "finegrainedad_reported", "load_paper_cells", "paper_cells", "paper_value",
    "table_caption", "table_info", "normalize_table", "paper_dir",
]

TABLE_IDS = ("I", "II", "III", "IV")
_ROMAN = {"1": "I", "2": "II", "3": "III", "4": "IV", "i": "I", "ii": "II", "iii": "III", "iv": "IV"}
_DATASET_ALIASES = {"mvtec": "mvtec", "mvtecad": "mvtec", "visa": "visa", "appd": "appd",
                    "automotiveplasticparts": "appd", "automotiveplasticpartsdataset": "appd"}
_LEVEL_ALIASES = {"image": "image", "imagelevel": "image", "img": "image", "pixel": "pixel",
                  "pixellevel": "pixel", "px": "pixel"}
_METRIC_ALIASES = {"auroc": "auroc", "auc": "auroc", "rocauc": "auroc", "pro": "pro", "aupro": "pro"}
# Names for a row beyond its paper name and our key: Table II's full row *is* VTFusion, and
# vtfusion.das calls the all-types setting "combined"/"all".
_EXTRA_METHOD_ALIASES = {"II": {"vtfusion": "full"}, "III": {"combined": "all", "blur": "blurry"}}


@dataclass(frozen=True)
class PaperCell:
    """One printed cell of a paper table.

    Attributes:
        table: ``"I"`` .. ``"IV"``.
        method: the row as the paper names it (``"WinCLIP+"``, ``"ATE+AIE"``, ``"Fuzzy"``).
        method_key: our normalised key (``"winclip_plus"``, ``"ate_aie"``, ``"blurry"``).
        dataset: ``"mvtec"``, ``"visa"`` or ``"appd"``.
        level: ``"image"`` or ``"pixel"``.
        metric: ``"auroc"`` or ``"pro"``; values are in percent.
        k: number of normal shots.
        value: the printed number, or None where the paper prints ``-`` (not reported).
        notes: oddities of this cell (empty for most).
        mark: ``"underline"`` where the paper underlines the cell (second best in Table I).
    """

    table: str
    method: str
    method_key: str
    dataset: str
    level: str
    metric: str
    k: int | None
    value: float | None
    notes: str
    mark: str = ""

    @property
    def reported(self) -> bool:
        """False where the paper prints ``-``."""
        return self.value is not None


class PaperCellNotFound(KeyError):
    """No such cell in the paper's tables (a KeyError whose message reads well when printed)."""

    def __str__(self) -> str:  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""


def paper_dir() -> Path:
    """``vtfusion/resources/paper``: package data, independent of ``$VTFUSION_DATA_DIR``."""
    return paper_tables_dir()


def _squash(text: Any) -> str:
    """Lower case without spaces, dashes, underscores, dots: ``"MVTec AD"`` -> ``"mvtecad"``."""
    return re.sub(r"[\s_\-.()%]", "", str(text).lower())


def normalize_table(table: Any) -> str:
    """``"I"``/``1``/``"1"``/``"table1"``/``"Table I"`` -> ``"I"``; ValueError naming the valid ids."""
    name = _squash(table)
    name = name[len("table"):] if name.startswith("table") else name
    roman = _ROMAN.get(name)
    if roman is None:
        raise ValueError(f"unknown paper table {table!r}; choose one of {', '.join(TABLE_IDS)} "
                         f"(also accepted: 1-4, 'table1'..'table4', 'Table I'..'Table IV')")
    return roman


def _parse_value(text: str, where: str) -> float | None:
    text = text.strip()
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: value {text!r} is not a number (leave it empty for '-')") from None


@functools.lru_cache(maxsize=4)
def _load_cells(csv_path: str) -> tuple[PaperCell, ...]:
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"paper tables not found at {path}; they ship inside the vtfusion package "
                                f"(vtfusion/resources/paper): reinstall vtfusion")
    expected = [f.name for f in fields(PaperCell)]
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(expected) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}; expected {expected}")
        cells = []
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            cells.append(PaperCell(
                table=normalize_table(row["table"]), method=row["method"], method_key=row["method_key"],
                dataset=row["dataset"], level=row["level"], metric=row["metric"],
                k=int(row["k"]) if row["k"].strip() else None, value=_parse_value(row["value"], where),
                notes=row["notes"], mark=row["mark"]))
    return tuple(cells)


def load_paper_cells() -> list[PaperCell]:
    """Every printed cell of Tables I-IV, in print order (table, row, column). Cached."""
    return list(_load_cells(str(paper_dir() / "tables.csv")))


@functools.lru_cache(maxsize=4)
def _load_info(json_path: str) -> dict:
    path = Path(json_path)
    if not path.is_file():
        raise FileNotFoundError(f"paper table descriptions not found at {path}; they ship inside the "
                                f"vtfusion package (vtfusion/resources/paper): reinstall vtfusion")
    return json.loads(path.read_text(encoding="utf-8"))


def table_info(table: Any) -> dict:
    """A table's description from ``tables.json``: caption, metric, unit, section, rows, columns, methods, notes."""
    info = _load_info(str(paper_dir() / "tables.json"))
    return info["tables"][normalize_table(table)]


def table_caption(table: Any) -> str:
    """The table's caption as printed in the paper."""
    return table_info(table)["caption"]


def _options(cells: list[PaperCell], name: str) -> list:
    seen: list = []
    for cell in cells:
        value = getattr(cell, name)
        if value not in seen:
            seen.append(value)
    return seen


def _normalize_method(table: str, method: Any, cells: list[PaperCell]) -> str:
    aliases = {}
    for cell in cells:
        aliases[_squash(cell.method_key)] = cell.method_key
        aliases[_squash(cell.method)] = cell.method_key
    for alias, key in _EXTRA_METHOD_ALIASES.get(table, {}).items():
        aliases.setdefault(alias, key)
    key = aliases.get(_squash(method))
    if key is None:
        rows = ", ".join(f"{k!r} ({m})" for k, m in zip(_options(cells, "method_key"), _options(cells, "method")))
        raise PaperCellNotFound(f"Table {table} has no method {method!r}; its rows are {rows}")
    return key


def _normalize(name: str, value: Any, aliases: dict[str, str]) -> Any:
    if name == "k":
        return None if value is None else int(value)
    if name in ("dataset", "level", "metric"):
        return aliases.get(_squash(value), _squash(value))
    return value


_FIELD_ALIASES = {"dataset": _DATASET_ALIASES, "level": _LEVEL_ALIASES, "metric": _METRIC_ALIASES}


def paper_cells(table: Any = None, **filters: Any) -> list[PaperCell]:
    """The cells of ``table`` (all tables when None) whose fields equal ``filters``.

    Filters are PaperCell field names (``method_key=``, ``dataset=``, ``level=``, ``k=``,
    ``metric=``, ...) and accept the same aliases as :func:`paper_value`; ``method=`` is
    treated like ``method_key=`` (paper name or key). An unknown filter name raises TypeError.
    """
    cells = load_paper_cells()
    valid = [f.name for f in fields(PaperCell)]
    unknown = sorted(set(filters) - set(valid))
    if unknown:
        raise TypeError(f"paper_cells() got unknown filter(s) {unknown}; valid filters: {', '.join(valid)}")
    if table is not None:
        tid = normalize_table(table)
        cells = [c for c in cells if c.table == tid]
    if "method" in filters:
        filters["method_key"] = filters.pop("method")
    for name, wanted in filters.items():
        if name == "method_key":
            keys = {}
            for tid in _options(cells, "table"):
                try:
                    keys[tid] = _normalize_method(tid, wanted, [c for c in cells if c.table == tid])
                except PaperCellNotFound:
                    pass
            cells = [c for c in cells if keys.get(c.table) == c.method_key]
        else:
            wanted = _normalize(name, wanted, _FIELD_ALIASES.get(name, {}))
            cells = [c for c in cells if getattr(c, name) == wanted]
    return cells


def paper_value(table: Any, method_key: str, dataset: str, level: str, k: int | None = None,
                metric: str | None = None) -> float | None:
    """The paper's value of one cell, in percent; None where the paper prints ``-``.

    ``k`` may be left out only where the table has a single shot count for that cell
    (Table III, k=2); ``metric`` only narrows the lookup (each table has one metric).

    Raises:
        PaperCellNotFound (a KeyError): the table has no such cell at all; the message lists
            the valid methods / datasets / levels / shots / metrics at the point of failure.
        ValueError: the arguments match several cells (say which ``k``).
    """
    tid = normalize_table(table)
    cells = [c for c in load_paper_cells() if c.table == tid]
    key = _normalize_method(tid, method_key, cells)
    cells = [c for c in cells if c.method_key == key]
    where = f"Table {tid} row {key!r}"
    for name, wanted in (("dataset", dataset), ("level", level), ("metric", metric), ("k", k)):
        if wanted is None:
            continue
        norm = _normalize(name, wanted, _FIELD_ALIASES.get(name, {}))
        matching = [c for c in cells if getattr(c, name) == norm]
        if not matching:
            options = ", ".join(repr(o) for o in _options(cells, name))
            hint = ""
            if tid == "II" and name == "k" and all((c.dataset, c.level) == ("visa", "pixel") for c in cells):
                hint = " (Table II prints only one VisA pixel-level column, labelled 8; see its notes)"
            raise PaperCellNotFound(f"{where} has no {name}={wanted!r}; valid {name} values there: {options}{hint}")
        cells = matching
        where += f" {name}={norm!r}"
    if len(cells) > 1:
        shots = ", ".join(str(o) for o in _options(cells, "k"))
        raise ValueError(f"{where} matches {len(cells)} cells; pass k= one of {shots}")
    return cells[0].value


# ---------------------------------------------------------------------------------------
# Another paper's own numbers: FineGrainedAD (vtfusion/resources/finegrainedad)
# ---------------------------------------------------------------------------------------
def finegrainedad_reported(dataset: str, level: str, k: int | None = None) -> float:
    """A value the **FineGrainedAD paper reports for itself** (not a VTFusion-paper cell).

    ``dataset``: ``mvtec`` or ``visa`` (aliases as :func:`paper_value`); ``level``:
    ``image`` or ``pixel`` (AUROC in %, ``k`` in 1, 2, 4), or ``inference`` (ms per image,
    no ``k``)::

        >>> finegrainedad_reported("mvtec", "pixel", k=2)
        96.08
        >>> finegrainedad_reported("any", "inference")
        23.3
    """
    path = paper_dir().parent / "finegrainedad" / "reported.csv"
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ds = dataset if dataset == "any" else _normalize("dataset", dataset, _DATASET_ALIASES)
    lv = level if level == "inference" else _normalize("level", level, _LEVEL_ALIASES)
    for row in rows:
        if row["dataset"] == ds and row["level"] == lv and (row["k"] == "" or int(row["k"]) == k):
            return float(row["value"])
    raise PaperCellNotFound(f"{path.name} has no FineGrainedAD value for dataset={dataset!r} level={level!r} k={k!r}; "
                            f"it has mvtec/visa x image/pixel x k=1,2,4 and the inference time")
