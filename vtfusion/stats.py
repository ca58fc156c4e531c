"""Paired comparisons of two methods on the same cells: is a difference larger than the noise?

A benchmark grid evaluates every method on the same cells (category x k x shot seed), so
two methods are compared cell by cell, not mean against mean: the category and the shots
explain most of a metric's spread, and pairing removes them. The unit of resampling is a
(category, shot seed) pair, the mean difference over its k: the k of one seed draw their
shots from the same list, so their cells are not independent draws, while two seeds or
two categories are.

:func:`paired_difference` gives, for one metric, the mean difference over those units, a
bootstrap confidence interval (:func:`scipy.stats.bootstrap`, percentile method), the
Wilcoxon signed-rank p-value (:func:`scipy.stats.wilcoxon`) and the count of units won and
lost. :func:`per_cell_records` is the compact per-cell list a grid benchmark stores so that
its file can be compared this way later, without the result store.
"""

from __future__ import annotations

import math
import statistics
from typing import Iterable, Sequence

import numpy as np

CELL_KEYS = ("category", "k", "seed")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def per_cell_records(results: Iterable[dict], metrics: Sequence[str] = METRICS) -> list[dict]:
    """``[{category, k, seed, metric: value, ...}]`` from cell results (their ``metrics``)."""
    out = []
    for r in results:
        row = {"category": r["category"], "k": r["k"], "seed": r["seed"]}
        row.update({m: r["metrics"][m] for m in metrics if r["metrics"].get(m) is not None})
        out.append(row)
    return out


def _by_cell(cells: Iterable[dict], metric: str, what: str) -> dict[tuple, float]:
    table: dict[tuple, float] = {}
    for c in cells:
        key = tuple(c[k] for k in CELL_KEYS)
        if key in table:
            raise ValueError(f"{what}: cell {dict(zip(CELL_KEYS, key))} appears twice")
        if metric in c and c[metric] is not None:
            table[key] = float(c[metric])
    return table


def paired_difference(candidate: Iterable[dict], reference: Iterable[dict], metric: str,
                      confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0,
                      tie: float = 1e-9) -> dict:
    """Candidate minus reference on ``metric`` over their common cells (``per_cell_records`` lists).

    Returns ``{"metric", "cells", "units", "mean", "low", "high", "wins", "losses", "ties",
    "p_wilcoxon"}``: the mean over units of each (category, seed) unit's mean difference
    over its k, the ``confidence`` bootstrap interval of that mean (percentile method,
    ``n_resamples``, seeded), the units the candidate wins and loses (a difference within
    ``tie`` is a tie), and the two-sided Wilcoxon signed-rank p-value over units (NaN when
    every difference is a tie). Raises ``ValueError`` when the two share no cell.
    """
    from scipy import stats as scipy_stats  # local: scipy.stats is slow to import

    a = _by_cell(candidate, metric, "candidate")
    b = _by_cell(reference, metric, "reference")
    common = sorted(set(a) & set(b), key=str)
    if not common:
        raise ValueError(f"the candidate and the reference share no cell with {metric!r} "
                         "(cells are matched by category, k and seed)")
    units: dict[tuple, list[float]] = {}
    for key in common:
        category, _, seed = key
        units.setdefault((category, seed), []).append(a[key] - b[key])
    diffs = np.array([statistics.fmean(v) for v in units.values()])
    mean = float(diffs.mean())
    if len(diffs) < 2 or np.ptp(diffs) < tie:  # no spread to resample
        low = high = mean
    else:
        ci = scipy_stats.bootstrap((diffs,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                                   method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    nonzero = diffs[np.abs(diffs) > tie]
    p = float(scipy_stats.wilcoxon(nonzero).pvalue) if len(nonzero) else math.nan
    return {"metric": metric, "cells": len(common), "units": len(diffs), "mean": mean, "low": low,
            "high": high, "wins": int((diffs > tie).sum()), "losses": int((diffs < -tie).sum()),
            "ties": int((np.abs(diffs) <= tie).sum()), "p_wilcoxon": p}


def shot_difference(cells: Iterable[dict], more: int, fewer: int, metric: str, **kwargs) -> dict:
    """One method's cells with ``more`` shots minus its cells with ``fewer``, paired by
    (category, shot seed): :func:`paired_difference` (``kwargs`` passed on) with each cell's
    k set aside. Does the method gain from more shots beyond what the noise allows?

    The shot lists are nested (:mod:`vtfusion.data.shots`: the first ``fewer`` shots of a
    seed's list are also its first ``fewer`` of ``more``), so the two cells of a unit share
    shots, as the pairing assumes.
    """
    cells = list(cells)
    at = {k: [{**c, "k": 0} for c in cells if c["k"] == k] for k in (more, fewer)}
    missing = [k for k, v in at.items() if not v]
    if missing:
        raise ValueError(f"no cell with k = {missing[0]} (the cells have k in {sorted({c['k'] for c in cells})})")
    return paired_difference(at[more], at[fewer], metric, **kwargs)


MIN_UNITS = 6
"""Fewer units than this get no verdict: a bootstrap of 3 values can only return their own
range, and the smallest two-sided Wilcoxon p-value of 5 units is 0.0625."""


def verdict(diff: dict, min_units: int = MIN_UNITS) -> str:
    """``"above"``, ``"below"`` or ``"level"``: where the interval of :func:`paired_difference` lies;
    ``"few units"`` when it rests on fewer than ``min_units`` (category, seed) units."""
    if diff["units"] < min_units:
        return "few units"
    if diff["low"] > 0:
        return "above"
    if diff["high"] < 0:
        return "below"
    return "level"
