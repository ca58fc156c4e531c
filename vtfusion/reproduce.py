"""Reproducing the paper's tables cell by cell: ``vtfusion reproduce table1|table2|table3``.

Each table is a grid of (method, k) rows; each row is the mean over categories, then the
mean +- standard deviation (population, ddof=0) over shot seeds, of every metric, and under
``per_category`` each category's own mean +- std over seeds (:mod:`vtfusion.tables` lays
them out as the paper's tables, in HTML, Markdown and CSV). Every
(dataset, category, k, seed, method) cell is an evaluation run of :mod:`vtfusion.evaluate`
with its own result file, so an interrupted reproduction resumes where it stopped.

* ``table1``: VTFusion, k in the given shots (paper: 2, 4, 8), and any other registered
  method (``methods``, ``--methods vtfusion patch_knn zero_shot``; :mod:`vtfusion.methods`)
  as rows on the same shot lists, tokens and metrics. A method without shots is one row, ``k = 0``.
* ``table2``: the module ablation, ``ModelConfig.variant`` in ``ate``, ``ate_aie``, ``full``.
* ``table3``: the DAS ablation at k=2, one synthetic type at a time vs all types.

The paper's value of each row is printed beside ours (``vtfusion/resources/paper``). In the quick
profile the runs use the toy data and a random tiny backbone: the paper's column is then
only a reference point, never a comparable number, and the printed table says so.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from vtfusion import paths
from vtfusion.backbone import build_backbone
from vtfusion.cache import FeatureCache
from vtfusion.config import ExperimentConfig
from vtfusion.data.categories import categories as dataset_categories
from vtfusion.data.registry import storage_name
from vtfusion.evaluate import cell_result_file, read_result, run_method
from vtfusion.io import file_lock
from vtfusion.methods import get_method
from vtfusion.paper_tables import paper_value
from vtfusion.results import summary_key
from vtfusion.results import write_summary as write_summary_files
from vtfusion.viz import format_table

TABLES = ("table1", "table2", "table3")
TABLE_IDS = {"table1": "I", "table2": "II", "table3": "III"}
DAS_ROWS = ("misplaced", "blurry", "crack", "noise", "all")
REPORTED = ("image_auroc", "pixel_auroc", "aupro")


@dataclass(frozen=True)
class Method:
    """One row family of a table: its name, the config that runs it and the registered method.

    Attributes:
        key: the row's name (a folder of its cells is ``<table>-<key>``).
        config: the experiment config of its cells.
        method: the registered method that runs it (:func:`vtfusion.methods.get_method`).
        paper_key: its row in ``vtfusion/resources/paper``, or None where the paper has none.
    """

    key: str
    config: ExperimentConfig
    method: str = "vtfusion"
    paper_key: str | None = None


def table_methods(table: str, cfg: ExperimentConfig, methods: tuple[str, ...] | None = None) -> list[Method]:
    """The rows a table compares: configs of VTFusion (Tables II, III) or registered methods (Table I).

    ``methods``: registered method names for ``table1`` (default: VTFusion alone).
    """
    if methods and table != "table1" and tuple(methods) != ("vtfusion",):
        raise ValueError(f"other methods are rows of table1 only; {table} compares configs of VTFusion")
    if table == "table1":
        return [Method(name, cfg, name, get_method(name).paper_key) for name in dict.fromkeys(methods or ("vtfusion",))]
    if table == "table2":
        return [Method(v, cfg.replace(model=dataclasses.replace(cfg.model, variant=v)), paper_key=v)
                for v in ("ate", "ate_aie", "full")]
    if table == "table3":
        return [Method(row, cfg.replace(das=cfg.das if row == "all" else cfg.das.only(row)), paper_key=row)
                for row in DAS_ROWS]
    raise ValueError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")


def default_shots(table: str) -> tuple[int, ...]:
    return (2,) if table == "table3" else (2, 4, 8)


def paper_reference(table: str, method: str | None, dataset: str, level: str, k: int) -> float | None:
    """The paper's value for a row, or None where the paper reports none (or has no such row)."""
    if method is None:
        return None
    try:
        return paper_value(TABLE_IDS[table], method, dataset, level, k=k)
    except KeyError:
        return None


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def _defined(value) -> bool:
    """A metric value that can be averaged (an undefined one is None on disk, NaN fresh)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class Cell:
    """One (row family, k, seed, category) run of a table: one result file."""

    method: Method
    k: int
    seed: int
    category: str

    def label(self) -> str:
        """The cell as a person names it: ``vtfusion k=2 seed=0 bottle``."""
        return f"{self.method.key} k={self.k} seed={self.seed} {self.category}"


@dataclass(frozen=True)
class Plan:
    """Every cell of a table on one dataset, and where they read and write (picklable: a
    launcher sends it to its worker processes).

    Attributes:
        rows: the row families (:func:`table_methods`); ``grid[row key]`` their (k, seed) pairs.
        cells: every cell, grouped by category (a worker running them in order reuses the
            category's decoded images and test tokens).
    """

    table: str
    cfg: ExperimentConfig
    dataset: str
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    categories: tuple[str, ...]
    paper_dataset: str
    rows: tuple[Method, ...]
    grid: dict[str, list[tuple[int, int]]]
    cells: tuple[Cell, ...]
    results_root: str | Path | None = None
    runs_root: str | Path | None = None
    data_root: str | Path | None = None


def plan(table: str, cfg: ExperimentConfig, dataset: str, shots: tuple[int, ...] | None = None,
         seeds: tuple[int, ...] | None = None, categories: tuple[str, ...] | None = None,
         results_root: str | Path | None = None, runs_root: str | Path | None = None,
         data_root: str | Path | None = None, paper_dataset: str | None = None,
         methods: tuple[str, ...] | None = None) -> Plan:
    """The cells of ``table`` (arguments as :func:`reproduce`), without running any."""
    shots = tuple(shots or default_shots(table))
    seeds = tuple(seeds or cfg.data.seeds)
    data_root = cfg.data.root_for(dataset, data_root)
    cats = tuple(categories or cfg.data.categories or dataset_categories(dataset))
    paper_dataset = paper_dataset or (dataset if dataset in ("mvtec", "visa") else "mvtec")
    rows_of = tuple(table_methods(table, cfg, methods))
    grid = {m.key: _grid(m, shots, seeds) for m in rows_of}
    cells = tuple(Cell(m, k, s, c) for c in cats for m in rows_of for k, s in grid[m.key])
    return Plan(table, cfg, dataset, shots, seeds, cats, paper_dataset, rows_of, grid, cells,
                results_root, runs_root, data_root)


def run_plan_cell(p: Plan, cell: Cell, backbone=None, cache=None) -> dict:
    """Run (or reuse) one cell of a plan: :func:`vtfusion.evaluate.run_method` of its row.

    The cell runs under a lock beside its result file, so two processes given the same cell
    (two launches of one table, a resubmission while a job still runs) never run it
    together: the second waits, then reads the first one's result.
    """
    path, _ = cell_file(p, cell, backbone)
    with file_lock(path.with_name(f".{path.name}.lock")):
        return run_method(cell.method.method, cell.method.config, p.dataset, cell.category, cell.k, cell.seed,
                          folder=f"{p.table}-{cell.method.key}", results_root=p.results_root,
                          runs_root=p.runs_root, data_root=p.data_root, backbone=backbone, progress=False,
                          cache=cache)


def cell_file(p: Plan, cell: Cell, backbone=None) -> tuple[Path, str]:
    """``(result file, result key)`` of a cell (the file need not exist yet)."""
    return cell_result_file(cell.method.method, cell.method.config, p.dataset, cell.category, cell.k, cell.seed,
                            folder=f"{p.table}-{cell.method.key}", results_root=p.results_root,
                            data_root=p.data_root, backbone=backbone)


def finished_cell(p: Plan, cell: Cell, backbone=None) -> dict | None:
    """The result of a finished cell as :func:`run_plan_cell` returns it (``skipped``), else None."""
    path, key = cell_file(p, cell, backbone)
    previous = read_result(path)
    if previous is None or previous.get("config_hash") != key:
        return None
    return {**previous, "skipped": True, "result_file": str(path)}


def run_sequential(p: Plan, progress: bool = True, cache=None, backbone=None) -> dict[Cell, dict]:
    """Run every cell of ``p`` in this process, one after another; their results by cell.

    All cells share one backbone and one :class:`~vtfusion.cache.FeatureCache` (``None``:
    ``FeatureCache.from_env()``).
    """
    backbone = build_backbone(p.cfg.backbone, seed=0) if backbone is None else backbone
    cache = FeatureCache.from_env() if cache is None else cache
    bar = _bar(len(p.cells), progress, f"{p.table} {p.dataset}")
    results = {}
    for cell in p.cells:
        results[cell] = result = run_plan_cell(p, cell, backbone, cache)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(cell.label() + (" (done before)" if result["skipped"] else ""))
    if bar is not None:
        bar.close()
    return results


def reproduce(table: str, cfg: ExperimentConfig, dataset: str, shots: tuple[int, ...] | None = None,
              seeds: tuple[int, ...] | None = None, categories: tuple[str, ...] | None = None,
              results_root: str | Path | None = None, runs_root: str | Path | None = None,
              data_root: str | Path | None = None, paper_dataset: str | None = None,
              progress: bool = True, cache=None, methods: tuple[str, ...] | None = None) -> list[dict]:
    """Run (or reuse) every cell of ``table`` and return one summary row per (method, k).

    :func:`plan` -> :func:`run_sequential` -> :func:`summarise`. All cells share one backbone
    and one :class:`~vtfusion.cache.FeatureCache` (``None``: ``FeatureCache.from_env()``), so
    a category's test images are decoded and its test tokens computed once for every k,
    seed and method of the table. ``methods``: the registered methods that are rows of
    ``table1`` (default: VTFusion); a method without shots runs once per category and
    gives one row, ``k = 0``. :mod:`vtfusion.launch` runs the same plan over several
    devices or a Slurm cluster.
    """
    p = plan(table, cfg, dataset, shots, seeds, categories, results_root, runs_root, data_root,
             paper_dataset, methods)
    return summarise(p, run_sequential(p, progress, cache))


def summarise(p: Plan, results: dict[Cell, dict]) -> list[dict]:
    """One summary row per (method, k) from the results of every cell of ``p``.

    The rows depend only on the cells' results (not on the order or the process that ran
    them), so a launcher's summary equals a sequential run's.
    """
    per_cell: dict[tuple[str, int, int], list[dict]] = {}
    not_measured: dict[tuple[str, int, str], str] = {}
    files: dict[tuple[str, int], list[str]] = {}
    # The plan's row order (method, k, seed, category) fixes the order of every list below.
    for cell in sorted(p.cells, key=lambda c: (p.rows.index(c.method), p.grid[c.method.key].index((c.k, c.seed)),
                                               p.categories.index(c.category))):
        result = results[cell]
        per_cell.setdefault((cell.method.key, cell.k, cell.seed), []).append(result["metrics"])
        for where, why in (result.get("null_reasons") or {}).items():  # e.g. image labels only: no masks
            not_measured.setdefault((cell.method.key, cell.k, where.removeprefix("metrics.")), why)
        files.setdefault((cell.method.key, cell.k), []).append(result["result_file"])
    table, cfg, cats, grid = p.table, p.cfg, p.categories, p.grid
    key = summary_key(cfg, table, p.shots, p.seeds, cats, p.paper_dataset,
                      tuple(dict.fromkeys(m.method for m in p.rows)))
    summary_dir = Path(p.results_root) if p.results_root is not None else None
    stored_as = storage_name(p.dataset, p.data_root, "test")
    rows = []
    for method in p.rows:
        for k in dict.fromkeys(k for k, _ in grid[method.key]):
            row_seeds = [s for kk, s in grid[method.key] if kk == k]
            row = {"table": table, "method": method.key, "k": k, "dataset": p.dataset,
                   "stored_as": stored_as, "seeds": row_seeds,
                   "categories": list(cats), "profile": cfg.profile, "paper_dataset": p.paper_dataset,
                   "config_hash": key, "cells": len(files[(method.key, k)]),
                   "cell_files": [_relative(f, summary_dir, cfg.profile) for f in files[(method.key, k)]]}
            reasons = {}
            for metric in REPORTED:
                values = [m[metric] for s in row_seeds for m in per_cell[(method.key, k, s)]]
                undefined = sum(not _defined(v) for v in values)
                if undefined:  # an average over fewer cells would be another table's number
                    row[f"{metric}_mean"] = row[f"{metric}_std"] = None
                    reasons[f"{metric}_mean"] = (not_measured.get((method.key, k, metric))
                                                 or f"undefined in {undefined} of {len(values)} cells")
                    continue
                per_seed = [statistics.fmean(m[metric] for m in per_cell[(method.key, k, s)]) for s in row_seeds]
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([100.0 * v for v in per_seed])
            if reasons:
                row["null_reasons"] = reasons
            row["per_category"] = _per_category(per_cell, method.key, k, tuple(row_seeds), cats)
            for level in ("image", "pixel"):
                row[f"paper_{level}_auroc"] = paper_reference(table, method.paper_key, p.paper_dataset, level, k)
            rows.append(row)
    return rows


def _per_category(per_cell: dict, method: str, k: int, seeds: tuple[int, ...],
                  cats: tuple[str, ...]) -> dict[str, dict]:
    """Each category's mean +- std over seeds (%) of every reported metric; ``None`` where
    a cell's metric is undefined. ``per_cell[(method, k, seed)]`` lists metrics in ``cats`` order."""
    out = {}
    for i, category in enumerate(cats):
        values = {}
        for metric in REPORTED:
            per_seed = [per_cell[(method, k, s)][i][metric] for s in seeds]
            if all(_defined(v) for v in per_seed):
                values[f"{metric}_mean"], values[f"{metric}_std"] = mean_std([100.0 * v for v in per_seed])
            else:
                values[f"{metric}_mean"] = values[f"{metric}_std"] = None
        out[category] = values
    return out


def _grid(method: Method, shots: tuple[int, ...], seeds: tuple[int, ...]) -> list[tuple[int, int]]:
    """The (k, seed) cells of a row family: every k and seed, or ``(0, 0)`` for a method without shots."""
    if not get_method(method.method).uses_shots:
        return [(0, 0)]
    return [(k, s) for k in shots for s in seeds]


def run_dataset_for(cfg: ExperimentConfig, paper_dataset: str) -> str:
    """The data a table row runs on: the paper's dataset in the paper profile, else the
    profile's own data (toy), whose table is printed beside the paper's values as a reference."""
    return paper_dataset if cfg.profile == "paper" else cfg.data.dataset


def reproduce_cell(table: str, cfg: ExperimentConfig, paper_dataset: str, k: int,
                   categories: tuple[str, ...] | None = None, **kwargs) -> list[dict]:
    """One (dataset, k) cell of a table, as the reproduction chapters show it: runs or loads
    every (category, seed, method) run of that cell and returns its summary rows."""
    return reproduce(table, cfg, run_dataset_for(cfg, paper_dataset), shots=(k,), categories=categories,
                     paper_dataset=paper_dataset, progress=False, **kwargs)


def format_rows(rows: list[dict]) -> str:
    """Ours (mean +- std over seeds, %) beside the paper's value and the difference."""
    def cell(row, metric):
        if row[metric + "_mean"] is None:
            return "n/a"
        return f"{row[metric + '_mean']:.1f} +- {row[metric + '_std']:.1f}"

    def paper(row, level):
        v = row[f"paper_{level}_auroc"]
        return "-" if v is None else f"{v:.1f}"

    def delta(row, level):
        v, ours = row[f"paper_{level}_auroc"], row[level + "_auroc_mean"]
        return "" if v is None or ours is None else f"{ours - v:+.1f}"

    table = format_table(
        [(r["method"], r["k"], cell(r, "image_auroc"), paper(r, "image"), delta(r, "image"),
          cell(r, "pixel_auroc"), paper(r, "pixel"), delta(r, "pixel"), cell(r, "aupro")) for r in rows],
        ("method", "k", "image AUROC", "paper", "delta", "pixel AUROC", "paper", "delta", "AUPRO"))
    r0 = rows[0]
    head = (f"{r0['table']} on {r0['dataset']} ({len(r0['categories'])} categories, seeds {r0['seeds']}), "
            f"profile {r0['profile']}; paper column: {r0['paper_dataset']}")
    if r0["profile"] != "paper" or r0["dataset"] != r0["paper_dataset"]:
        head += ("\nNOT COMPARABLE: ours ran on other data and/or a random backbone; the paper's "
                 "values are printed only as the reference the paper profile aims at.")
    notes = sorted({why for r in rows for why in (r.get("null_reasons") or {}).values()})
    return head + "\n" + table + "".join(f"\nn/a: {why}" for why in notes)


def write_summary(rows: list[dict], out_dir: str | Path) -> tuple[Path, Path]:
    """``<table>_<dataset>_<confighash>.json`` and ``.csv`` in ``out_dir``: one summary per
    table, dataset, profile and config (:func:`vtfusion.results.write_summary`)."""
    return write_summary_files(rows, out_dir)


def _relative(result_file: str, results_root: Path | None, profile: str) -> str:
    """A cell file as its summary (in ``<results>/<profile>/``) refers to it."""
    base = (results_root if results_root is not None else paths.results_dir()) / profile
    return os.path.relpath(result_file, base)


def _bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    return tqdm(total=total, desc=desc)
