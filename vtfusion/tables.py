"""Reproduced tables in the paper's layout: HTML for the book, Markdown and CSV for files.

The input is the list of rows that :func:`vtfusion.reproduce.reproduce` (or
:func:`~vtfusion.reproduce.reproduce_cell`, called once per k) returns for one table and one
dataset: one row per (method, k), the mean over categories with its per-category values
under ``per_category``. :func:`layout` arranges them as the paper prints its tables:

* rows: the categories, then their mean (one block per method when a table has several);
* columns: one group per k, with image and pixel AUROC in each (AUPRO on request);
* each cell: ours, mean +- std over shot seeds (%), with the paper's value and the
  difference (ours - paper) beside it. The paper reports means over categories only, so
  the paper's value and the difference appear in the mean rows.

:func:`to_html` renders that as a plain HTML table with inline styles (no CSS file, no
pandas: the page works in JupyterLab, in the static book and in a browser opened on the
file), differences coloured green when ours is higher, red when lower and grey within half
a point. :func:`to_markdown` and :func:`to_csv` give the same content for files;
``vtfusion reproduce`` writes both beside its JSON summary (:func:`write_tables`).
:func:`comparison_chart` draws the mean rows as a compact "ours vs paper" bar chart.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from vtfusion.io import atomic_write_text
from vtfusion.paper_tables import paper_cells

#: Label of the mean row of each block.
MEAN = "mean"
METRIC_LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO"}
#: Column heads under each k in HTML, short so that three k groups fit a prose column.
SHORT_LABELS = {"image_auroc": "image", "pixel_auroc": "pixel", "aupro": "AUPRO"}
#: The paper's Tables I-III report image and pixel AUROC; AUPRO is ours only.
PAPER_LEVEL = {"image_auroc": "image", "pixel_auroc": "pixel"}
TABLE_IDS = {"table1": "I", "table2": "II", "table3": "III"}
#: A difference within this many points is shown grey ("about the same").
NEUTRAL_BAND = 0.5
COLOURS = {"higher": "#1a7f37", "lower": "#cf222e", "same": "#6e7781"}


@dataclass(frozen=True)
class Cell:
    """One cell: ours (mean +- std over seeds, %) and the paper's value, when it has one."""

    mean: float | None
    std: float | None
    paper: float | None = None

    @property
    def difference(self) -> float | None:
        """Ours minus the paper's value, in points; ``None`` without both."""
        return None if self.mean is None or self.paper is None else self.mean - self.paper


@dataclass
class ResultTable:
    """One table of one dataset, laid out (see :func:`layout`)."""

    table: str
    dataset: str
    paper_dataset: str
    profile: str
    seeds: list
    config_hash: str
    methods: list[str]
    method_names: dict[str, str]
    categories: list[str]
    shots: list[int]
    metrics: tuple[str, ...]
    cells: dict[tuple[str, str, int, str], Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row_labels(self, by_category: bool = True) -> list[tuple[str, str]]:
        """``(method, category or MEAN)`` in print order. With one category its row is the mean."""
        shown = self.categories if by_category and len(self.categories) > 1 else []
        return [(m, c) for m in self.methods for c in [*shown, MEAN]]

    @property
    def title(self) -> str:
        names = ", ".join(self.method_names[m] for m in self.methods)
        return (f"Table {TABLE_IDS.get(self.table, self.table)} ({names}) on {self.dataset}: "
                f"{len(self.categories)} categor{'y' if len(self.categories) == 1 else 'ies'}, "
                f"seeds {self.seeds}, profile {self.profile}; paper values: {self.paper_dataset}, "
                f"mean over its categories")

    @property
    def comparable(self) -> bool:
        """Only the paper profile on the paper's own dataset gives numbers to compare."""
        return self.profile == "paper" and self.dataset == self.paper_dataset

    @property
    def warning(self) -> str:
        if self.comparable:
            return ""
        return ("NOT COMPARABLE: ours ran on other data and/or a random backbone; the paper's "
                "values are shown only as the reference the paper profile aims at.")

    def mean_label(self) -> str:
        """``mean``; with a single category its row is the mean and carries its name."""
        return MEAN if len(self.categories) > 1 else self.categories[0]


def _method_names(table: str, keys: Sequence[str]) -> dict[str, str]:
    """Our keys -> the paper's row names (``full`` -> ``ATE+AIE+MPF``, ``blurry`` -> ``Fuzzy``)."""

    try:
        known = {c.method_key: c.method for c in paper_cells(TABLE_IDS.get(table, table))}
    except ValueError:
        known = {}
    return {k: known.get(k, k) for k in keys}


def layout(rows: Sequence[dict], metrics: Sequence[str] = ("image_auroc", "pixel_auroc")) -> ResultTable:
    """Arrange reproduction rows of one table and dataset as categories x k (see the module docstring).

    Args:
        rows: :func:`vtfusion.reproduce.reproduce` rows, any number of k and methods, one
            table, dataset and profile.
        metrics: the metric columns of each k group, among ``image_auroc``, ``pixel_auroc``
            and ``aupro``.

    Returns:
        the :class:`ResultTable`.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows: no rows to lay out; pass what vtfusion.reproduce.reproduce returned")
    unknown = [m for m in metrics if m not in METRIC_LABELS]
    if unknown or not metrics:
        raise ValueError(f"metrics: expected some of {list(METRIC_LABELS)}, got {list(metrics)}")
    first = rows[0]
    for key in ("table", "dataset", "paper_dataset", "profile"):
        values = sorted({str(r[key]) for r in rows})
        if len(values) > 1:
            raise ValueError(f"rows: one table at a time, but they mix {key} {values}")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    shots = sorted({int(r["k"]) for r in rows})
    categories = list(dict.fromkeys(c for r in rows for c in r["categories"]))
    result = ResultTable(table=first["table"], dataset=first["dataset"], paper_dataset=first["paper_dataset"],
                         profile=first["profile"], seeds=list(first["seeds"]),
                         config_hash=str(first.get("config_hash", "")), methods=methods,
                         method_names=_method_names(first["table"], methods), categories=categories,
                         shots=shots, metrics=tuple(metrics))
    seen = set()
    for r in rows:
        key = (r["method"], int(r["k"]))
        if key in seen:
            raise ValueError(f"rows: two rows for method {key[0]!r} and k={key[1]}; pass one run of each")
        seen.add(key)
        for metric in metrics:
            level = PAPER_LEVEL.get(metric)
            paper = r.get(f"paper_{level}_auroc") if level else None
            result.cells[(r["method"], MEAN, key[1], metric)] = Cell(r.get(f"{metric}_mean"), r.get(f"{metric}_std"),
                                                                     paper)
            for category, values in (r.get("per_category") or {}).items():
                result.cells[(r["method"], category, key[1], metric)] = Cell(values.get(f"{metric}_mean"),
                                                                             values.get(f"{metric}_std"))
        result.notes += [why for why in (r.get("null_reasons") or {}).values() if why not in result.notes]
    return result


def _title(table: ResultTable, caption: str | None) -> str:
    """The generated title (what ran, where), after the caller's caption when there is one."""
    return f"{caption}. {table.title}" if caption else table.title


def _ours(cell: Cell | None) -> str:
    if cell is None or cell.mean is None:
        return "n/a"
    return f"{cell.mean:.1f} ± {cell.std or 0.0:.1f}"


def _signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def difference_colour(difference: float) -> str:
    """Green when ours is higher, red when lower, grey within :data:`NEUTRAL_BAND` points."""
    if abs(difference) <= NEUTRAL_BAND:
        return COLOURS["same"]
    return COLOURS["higher"] if difference > 0 else COLOURS["lower"]


# ----------------------------------------------------------------------------- HTML

_TABLE_STYLE = "border-collapse:collapse;font-size:0.85em;margin:0.3em 0;width:auto"
_HEAD_STYLE = "padding:2px 6px;border-bottom:1px solid currentColor;text-align:center"
_LABEL_STYLE = "padding:2px 6px;text-align:left;vertical-align:top"
_CELL_STYLE = "padding:2px 6px;text-align:right;white-space:nowrap;vertical-align:top"


def _html_cell(cell: Cell | None, mean_row: bool, extra_style: str = "") -> str:
    ours = html.escape(_ours(cell))
    if mean_row:
        ours = f"<b>{ours}</b>"
    if cell is None or cell.paper is None:
        beside = "–" if mean_row else ""
    else:
        diff = cell.difference
        coloured = ("" if diff is None else
                    f' <span style="color:{difference_colour(diff)};font-weight:600">{_signed(diff)}</span>')
        beside = f'<span title="the paper\'s value">{cell.paper:.1f}</span>{coloured}'
    small = f'<br><span style="font-size:0.85em">{beside}</span>' if beside else ""
    return f'<td style="{_CELL_STYLE}{extra_style}">{ours}{small}</td>'


def to_html(table: ResultTable, by_category: bool = True, caption: str | None = None) -> str:
    """The table as HTML: a caption, two header rows (k, then metric) and one row per category
    and mean; see the module docstring for the cells and colours."""
    several = len(table.methods) > 1
    n_metrics = len(table.metrics)
    auroc = all(m != "aupro" for m in table.metrics)
    head1 = "".join(f'<th colspan="{n_metrics}" style="{_HEAD_STYLE}">k = {k}{" (AUROC)" if auroc else ""}</th>'
                    for k in table.shots)
    head2 = "".join(f'<th style="{_HEAD_STYLE}">{html.escape(SHORT_LABELS[m])}</th>'
                    for _ in table.shots for m in table.metrics)
    label_heads = (["method"] if several else []) + ["category"]
    label_cells = "".join(f'<th rowspan="2" style="{_HEAD_STYLE};text-align:left">{h}</th>' for h in label_heads)
    body = []
    labels = table.row_labels(by_category)
    for i, (method, category) in enumerate(labels):
        mean_row = category == MEAN
        border = ";border-top:1px solid currentColor" if mean_row and by_category and len(table.categories) > 1 \
            else ""
        start = i == 0 or labels[i - 1][0] != method
        cells = []
        if several:
            span = sum(1 for m, _ in labels if m == method)
            if start:
                cells.append(f'<th rowspan="{span}" style="{_LABEL_STYLE};'
                             f'border-top:1px solid currentColor">{html.escape(table.method_names[method])}</th>')
        name = table.mean_label() if mean_row else category
        weight = "font-weight:600" if mean_row else "font-weight:400"
        top = ";border-top:1px solid currentColor" if several and start else ""
        cells.append(f'<th style="{_LABEL_STYLE};{weight}{border}{top}">{html.escape(name)}</th>')
        cells += [_html_cell(table.cells.get((method, category, k, m)), mean_row, border + top)
                  for k in table.shots for m in table.metrics]
        body.append("<tr>" + "".join(cells) + "</tr>")
    title = html.escape(_title(table, caption))
    warning = f'<br><b>{html.escape(table.warning)}</b>' if table.warning else ""
    legend = ("Each cell: ours, mean ± std over shot seeds (%); under it the paper's value (a mean over "
              f"categories) and ours − paper (green: higher, red: lower, grey: within {NEUTRAL_BAND} points).")
    notes = "".join(f"<br>n/a: {html.escape(n)}" for n in table.notes)
    # The caption sits outside the table so that it wraps at the column's width, not the table's.
    return (f'<div class="vtfusion-table" style="overflow-x:auto;max-width:100%;margin-bottom:1em">'
            f'<div style="font-size:0.9em">{title}{warning}</div>'
            f'<table style="{_TABLE_STYLE}">'
            f'<thead><tr>{label_cells}{head1}</tr><tr>{head2}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>'
            f'<div style="font-size:0.8em">{legend}{notes}</div></div>')


class HTMLTable:
    """What a notebook displays: the HTML table, with Markdown as its plain-text form."""

    def __init__(self, table: ResultTable, by_category: bool = True, caption: str | None = None):
        self.table, self.by_category, self.caption = table, by_category, caption

    def _repr_html_(self) -> str:
        return to_html(self.table, self.by_category, self.caption)

    def __repr__(self) -> str:
        return to_markdown(self.table, self.by_category, self.caption)


def show_table(rows: Sequence[dict], by_category: bool = True, caption: str | None = None,
               metrics: Sequence[str] = ("image_auroc", "pixel_auroc")) -> HTMLTable:
    """Rows of one table and dataset as an HTML table for a notebook (last expression of a cell).

    ``by_category=False`` keeps only the mean rows (the paper's own granularity);
    ``caption`` goes before the generated title (what ran, on which data and profile).
    """
    return HTMLTable(layout(rows, metrics), by_category, caption)


# ----------------------------------------------------------------------------- Markdown and CSV

def _md_cell(cell: Cell | None) -> str:
    text = _ours(cell)
    if cell is not None and cell.paper is not None:
        text += f" (paper {cell.paper:.1f}, {_signed(cell.difference).replace('−', '-')})" \
            if cell.difference is not None else f" (paper {cell.paper:.1f})"
    return text


def to_markdown(table: ResultTable, by_category: bool = True, caption: str | None = None) -> str:
    """The same table as GitHub Markdown: one column per (k, metric); each cell
    ``ours ± std (paper P, +D)``."""
    several = len(table.methods) > 1
    heads = (["method"] if several else []) + ["category"] + [
        f"k={k} {METRIC_LABELS[m]}" for k in table.shots for m in table.metrics]
    lines = [f"**{_title(table, caption)}**", ""]
    if table.warning:
        lines += [f"*{table.warning}*", ""]
    lines += ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * (len(heads) - len(table.shots) * len(
        table.metrics)) + ["---:"] * (len(table.shots) * len(table.metrics))) + "|"]
    for method, category in table.row_labels(by_category):
        name = f"**{table.mean_label()}**" if category == MEAN else category
        cells = ([table.method_names[method]] if several else []) + [name] + [
            _md_cell(table.cells.get((method, category, k, m))) for k in table.shots for m in table.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each cell: ours, mean ± std over shot seeds (%), then the paper's value (a mean over its "
              "categories) and ours - paper."]
    lines += [f"n/a: {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("table", "dataset", "paper_dataset", "profile", "config_hash", "method", "method_name",
              "category", "k", "metric", "ours_mean", "ours_std", "paper", "difference")


def to_csv(table: ResultTable) -> str:
    """Long format, one line per (method, category or ``mean``, k, metric); empty where undefined."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for method, category in [(m, c) for m in table.methods for c in [*table.categories, MEAN]]:
        for k in table.shots:
            for metric in table.metrics:
                cell = table.cells.get((method, category, k, metric)) or Cell(None, None)
                writer.writerow({
                    "table": table.table, "dataset": table.dataset, "paper_dataset": table.paper_dataset,
                    "profile": table.profile, "config_hash": table.config_hash, "method": method,
                    "method_name": table.method_names[method], "category": category, "k": k, "metric": metric,
                    "ours_mean": "" if cell.mean is None else round(cell.mean, 4),
                    "ours_std": "" if cell.std is None else round(cell.std, 4),
                    "paper": "" if cell.paper is None else cell.paper,
                    "difference": "" if cell.difference is None else round(cell.difference, 4)})
    return buf.getvalue()


def write_tables(rows: Sequence[dict], summary_json: str | Path) -> tuple[Path, Path]:
    """``<summary>.md`` and ``<summary>.categories.csv`` beside a summary JSON (atomic).

    The Markdown is :func:`to_markdown` of the categories and their mean; the CSV is
    :func:`to_csv` with every reported metric (image and pixel AUROC, AUPRO).
    """

    summary_json = Path(summary_json)
    stem = summary_json.with_suffix("")
    md = atomic_write_text(stem.with_name(stem.name + ".md"), to_markdown(layout(rows)))
    csv_path = atomic_write_text(stem.with_name(stem.name + ".categories.csv"),
                                 to_csv(layout(rows, metrics=tuple(METRIC_LABELS))))
    return md, csv_path


# ----------------------------------------------------------------------------- chart

def comparison_chart(rows: Sequence[dict], width: float = 7.0):
    """Ours vs the paper, the mean rows of one table: a panel per level (image, pixel AUROC),
    a pair of bars per (method, k), ours with its std over seeds. Returns the figure."""
    import matplotlib.pyplot as plt  # local: matplotlib is slow to import
    import numpy as np

    table = layout(rows)
    groups = [(m, k) for m in table.methods for k in table.shots]
    labels = [(f"{table.method_names[m]}\n" if len(table.methods) > 1 else "") + f"k={k}" for m, k in groups]
    fig, axes = plt.subplots(1, len(table.metrics), figsize=(width, 2.6), squeeze=False, sharey=True)
    x = np.arange(len(groups))
    values = []
    for ax, metric in zip(axes[0], table.metrics):
        cells = [table.cells.get((m, MEAN, k, metric)) or Cell(None, None) for m, k in groups]
        ours = [np.nan if c.mean is None else c.mean for c in cells]
        paper = [np.nan if c.paper is None else c.paper for c in cells]
        values += [v for v in ours + paper if not np.isnan(v)]
        ax.bar(x - 0.2, ours, 0.4, yerr=[c.std or 0.0 for c in cells], capsize=2, color="tab:blue", label="ours")
        ax.bar(x + 0.2, paper, 0.4, color="0.65", label="paper")
        for xi, p in zip(x, paper):
            if np.isnan(p):
                ax.text(xi + 0.2, 0.5, "–", ha="center", va="bottom", transform=ax.get_xaxis_transform())
        ax.set_xticks(x, labels, fontsize=7 if len(table.methods) > 1 else 8)
        ax.set_title(METRIC_LABELS[metric] + " (%)", fontsize=9)
    low = max(0.0, min(values, default=0.0) - 10.0)
    axes[0, 0].set_ylim(low, 100)
    axes[0, 0].set_ylabel(f"% (axis from {low:.0f})", fontsize=8)
    note = "" if table.comparable else " (not comparable: see the table)"
    fig.suptitle(f"Table {TABLE_IDS.get(table.table, table.table)}, {table.dataset}: ours vs paper, "
                 f"mean over categories{note}", fontsize=9, x=0.02, ha="left")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper right", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout()
    return fig
