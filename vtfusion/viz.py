"""Figures for the book: image grids with mask outlines, map figures, and plain-text tables.

The interactive map explorer lives in :mod:`vtfusion.explorer` (re-exported here).

Functions take tensors as the data layer returns them (``3 x H x W`` in [0, 1],
masks ``1 x H x W``) and return the matplotlib figure so notebooks can save it.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Sequence

import numpy as np
import torch

from vtfusion import paths
from vtfusion.stats import paired_difference, shot_difference, verdict


def to_numpy_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``3 x H x W`` tensor in [0, 1] (or ``H x W x 3`` array) -> ``H x W x 3`` float array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    image = np.asarray(image, dtype=np.float32)
    if image.max() > 1.0:
        image = image / 255.0
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    return np.clip(image, 0.0, 1.0)


def _mask2d(mask: torch.Tensor | np.ndarray | None) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    return mask.reshape(mask.shape[-2], mask.shape[-1]) > 0.5


def show_grid(images: Sequence, titles: Sequence[str] | None = None, masks: Sequence | None = None,
              ncols: int = 6, size: float = 2.0, suptitle: str | None = None):
    """Images in a grid; ground-truth masks, when given, drawn as red outlines.

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt  # local: matplotlib is slow to import

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(to_numpy_image(images[i]))
        m = _mask2d(masks[i]) if masks is not None else None
        if m is not None and m.any():
            ax.contour(m.astype(float), levels=[0.5], colors="red", linewidths=1.0)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def wrap_titles(texts: Sequence[str], width: int = 26) -> list[str]:
    """Long titles (e.g. captions) wrapped onto several lines for :func:`show_grid`."""
    return ["\n".join(textwrap.wrap(t, width)) for t in texts]


def format_table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """A fixed-width text table (notebooks print it; no pandas needed)."""
    cells = [[str(h) for h in headers]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(cells[0]), line, *[fmt(r) for r in cells[1:]]])


# --- score maps -------------------------------------------------------------------------

def _upsample(score_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    m = score_map.detach().float().cpu()
    m = m.reshape(1, 1, m.shape[-2], m.shape[-1])
    if tuple(m.shape[-2:]) != tuple(size):
        m = torch.nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return m[0, 0].numpy()


def draw_heatmap(ax, image, score_map, mask=None, threshold: float | None = None, opacity: float = 0.5,
                 vmin: float | None = None, vmax: float | None = None, title: str | None = None) -> None:
    """One panel: the image, the score map on top (jet), the ground truth as a red outline,
    and with ``threshold`` the predicted region as a white outline."""
    img = to_numpy_image(image)
    heat = _upsample(score_map, img.shape[:2])
    ax.imshow(img)
    ax.imshow(heat, cmap="jet", alpha=opacity, vmin=vmin, vmax=vmax)
    m = _mask2d(mask)
    if m is not None and m.any():
        ax.contour(m.astype(float), levels=[0.5], colors="red", linewidths=1.0)
    if threshold is not None and (heat >= threshold).any() and (heat < threshold).any():
        ax.contour((heat >= threshold).astype(float), levels=[0.5], colors="white", linewidths=0.8)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)


def heatmap_grid(images: Sequence, maps: dict[str, torch.Tensor], masks: Sequence | None = None,
                 titles: Sequence[str] | None = None, map_types: Sequence[str] | None = None,
                 threshold: float | None = None, opacity: float = 0.5, size: float = 2.0):
    """Static figure: one row per image, one column per map type (plus the input).

    ``maps`` maps a name (``vision``, ``text``, ``fused``, ``final``...) to a ``N x 1 x h x w``
    tensor. Each map type uses one colour range over all rows, so rows are comparable.
    """
    import matplotlib.pyplot as plt  # local: matplotlib is slow to import

    map_types = list(map_types or maps)
    n = len(images)
    fig, axes = plt.subplots(n, len(map_types) + 1, figsize=(size * (len(map_types) + 1), size * n), squeeze=False)
    ranges = {k: (float(maps[k].min()), float(maps[k].max())) for k in map_types}
    for i in range(n):
        axes[i, 0].imshow(to_numpy_image(images[i]))
        m = _mask2d(masks[i]) if masks is not None else None
        if m is not None and m.any():
            axes[i, 0].contour(m.astype(float), levels=[0.5], colors="red", linewidths=1.0)
        axes[i, 0].axis("off")
        axes[i, 0].set_title(titles[i] if titles else "input", fontsize=8)
        for j, k in enumerate(map_types, start=1):
            lo, hi = ranges[k]
            draw_heatmap(axes[i, j], images[i], maps[k][i], masks[i] if masks is not None else None,
                         threshold if k == "final" else None, opacity, lo, hi, k if i == 0 else None)
    fig.tight_layout()
    return fig


def heatmap_explorer(images: Sequence, maps: dict[str, torch.Tensor], masks: Sequence | None = None,
                     titles: Sequence[str] | None = None, **options):
    """The interactive map explorer that runs in the browser, with or without a kernel.

    See :func:`vtfusion.explorer.heatmap_explorer` for the options (``labels``, ``scores``,
    ``map_name``, ``compare``, ``threshold``, ``opacity``, ``size``, ``map_size``). Returns the widget;
    display it as the last expression of a cell and follow it with :func:`heatmap_grid`
    so that printed pages still show the maps.
    """
    from vtfusion.explorer import heatmap_explorer as explorer  # local: anywidget is slow to import

    return explorer(images, maps, masks, titles, **options)


# --- the method at a glance ---------------------------------------------------------------

# (x, y) centres on a 16 x 9 canvas; kind: data, frozen, trained or output.
_PIPELINE_BOXES = {
    "shots": (1.4, 7.5, "k normal shots", "data"),
    "das": (1.4, 5.6, "DAS: synthetic\nanomalies (Sec. III-B)", "trained_free"),
    "test": (1.4, 3.7, "test image", "data"),
    "clip_img": (4.6, 5.6, "CLIP image encoder\ntokens of blocks 3, 6, 9, 12", "frozen"),
    "aie": (7.6, 5.6, "AIE: linear maps\n+ feature adaptor", "trained"),
    "proto": (7.6, 7.6, "prototypes (Eq. 1)\nfrom the shots", "frozen_built"),
    "mv": (10.5, 6.6, "vision map $M^v$\nnearest prototype (Eqs. 2, 5)", "output"),
    "prompts": (1.4, 1.4, '"a photo of a normal /\ndamaged [o]" ensemble', "data"),
    "clip_txt": (4.6, 1.4, "CLIP text encoder", "frozen"),
    "ate": (7.6, 1.4, "ATE: text adapter", "trained"),
    "mt": (10.5, 3.4, "text map $M^t$\npatch-text similarity (Eq. 6)", "output"),
    "mpf": (13.4, 5.0, "MPF: fusion block\n(self-attention, Eq. 7)\n+ segmentation net", "trained"),
    "out": (13.4, 1.4, "anomaly map $M$\nand image score", "output"),
}
_PIPELINE_ARROWS = [("shots", "das"), ("shots", "clip_img"), ("das", "clip_img"), ("test", "clip_img"),
                    ("clip_img", "aie"), ("aie", "proto"), ("aie", "mv"), ("proto", "mv"), ("aie", "mt"),
                    ("prompts", "clip_txt"), ("clip_txt", "ate"), ("ate", "mt"), ("mv", "mpf"), ("mt", "mpf"),
                    ("mpf", "out")]
_PIPELINE_STYLE = {"data": ("white", "0.3"), "frozen": ("#dce6f2", "#3b6ea5"), "frozen_built": ("#eef2f8", "#3b6ea5"),
                   "trained": ("#fde3c8", "#c0651b"), "trained_free": ("#f3f3f3", "0.4"),
                   "output": ("#e3f1dd", "#4a8a34")}


def pipeline_figure(width: float = 11.0):
    """The VTFusion pipeline (the paper's Fig. 2) redrawn: frozen CLIP encoders in blue,
    trained modules in orange, maps in green, with the equation numbers of each step.

    Training adds the losses: NFC/AFS (Eqs. 3-4) on the vision branch, the segmentation
    loss (Eqs. 8-10) on the final map; the figure notes them at the bottom.

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt  # local: matplotlib is slow to import
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(width, width * 9 / 16))
    ax.set_xlim(-0.1, 14.9)
    ax.set_ylim(-0.5, 8.7)
    ax.axis("off")
    boxes = {}
    for key, (x, y, text, kind) in _PIPELINE_BOXES.items():
        face, edge = _PIPELINE_STYLE[kind]
        w, h = 2.35, 0.6 + 0.3 * text.count("\n")
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.08",
                                    facecolor=face, edgecolor=edge, linewidth=1.3))
        ax.text(x, y, text, ha="center", va="center", fontsize=7)
        boxes[key] = (x, y, w, h)

    def ends(a, b):
        """Start and end points: box sides for column-to-column arrows, top/bottom within a
        column; arrivals are nudged towards the source so two arrows do not meet in one point."""
        (xa, ya, wa, ha), (xb, yb, wb, hb) = boxes[a], boxes[b]
        if abs(xb - xa) < 0.5:
            sy = np.sign(yb - ya)
            return (xa, ya + sy * (ha / 2 + 0.1)), (xb, yb - sy * (hb / 2 + 0.1))
        sx, nudge = np.sign(xb - xa), np.clip((ya - yb) * 0.15, -hb / 3, hb / 3)
        return (xa + sx * (wa / 2 + 0.1), ya), (xb - sx * (wb / 2 + 0.1), yb + nudge)

    for a, b in _PIPELINE_ARROWS:
        start, end = ends(a, b)
        ax.annotate("", xy=end, xytext=start,
                    arrowprops=dict(arrowstyle="-|>", color="0.25", lw=1.0, shrinkA=0, shrinkB=0))
    legend = [("frozen (CLIP)", "frozen"), ("trained", "trained"), ("maps", "output"), ("inputs", "data")]
    for i, (label, kind) in enumerate(legend):
        face, edge = _PIPELINE_STYLE[kind]
        ax.add_patch(FancyBboxPatch((8.9 + 1.5 * i, 8.35), 0.3, 0.2, boxstyle="round,pad=0.03",
                                    facecolor=face, edgecolor=edge))
        ax.text(9.3 + 1.5 * i, 8.45, label, fontsize=7, va="center")
    ax.text(7.3, -0.2, "training: L = L_NFC + L_AFS (Eqs. 3-4, on the AIE features) + L_seg (Eqs. 8-10, "
            "on M against DAS masks); Algorithm 1", ha="center", fontsize=7.5, style="italic")
    fig.tight_layout()
    return fig


def _natural_key(text: str) -> list:
    """Sort key that orders the numbers inside ``text`` by value (``s9`` before ``s10``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def latest_bench_result(name: str) -> tuple[dict, str] | None:
    """The newest committed benchmark result ``bench/results/<date>-<machine>/<name>.json`` and its folder.

    Folders are ordered by date, then by session suffix as a number (``...-s9`` before ``...-s10``)."""
    found = sorted((paths.PROJECT_ROOT / "bench" / "results").glob(f"*/{name}.json"),
                   key=lambda path: _natural_key(path.parent.name))
    if not found:
        return None
    return json.loads(found[-1].read_text()), found[-1].parent.name


def _percent(summary: dict, metric: str) -> str:
    """``summary[metric]`` as "mean +- std" in %, or "-" for a metric the row has no value of."""
    if summary.get(metric) is None:
        return "-"
    return f"{100 * summary[metric]:.1f} +- {100 * summary.get(metric + '_std', 0.0):.1f}"


def bench_table(name: str, k: str | int = "all", metrics=("image_auroc", "pixel_auroc", "aupro"),
                costs: bool = False) -> str:
    """A committed grid benchmark (``bench_pocket``, ``bench_recipe``, ``bench_baselines``) as a text
    table, % mean +- std over seeds.

    Each row says its backbone; the header names the result folder (date and machine).
    ``costs``: add the rows' ``ms/image`` and ``s/category`` (``bench_baselines`` records them).
    A metric a row has no value of (the text map of a vision-only row) prints as "-".
    """
    found = latest_bench_result(name)
    if found is None:
        return f"no committed result of bench/{'bench_' + name}.py yet (run it and copy runs/bench/{name}.json)"
    record, folder = found
    groups = record["parts"] if "parts" in record else {"": record["summaries"]}
    lines = []
    for part, summaries in groups.items():
        rows = [s for s in summaries if s["k"] == k or k == "any"]
        cost_cols = ("ms/image", "s/category") if costs else ()
        body = format_table([(s["row"], s["k"], *[_percent(s, m) for m in metrics],
                              *((f"{1000 * s['seconds_per_image']:.1f}", f"{s['category_seconds']:.1f}")
                                if costs else ()))
                             for s in rows], ("method/backbone", "k", *metrics, *cost_cols))
        lines.append((f"[{part}]\n" if part else "") + body)
    return f"bench/results/{folder}/{name}.json (mean +- std over shot seeds, %)\n" + "\n\n".join(lines)


def format_difference(diff: dict) -> str:
    """One :func:`vtfusion.stats.paired_difference` as "+1.3 [-1.5, +4.3] 6/6 level" (points)."""
    return (f"{100 * diff['mean']:+.1f} [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}] "
            f"{diff['wins']}/{diff['losses']} {verdict(diff)}")


def _grid_parts(name: str, parts: Sequence[str] | None) -> tuple[str, list[tuple[str, list[dict]]]] | None:
    """The newest committed grid benchmark ``name``: its folder and its ``(part, summaries)``,
    only the ``parts`` asked for (all when None); None when nothing is committed."""
    found = latest_bench_result(name)
    if found is None:
        return None
    record, folder = found
    return folder, [(part, summaries) for part, summaries in record["parts"].items()
                    if parts is None or part in parts]


def paired_table(name: str, reference: str, metrics=("image_auroc", "pixel_auroc", "aupro"),
                 parts: Sequence[str] | None = None) -> str:
    """Every row of a committed grid benchmark against ``reference`` (a row-name prefix such as
    ``patch_knn`` or ``full``), cell by cell: :func:`vtfusion.stats.paired_difference`.

    Per part and row: the mean difference in points with its 95% bootstrap interval over
    (category, shot seed) units, the units won and lost, and whether the interval lies
    above, below or around zero. Parts whose file holds no per-cell metrics (benchmarks
    run before they were recorded) say so instead of guessing.
    """
    grid = _grid_parts(name, parts)
    if grid is None:
        return f"no committed result of bench/{'bench_' + name}.py yet"
    folder, selected = grid
    lines = []
    for part, summaries in selected:
        rows = [s for s in summaries if str(s["k"]).startswith("all")]
        ref = next((s for s in rows if s["row"].split("/")[0] == reference), None)
        if ref is None:
            continue
        if "per_cell" not in ref:
            lines.append(f"[{part}]\nno per-cell metrics in this file (recorded since 2026-12-04)")
            continue
        body = []
        for s in rows:
            if s is ref or "per_cell" not in s:
                continue
            diffs = [paired_difference(s["per_cell"], ref["per_cell"], m) for m in metrics]
            body.append((s["row"], diffs[0]["units"], *map(format_difference, diffs)))
        lines.append(f"[{part}] minus {ref['row']}\n" + format_table(body, ("method/backbone", "units", *metrics)))
    return (f"bench/results/{folder}/{name}.json: difference in points, 95% interval, units won/lost, "
            "verdict\n" + "\n\n".join(lines))


def shot_trend_table(name: str, steps: Sequence[tuple[int, int]] = ((2, 1), (8, 2), (8, 1)),
                     metric: str = "image_auroc", parts: Sequence[str] | None = None) -> str:
    """Does each row of a committed grid benchmark gain from more shots? For every part and
    row, ``metric`` at the larger k minus the smaller one of each pair in ``steps``, paired by
    (category, shot seed) (:func:`vtfusion.stats.shot_difference`), in points with its 95%
    interval, the units won and lost, and the verdict."""
    grid = _grid_parts(name, parts)
    if grid is None:
        return f"no committed result of bench/{'bench_' + name}.py yet"
    folder, selected = grid
    lines = []
    for part, summaries in selected:
        body = []
        for s in summaries:
            present = {c["k"] for c in s.get("per_cell", [])}
            if not str(s["k"]).startswith("all") or not all({a, b} <= present for a, b in steps):
                continue
            body.append((s["row"], *(format_difference(shot_difference(s["per_cell"], a, b, metric))
                                     for a, b in steps)))
        if body:
            lines.append(f"[{part}]\n" + format_table(body, ("method/backbone", *(f"k {a} - k {b}"
                                                                                  for a, b in steps))))
    return (f"bench/results/{folder}/{name}.json, {metric}: difference in points, 95% interval, units "
            "won/lost, verdict\n" + "\n\n".join(lines or ["no part holds per-cell metrics at these k"]))


def paired_validation_table(name: str = "recipe_recheck") -> str:
    """A committed validation recheck (``bench/recipe_recheck.py``) as text: each candidate's
    validation means, then its paired differences (:func:`vtfusion.stats.paired_difference`)
    with the patch-kNN reference and with the current recipe. A recheck on another toy root
    (``--large-val``) names it."""
    found = latest_bench_result(name)
    if found is None:
        return f"no committed result of bench/{name}.py yet"
    record, folder = found
    metrics = ("image_auroc", "pixel_auroc", "aupro")
    means = format_table([(r["name"], r["cells"], *(f"{100 * r[m]:.1f}" for m in metrics),
                           f"{100 * r['selection_score']:.1f}") for r in record["rows"]],
                         ("candidate", "cells", *metrics, "score"))

    def paired(diffs: list[dict]) -> str:
        return format_table([(d["name"], *(format_difference(d[m]) for m in metrics)) for d in diffs],
                            (f"minus {diffs[0]['reference']}", *metrics))

    split = record["split"] + (f" split of {record['val_root']}" if record.get("val_root", "toy") != "toy" else " split")
    head = (f"bench/results/{folder}/{name}.json: {split}, backbone {record['backbone']}, "
            f"k {record['shots']}, shot seeds {record['seeds']} (%, differences in points)")
    return "\n\n".join([head, means, paired(record["vs_patch_knn"]), paired(record["vs_project"]),
                        f"would replace the recipe: {', '.join(record['would_replace']) or 'none'}"])


GPU_SESSION_FILES = ("forward_fp32", "forward_bf16", "train", "precision", "cuda_determinism")
"""The results ``bench/gpu_session.sh`` writes, read by :func:`gpu_costs_table`."""


def gpu_costs_table() -> str:
    """What the paper profile costs on a GPU, from the newest committed ``bench/gpu_session.sh`` run.

    Rows: the frozen ViT-B-16-plus-240's forward per image in fp32 and bf16 (batch 32), how
    far bf16 moves the final maps and metrics, one category's training time (Algorithm 1,
    1000 iterations, extrapolated) and what the deterministic-CUDA switch costs and buys.
    """
    found = {name: latest_bench_result(name) for name in GPU_SESSION_FILES}
    if any(v is None for v in found.values()):
        return "no committed GPU session yet (bench/gpu_session.sh on a GPU, results in bench/results/)"
    r = {name: v[0] for name, v in found.items()}
    fp32, bf16 = r["forward_fp32"], r["forward_bf16"]
    per_image = {p: 1000 * r[f"forward_{p}"]["seconds"]["backbone"]["mean"] / r[f"forward_{p}"]["batch"]
                 for p in ("fp32", "bf16")}
    change = r["precision"]["metric_change"]
    train, det = r["train"], r["cuda_determinism"]["pairs"]
    rows = [
        ("backbone forward, fp32", f"{per_image['fp32']:.2f} ms/image (batch {fp32['batch']})"),
        ("backbone forward, bf16", f"{per_image['bf16']:.2f} ms/image ({per_image['fp32'] / per_image['bf16']:.1f}x)"),
        ("bf16 - fp32, final maps", f"max |diff| {r['precision']['map_max_abs_diff']:.1e} "
                                    f"({r['precision']['images']} toy test images)"),
        ("bf16 - fp32, metrics (points)", ", ".join(f"{k} {100 * v:+.3f}" for k, v in change.items())),
        ("training, paper profile", f"{train['iterations_per_s']:.1f} it/s; {train['full_category_s']:.0f} s "
                                    f"per category ({train['full_iterations']} iterations, extrapolated)"),
        ("  per iteration: DAS / backbone / heads", " / ".join(f"{1000 * train['split_s'][k]:.1f} ms"
                                                              for k in ("das", "backbone", "heads"))),
        ("deterministic on: repeat differs by", f"{det['deterministic']['param_max_abs_diff']:.1e} "
                                                f"({det['deterministic']['seconds_per_run']:.1f} s/run)"),
        ("deterministic off: repeat differs by", f"{det['default']['param_max_abs_diff']:.1e} "
                                                 f"({det['default']['seconds_per_run']:.1f} s/run)"),
    ]
    folders = sorted({v[1] for v in found.values()})
    gpu = train.get("environment", {}).get("gpu", "GPU")
    return (f"bench/results/{', '.join(folders)} ({gpu}; random weights, same compute as the real ones)\n"
            + format_table(rows, ("quantity", "value")))


def training_curves(info: dict, title: str = "", window: int = 10):
    """The training chapter's diagnostics of one run (``info`` as ``train_or_load`` returns it).

    Four panels: the losses (moving average); the share of active hinge cells of Eqs. 3-4;
    the gradient norm each loss sends into the AIE with the AIE's relative feature change per
    step; and, when the run had a validation monitor, the image and pixel AUROC of ``M^v``,
    ``M^t`` and ``M^f`` on the validation split. Returns the figure.
    """
    import matplotlib.pyplot as plt  # local: matplotlib is slow to import

    hist = info["history"]
    its = np.array([h["iteration"] for h in hist])

    def smooth(values):
        values = np.asarray(values, dtype=float)
        if len(values) < window:
            return its[:len(values)], values
        return its[window - 1:], np.convolve(values, np.ones(window) / window, mode="valid")

    monitor = info.get("monitor") or []
    fig, axes = plt.subplots(1, 4 if monitor else 3, figsize=(16 if monitor else 12, 3.2))
    ax = axes[0]
    for name in ("total", "seg", "nfc", "afs"):
        if name in hist[0]:
            ax.plot(*smooth([h[name] for h in hist]), label=name)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_title("losses"), ax.set_xlabel("iteration"), ax.legend(fontsize=7)
    ax = axes[1]
    for name in ("nfc_active", "afs_active"):
        if name in hist[0]:
            ax.plot(*smooth([h[name] for h in hist]), label=name)
    ax.set_ylim(-0.05, 1.05), ax.set_title("active hinge cells (share)"), ax.set_xlabel("iteration")
    ax.legend(fontsize=7)
    ax = axes[2]
    diag = [h for h in hist if "aie_change" in h]
    for name in ("grad_aie_nfc", "grad_aie_afs", "grad_aie_seg", "aie_change"):
        if diag and name in diag[0]:
            ax.plot([h["iteration"] for h in diag], [max(h[name], 1e-8) for h in diag], marker=".", label=name)
    ax.set_yscale("log"), ax.set_title("into the AIE: gradient norms, feature change"), ax.set_xlabel("iteration")
    ax.legend(fontsize=7)
    if monitor:
        ax = axes[3]
        steps = [m["iteration"] for m in monitor]
        for name, colour in (("vision", "tab:blue"), ("text", "tab:orange"), ("final", "tab:green")):
            ax.plot(steps, [m[f"{name}_pixel_auroc"] for m in monitor], color=colour, label=f"{name} pixel")
            ax.plot(steps, [m[f"{name}_image_auroc"] for m in monitor], color=colour, ls="--",
                    label=f"{name} image")
        ax.set_title("validation AUROC per map"), ax.set_xlabel("iteration"), ax.legend(fontsize=6, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- FineGrainedAD: the regions its prompts are aligned to ---------------------------------

def region_figure(images: Sequence, regions: Sequence, units: Sequence[str], matched: Sequence[Sequence[int]],
                  grid: tuple[int, int], size: float = 2.6):
    """Static figure of FineGrainedAD's language-guided region aggregation (Eq. FG-2).

    ``images``: the k shots (``3 x H x W``); ``regions``: per shot the ``h * w`` region of each
    token (``0..C-1`` foreground regions, ``C`` the background); ``units`` and ``matched``: the
    prompt units and, per shot, the region each is aligned to (-1: every token, the object
    unit). One column per shot: the image, then its regions in colour, titled with the
    component prompt matched to each region.
    """
    import matplotlib.pyplot as plt  # local: matplotlib is slow to import
    from matplotlib.patches import Patch  # local: as above

    labels = torch.as_tensor(regions).reshape(len(images), *grid)
    n_regions = int(labels.max()) + 1
    colours = plt.get_cmap("tab10")(np.arange(10))[:, :3]
    fig, axes = plt.subplots(2, len(images), figsize=(size * len(images), 2 * size + 0.4), squeeze=False)
    for i, image in enumerate(images):
        img = to_numpy_image(image)
        axes[0, i].imshow(img)
        axes[0, i].set_title(f"shot {i}", fontsize=8)
        colour = colours[labels[i].numpy() % 10]
        up = torch.nn.functional.interpolate(torch.as_tensor(colour).permute(2, 0, 1)[None].float(),
                                             size=img.shape[:2], mode="nearest")[0].permute(1, 2, 0).numpy()
        axes[1, i].imshow(0.45 * img + 0.55 * up)
        pairs = [f"{u} -> {m}" for u, m in zip(units, matched[i]) if m >= 0]
        axes[1, i].set_title("\n".join(wrap_titles(["; ".join(pairs)], width=34)), fontsize=7)
        for ax in axes[:, i]:
            ax.axis("off")
    legend = [Patch(color=colours[r % 10], label=f"region {r}") for r in range(n_regions)]
    fig.legend(handles=legend, loc="lower center", ncol=min(5, n_regions), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
