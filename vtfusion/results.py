"""Result files of the experiments: their keys, locations and schema, the table summaries and a listing.

Layout under a results folder (default ``results/``)::

    <profile>/<dataset>/<method>/<category>/k<k>_seed<seed>_<confighash>[_val].json   one cell
    <profile>/<table>_<dataset>_<summarykey>.json / .csv                              one table run

* A cell's key is :func:`result_key` of its method's config
  (:meth:`vtfusion.methods.base.AnomalyMethod.config`): everything that determines its
  result. For VTFusion that is :func:`config_hash` of the cell's own config, without what
  only selects cells (the category list, the seed list, the default dataset and k;
  :data:`vtfusion.config.NOT_CELL`). Another iteration count, variant or layer list is
  another file; another category list is not.
* A summary's key (:func:`summary_key`) adds to that config the table, the k values, seeds
  and categories the table averages over, and the paper column it is compared with, so a
  rerun with other options writes a new summary beside the old one.
* Every cell file is validated when read (:func:`result_problems`): the shape of the
  document, and every metric in [0, 1] or ``null`` (an undefined metric, whose reason is in
  ``null_reasons``). A file that fails is reported with a warning naming it and is
  recomputed, never used.

``vtfusion results ls`` prints :func:`format_listing` of :func:`list_results`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from vtfusion import paths
from vtfusion.config import NOT_CELL, ExperimentConfig, cell_fields
from vtfusion.io import atomic_write_json, atomic_write_text
from vtfusion.metrics import METRIC_KEYS
from vtfusion.viz import format_table

RESULT_FORMAT = "vtfusion-result-1"
SUMMARY_FORMAT = "vtfusion-summary-1"

#: ``<table>_<dataset>_<key>.json``: a table summary (a cell file starts with ``k<k>_seed``).
SUMMARY_NAME = re.compile(r"^(?P<table>table\d+)_(?P<dataset>.+?)(?:_(?P<key>[0-9a-f]{12}))?\.json$")
CELL_NAME = re.compile(r"^k(?P<k>\d+)_seed(?P<seed>\d+)(?:_(?P<key>[0-9a-f]{12}))?(?:_(?P<split>[a-z]+))?\.json$")


# --- keys and locations ------------------------------------------------------------------

def content_key(payload: Any) -> str:
    """12 hex digits of the SHA-256 of ``payload`` as sorted JSON: the key of every run, cell and summary."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def result_key(method_config: dict[str, Any]) -> str:
    """Key of a cell's result file: :func:`content_key` of its method's config."""
    return content_key(method_config)


def config_hash(cfg: ExperimentConfig) -> str:
    """Short stable hash of what determines a VTFusion cell's result (the key of its result file).

    The whole config without :data:`~vtfusion.config.NOT_CELL`.
    """
    return content_key(cell_fields(cfg))


def result_path(cfg: ExperimentConfig, dataset: str, category: str, k: int, seed: int, method: str,
                root: str | Path | None = None, split: str = "test", key: str | None = None) -> Path:
    """``results/<profile>/<dataset>/<method>/<category>/k<k>_seed<seed>_<key>[_val].json``.

    ``key`` defaults to the config's hash, so a cell run with other options never
    overwrites this one; results on the validation split end in ``_val``.
    """
    base = Path(root) if root is not None else paths.results_dir()
    suffix = "" if split == "test" else f"_{split}"
    return base / cfg.profile / dataset / method / category / f"k{k}_seed{seed}_{key or config_hash(cfg)}{suffix}.json"


# --- cell results: schema -----------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_problems(metrics: Any, where: str) -> list[str]:
    """Why ``metrics`` is not a ``{name: value in [0, 1] or null}`` dict (empty: it is)."""
    if not isinstance(metrics, dict):
        return [f"{where} is {type(metrics).__name__}, expected an object of metrics"]
    problems = []
    for name, value in metrics.items():
        if value is None:
            continue
        if not _is_number(value) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            problems.append(f"{where}.{name} = {value!r} is outside [0, 1]")
    return problems


def result_problems(data: Any) -> list[str]:
    """Everything wrong with a cell result document (empty list: it is valid).

    Checked: the format tag, the key fields' types, every metric of ``metrics`` (all of
    :data:`vtfusion.metrics.METRIC_KEYS` present) and of each ``map_metrics`` entry in
    [0, 1] or null.
    """
    if not isinstance(data, dict):
        return [f"the document is a JSON {type(data).__name__}, expected an object"]
    if data.get("format") != RESULT_FORMAT:
        return [f"format is {data.get('format')!r}, expected {RESULT_FORMAT!r}"]
    problems = []
    for name, kind in (("config_hash", str), ("dataset", str), ("category", str), ("method", str),
                       ("k", int), ("seed", int), ("config", dict), ("metrics", dict)):
        value = data.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            problems.append(f"{name} is {value!r}, expected {kind.__name__}")
    if isinstance(data.get("metrics"), dict):
        missing = [m for m in METRIC_KEYS if m not in data["metrics"]]
        if missing:
            problems.append(f"metrics lacks {', '.join(missing)}")
        problems += metric_problems(data["metrics"], "metrics")
    maps = data.get("map_metrics", {})
    if not isinstance(maps, dict):
        problems.append(f"map_metrics is {type(maps).__name__}, expected an object")
    else:
        for name, metrics in maps.items():
            problems += metric_problems(metrics, f"map_metrics.{name}")
    return problems


def read_cell_result(path: str | Path) -> dict | None:
    """A finished cell's result, or None when it must be computed (again).

    None without a word when the file is absent; with a warning naming the file and what
    is wrong when it is unreadable, not JSON, or fails :func:`result_problems` (the cell is
    then recomputed and the file replaced).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        problems = [f"unreadable: {err}"]
    else:
        problems = result_problems(data)
    if problems:
        warnings.warn(f"result file {path} is invalid ({'; '.join(problems[:3])}); recomputing the cell",
                      RuntimeWarning, stacklevel=3)
        return None
    return data


# --- table summaries ----------------------------------------------------------------------

def summary_key(cfg, table: str, shots: Iterable[int], seeds: Iterable[int], categories: Iterable[str],
                paper_dataset: str, methods: Iterable[str] = ("vtfusion",)) -> str:
    """Key of one table run: the cells' config (:func:`config_hash` without the per-cell
    seed) plus what the table averages over and compares with, and the methods when they
    are not VTFusion alone (so the key of a VTFusion table is what it always was)."""
    config = cfg.to_dict()
    for section, name in NOT_CELL + (("train", "seed"),):
        config[section].pop(name, None)
    payload = {"config": config, "table": table, "shots": sorted(shots), "seeds": sorted(seeds),
               "categories": sorted(categories), "paper_dataset": paper_dataset}
    if tuple(methods) != ("vtfusion",):
        payload["methods"] = list(methods)
    return content_key(payload)


def write_summary(rows: list[dict], out_dir: str | Path) -> tuple[Path, Path]:
    """``<table>_<dataset>_<summarykey>.json`` and ``.csv`` in ``out_dir`` (atomic, strict JSON).

    ``rows`` are :func:`vtfusion.reproduce.reproduce`'s: each carries the run's
    ``config_hash`` (its :func:`summary_key`) and its ``cell_files``. ``<dataset>`` is the
    name its cells are stored under (``stored_as``), so two folders, or two toy roots with
    other test images, never share a summary.
    """
    out_dir = Path(out_dir)
    first = rows[0]
    name = f"{first['table']}_{first.get('stored_as') or first['dataset']}_{first['config_hash']}"
    document = {"format": SUMMARY_FORMAT, "table": first["table"], "dataset": first["dataset"],
                "profile": first["profile"], "config_hash": first["config_hash"],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "cells": sum(len(r.get("cell_files", ())) for r in rows), "rows": rows}
    json_path = atomic_write_json(out_dir / f"{name}.json", document)
    buf = io.StringIO()
    keys = [k for k in first if k not in ("stored_as", "seeds", "categories", "cell_files", "null_reasons",
                                          "per_category")]
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = atomic_write_text(out_dir / f"{name}.csv", buf.getvalue())
    return json_path, csv_path


# --- listing ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResultEntry:
    """One line of ``vtfusion results ls``: a table summary, or a group of cells of one
    method and config that no summary covers."""

    table: str
    dataset: str
    profile: str
    config_hash: str
    cells: int
    when: str
    path: Path


def _when(path: Path) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(path.stat().st_mtime))


def _cell_group_hash(config: dict) -> str:
    """The cells' config without the seed: every seed of one method run shares it."""
    config = json.loads(json.dumps(config))
    for section, name in NOT_CELL + (("train", "seed"),):
        config.get(section, {}).pop(name, None)
    return content_key(config)


def list_results(root: str | Path) -> list[ResultEntry]:
    """Every table summary under ``root``, then every group of cells no summary lists.

    Summaries written before they had a key (a JSON list of rows) show config ``legacy``.
    """
    root = Path(root)
    entries: list[ResultEntry] = []
    covered: set[Path] = set()
    for path in sorted(root.glob("*/table*_*.json")):
        match = SUMMARY_NAME.match(path.name)
        if match is None:
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("format") == SUMMARY_FORMAT:
            files = [path.parent / f for r in doc.get("rows", []) for f in r.get("cell_files", [])]
            covered.update(f.resolve() for f in files)
            entries.append(ResultEntry(doc["table"], doc["dataset"], doc["profile"], doc["config_hash"],
                                       int(doc.get("cells", len(files))), doc.get("created") or _when(path), path))
        elif isinstance(doc, list) and doc:
            entries.append(ResultEntry(match["table"], match["dataset"], path.parent.name, "legacy",
                                       0, _when(path), path))
    groups: dict[tuple[str, str, str, str], list[Path]] = {}
    for path in sorted(root.glob("*/*/*/*/k*_seed*.json")):
        if CELL_NAME.match(path.name) is None or path.resolve() in covered:
            continue
        try:
            doc = json.loads(path.read_text())
            group = _cell_group_hash(doc["config"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            group = "invalid"
        profile, dataset, method = path.parts[-5:-2]
        groups.setdefault((profile, dataset, method, group), []).append(path)
    for (profile, dataset, method, group), paths in groups.items():
        newest = max(paths, key=lambda p: p.stat().st_mtime)
        entries.append(ResultEntry(f"cells of {method}", dataset, profile, group, len(paths), _when(newest),
                                   newest.parent.parent))
    return entries


def format_listing(entries: list[ResultEntry], root: str | Path) -> str:
    """The table ``vtfusion results ls`` prints (or a sentence when there is nothing)."""
    if not entries:
        return f"no results under {root}"
    return format_table([(e.table, e.dataset, e.profile, e.config_hash, e.cells, e.when, str(e.path))
                         for e in entries], ("table", "dataset", "profile", "config", "cells", "when", "file"))


__all__ = ["RESULT_FORMAT", "ResultEntry", "SUMMARY_FORMAT", "config_hash", "content_key", "format_listing",
           "list_results", "metric_problems", "read_cell_result", "result_key", "result_path", "result_problems",
           "summary_key", "write_summary"]
