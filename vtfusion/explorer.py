"""The heatmap explorer: one widget that works in JupyterLab and in the static HTML book.

:func:`heatmap_explorer` returns a :class:`HeatmapExplorer` with every image and map it shows
packed into the widget's state (downsampled so the longer side is ``size`` pixels, quantised
to uint8, zlib-compressed, base64). Its front end, ``vtfusion/explorer.js``, decodes them and
draws in the browser: the image with the chosen map on top (jet colours, the opacity set by a
slider), the ground truth as a red outline, the region at or above the threshold as a white
outline, optionally a second map beside it, and a histogram of the image scores (normal and
defective) with the threshold as a line; a click or drag on the histogram moves the threshold.
No control calls back into Python, so the explorer responds without a kernel.

Why anywidget (0.11.0), not Bokeh standalone with ``CustomJS``:

* The book already serves a pinned Jupyter widget manager offline (``tools/book_assets.py``),
  and myst-nb already embeds the widget state of executed notebooks. anywidget adds one
  33 kB front-end module (its npm package, the same file as in its wheel) to that folder;
  Bokeh would add about 1 MB of inline BokehJS to every explorer page.
* One code path: the same ESM module runs in JupyterLab (anywidget's lab extension comes with
  the wheel) and in the static book (the html-manager loads it through require.js from
  ``_static/offline/anywidget``). Bokeh's notebook output and standalone output differ, and
  its script loader must be kept away from the page's require.js.
* The front end is plain DOM (``<select>``, ``<input type=range>``, buttons and canvases), so
  the browser test can click and drag real controls and read canvas pixels; Bokeh draws its
  widgets inside shadow roots.

What travels: ``3 x h x w`` bytes per image, ``ceil(h * w / 8)`` per mask (bit-packed) and
each map at its own resolution up to ``map_size`` (one byte a cell), all zlib-compressed:
about 35 kB of page per image with four maps. Each
map is quantised over its own range across all images (one colour scale per map, as in
:func:`vtfusion.viz.heatmap_grid`), so the threshold is in the map's units. The histogram
places each image at the maximum of the shown map over the image, computed before
quantisation, so that it shares the threshold's units. That is the paper's image score,
``max(M^f)`` (Sec. III-D), only under ``ModelConfig.image_score="max"``; under
``"smoothed_max"`` (the project recipe) the model scores the max of the smoothed map, so pass
the model's ``scores`` to show its own beside each title.
"""

from __future__ import annotations

import base64
import importlib.resources
import math
import zlib
from typing import Mapping, Sequence

import anywidget
import numpy as np
import torch
import traitlets

#: Longer side, in pixels, of the images sent to the page.
DEFAULT_SIZE = 128
#: Longer side of the largest map sent to the page. The maps come from a patch grid (15 x 15
#: for ViT-B-16-plus-240) and are upsampled by the model, so 64 keeps every detail they have
#: at a quarter of the bytes of 128; the browser resizes them bilinearly for display.
DEFAULT_MAP_SIZE = 64
#: Histogram bins over each map's range.
HISTOGRAM_BINS = 24


def _front_end(name: str) -> str:
    """``explorer.js`` or ``explorer.css``, package data beside this module."""
    return importlib.resources.files("vtfusion").joinpath(name).read_text(encoding="utf-8")


def _pack(array: np.ndarray) -> str:
    """uint8 bytes -> zlib (the browser's ``DecompressionStream("deflate")`` format) -> base64."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array, dtype=np.uint8).tobytes(), 9)).decode()


def unpack(text: str, shape: Sequence[int]) -> np.ndarray:
    """Inverse of the packing used in the payload: base64 -> zlib -> ``uint8`` array of ``shape``."""
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8).reshape(tuple(shape)).copy()


def _as_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu()
    if isinstance(value, (list, tuple)):
        return torch.stack([_as_tensor(v, what) for v in value])
    try:
        return torch.as_tensor(np.asarray(value), dtype=torch.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a tensor, an array or a list of them, got {type(value).__name__}") from None


def _fit(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` with the longer side at most ``size``, aspect kept (never upsampled)."""
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(batch: torch.Tensor, hw: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``N x C x H x W`` to ``N x C x h x w``; antialiased when shrinking so thin defects stay."""
    if tuple(batch.shape[-2:]) == tuple(hw):
        return batch
    if mode == "nearest":
        return torch.nn.functional.interpolate(batch, size=hw, mode="nearest")
    return torch.nn.functional.interpolate(batch, size=hw, mode="bilinear", align_corners=False, antialias=True)


def _images_uint8(images, size: int) -> np.ndarray:
    """``N x 3 x H x W`` in [0, 1] (or 0..255) -> ``N x h x w x 3`` uint8."""
    batch = _as_tensor(images, "images")
    if batch.ndim == 3:  # N x H x W grey
        batch = batch[:, None]
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"images: expected N x 3 x H x W (or N x 1 x H x W), got shape {tuple(batch.shape)}")
    if batch.shape[1] == 1:
        batch = batch.repeat(1, 3, 1, 1)
    if float(batch.max()) > 1.0:  # 0..255 images
        batch = batch / 255.0
    small = _resize(batch, _fit(batch.shape[-2], batch.shape[-1], size))
    return (small.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _maps_2d(value, what: str, count: int) -> torch.Tensor:
    """A stack of maps (or masks) as ``N x 1 x h x w`` float, NaN/inf replaced; ``what`` names it in errors."""
    batch = _as_tensor(value, what)
    if batch.ndim == 3:
        batch = batch[:, None]
    if batch.ndim != 4 or batch.shape[1] != 1:
        raise ValueError(f"{what}: expected N x 1 x h x w (or N x h x w), got shape {tuple(batch.shape)}")
    if batch.shape[0] != count:
        raise ValueError(f"{what}: {batch.shape[0]} given for {count} images; pass one per image")
    return torch.nan_to_num(batch, nan=0.0, posinf=0.0, neginf=0.0)


def _jet_lut() -> np.ndarray:
    """256 x 3 uint8: matplotlib's ``jet``, the colours of :func:`vtfusion.viz.heatmap_grid`."""
    import matplotlib  # local: matplotlib is slow to import

    return (matplotlib.colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def _nice(value: float) -> float:
    """Six significant digits: enough for a threshold, short in the page."""
    return float(f"{value:.6g}")


def explorer_payload(images, maps: Mapping[str, object], masks=None, titles: Sequence[str] | None = None,
                     labels: Sequence[int] | None = None, scores: Sequence[float] | None = None,
                     size: int = DEFAULT_SIZE, map_size: int = DEFAULT_MAP_SIZE) -> dict:
    """Everything the front end draws from, as a JSON-able dict (the widget's ``payload``).

    Args:
        images: ``N x 3 x H x W`` in [0, 1].
        maps: name -> ``N x 1 x h x w`` (any resolution; stored with the longer side at most
            ``map_size``).
        masks: ``N x 1 x H x W`` ground truth (> 0.5 is defective), or ``None``.
        titles: one label per image (defect type, score...); default ``image i``.
        labels: 1 defective / 0 normal per image; default from ``masks`` (any pixel set),
            else unknown.
        scores: image scores to show beside each title (e.g. the model's ``score``).
        size: longer side of the stored images in pixels (16 to 1024).
        map_size: longer side of the stored maps in pixels (4 to 1024).

    Returns:
        a dict with ``count``, ``size`` (``[h, w]``), ``images`` and ``masks`` (packed),
        ``maps`` (list of ``name``, ``lo``, ``hi``, ``shape``, ``data``, ``scores``),
        ``titles``, ``labels``, ``scores``, ``lut`` and ``bins``; see :func:`unpack`.
    """
    if not isinstance(size, int) or not 16 <= size <= 1024:
        raise ValueError(f"size: expected an integer pixel count in 16..1024, got {size!r}")
    if not isinstance(map_size, int) or not 4 <= map_size <= 1024:
        raise ValueError(f"map_size: expected an integer pixel count in 4..1024, got {map_size!r}")
    if not maps:
        raise ValueError("maps: expected at least one map, e.g. {'final': pred['final']}")
    rgb = _images_uint8(images, size)
    count, height, width = rgb.shape[:3]
    if count == 0:
        raise ValueError("images: expected at least one image")

    mask_bits, truth = None, None
    if masks is not None:
        mask_batch = _maps_2d(masks, "masks", count)
        truth = (mask_batch > 0.5).flatten(1).any(dim=1).tolist()
        small = _resize((mask_batch > 0.5).float(), (height, width)) > 0.5
        mask_bits = _pack(np.packbits(small.numpy().reshape(-1)))

    if labels is None:
        labels = [int(t) for t in truth] if truth is not None else [None] * count
    labels = list(labels)
    if len(labels) != count or any(v not in (0, 1, None, True, False) for v in labels):
        raise ValueError(f"labels: expected {count} values of 0 (normal) or 1 (defective)")
    if titles is None:
        titles = [f"image {i}" for i in range(count)]
    titles = [str(t) for t in titles]
    if len(titles) != count:
        raise ValueError(f"titles: {len(titles)} titles for {count} images; pass one per image")
    if scores is not None:
        scores = [_nice(float(s)) for s in scores]
        if len(scores) != count:
            raise ValueError(f"scores: {len(scores)} scores for {count} images; pass one per image")

    packed_maps = []
    for name, value in maps.items():
        batch = _maps_2d(value, f"maps[{name!r}]", count)
        lo, hi = float(batch.min()), float(batch.max())
        if not hi > lo:
            hi = lo + 1e-6
        stored = _resize(batch, _fit(batch.shape[-2], batch.shape[-1], map_size))
        quantised = ((stored - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)
        packed_maps.append({
            "name": str(name), "lo": _nice(lo), "hi": _nice(hi), "shape": list(quantised.shape[-2:]),
            "data": _pack(quantised.numpy()),
            "scores": [_nice(s) for s in batch.flatten(1).amax(dim=1).tolist()],
        })
    return {
        "count": count, "size": [height, width], "images": _pack(rgb), "masks": mask_bits,
        "maps": packed_maps, "titles": titles, "labels": [None if v is None else int(v) for v in labels],
        "scores": scores, "lut": base64.b64encode(_jet_lut().tobytes()).decode(), "bins": HISTOGRAM_BINS,
    }


class HeatmapExplorer(anywidget.AnyWidget):
    """The explorer widget (see the module docstring). Build it with :func:`heatmap_explorer`.

    The view state (``image_index``, ``map_name``, ``compare_name``, ``thresholds``,
    ``opacity``, ``show_truth``) is synced both ways while a kernel runs, so a notebook can
    read what the reader chose; without a kernel the page keeps it to itself.
    """

    _esm = _front_end("explorer.js")
    _css = _front_end("explorer.css")
    payload = traitlets.Dict().tag(sync=True)
    image_index = traitlets.Int(0).tag(sync=True)
    map_name = traitlets.Unicode("").tag(sync=True)
    compare_name = traitlets.Unicode("").tag(sync=True)
    thresholds = traitlets.Dict().tag(sync=True)
    opacity = traitlets.Float(0.5).tag(sync=True)
    show_truth = traitlets.Bool(True).tag(sync=True)


def heatmap_explorer(images, maps: Mapping[str, object], masks=None, titles: Sequence[str] | None = None,
                     *, labels: Sequence[int] | None = None, scores: Sequence[float] | None = None,
                     map_name: str | None = None, compare: str | None = None,
                     threshold: float | Mapping[str, float] | None = None, opacity: float = 0.5,
                     size: int = DEFAULT_SIZE, map_size: int = DEFAULT_MAP_SIZE) -> HeatmapExplorer:
    """Interactive explorer of score maps that runs in the browser (no kernel, no network).

    Args:
        images: ``N x 3 x H x W`` in [0, 1].
        maps: name -> ``N x 1 x h x w``, e.g. ``{"vision": ..., "text": ..., "final": ...}``.
        masks: ``N x 1 x H x W`` ground truth, drawn as a red outline (toggle).
        titles: one label per image, e.g. its defect type.
        labels: 1 defective / 0 normal per image for the histogram; default from ``masks``.
        scores: image scores shown beside the titles (e.g. ``pred["score"]``).
        map_name: the map shown first; default ``final`` when present, else the first.
        compare: a second map shown beside the first (the reader can change it), or ``None``.
        threshold: one value for every map, or name -> value; default the middle of each
            map's range. The white outline marks the map at or above it.
        opacity: of the map over the image, 0 to 1.
        size: longer side in pixels of the images stored in the page.
        map_size: longer side in pixels of the maps stored in the page.

    Returns:
        the widget; display it as the last expression of a cell, and follow it with
        :func:`vtfusion.viz.heatmap_grid` so that a printed page shows the maps too.
    """
    payload = explorer_payload(images, maps, masks, titles, labels, scores, size, map_size)
    names = [m["name"] for m in payload["maps"]]
    if map_name is None:
        map_name = "final" if "final" in names else names[0]
    if map_name not in names:
        raise ValueError(f"map_name: {map_name!r} is not one of the maps {names}")
    if compare is not None and compare not in names:
        raise ValueError(f"compare: {compare!r} is not one of the maps {names}")
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity: expected a value in [0, 1], got {opacity!r}")
    thresholds = {m["name"]: _nice((m["lo"] + m["hi"]) / 2) for m in payload["maps"]}
    if isinstance(threshold, Mapping):
        unknown = sorted(set(threshold) - set(names))
        if unknown:
            raise ValueError(f"threshold: no map named {unknown}; the maps are {names}")
        thresholds.update({k: float(v) for k, v in threshold.items()})
    elif threshold is not None:
        if not math.isfinite(float(threshold)):
            raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
        thresholds = {k: float(threshold) for k in thresholds}
    return HeatmapExplorer(payload=payload, map_name=map_name, compare_name=compare or "",
                           thresholds=thresholds, opacity=float(opacity))
