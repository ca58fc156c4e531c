"""The procedurally generated toy industrial anomaly-detection dataset.

The package draws its own small dataset so that every chapter, test and CPU run has
data without a download. Four categories (:data:`vtfusion.data.categories.TOY`):

* ``weave`` (texture): plain-woven fabric, warp and weft yarns with twist, slubs and
  a slightly irregular lattice.
* ``granite`` (texture): polished speckled stone, feldspar, quartz and mica grains.
* ``washer`` (object): a turned steel washer on a dark mat, with small changes of
  position, tilt, size and lighting.
* ``chip`` (object): an SOIC package with gull-wing leads soldered on gold pads of a
  green board, with small shifts and rotations.

Normal images vary a little (position, rotation, colour, lighting, texture phase) so
that the task is learnable but not trivial. Defects are drawn physically (height
fields lit by the scene's light, material colours, shadows) with numpy/scipy
primitives of their own. They deliberately share nothing with the synthetic
anomalies of DAS (:mod:`vtfusion.das`: cut-paste, blurred blobs, noise patches,
crack walks filled with image copies): evaluating on toy data must not be
in-distribution for the method's own training signal.

Every ground-truth mask is exact: it is the set of pixels where the defect changed
the image. :func:`render_defect` leaves every pixel outside its mask untouched and
changes every pixel inside it.

Layout (MVTec AD)::

    <root>/manifest.json                                        (config and the files written)
    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect_type>/000.png ...
    <root>/<category>/ground_truth/<defect_type>/000_mask.png   (0/255, single channel)
    <root>/<category>/val/good/000.png ...                      (validation split)
    <root>/<category>/val/<defect_type>/000.png ...
    <root>/<category>/val_ground_truth/<defect_type>/000_mask.png

The **validation split** (``val``) holds normal and defective images drawn from other
seeds than the test split (the split name is part of every image's seed). Every default
the project chooses is chosen on it, never on ``test`` (:mod:`vtfusion.validation`).

Generation is deterministic: every image has its own random generator derived from
``(seed, category, split, index)`` through :class:`numpy.random.SeedSequence`, so the
files do not depend on the order (or subset) in which they are generated, and the
same seed gives byte-identical PNG files (on the same platform; float rounding of
another CPU's math library may move a pixel by one level).

Command line: ``python -m vtfusion.data.toy [--root DIR] [--seed N] [--ensure|--force]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from vtfusion import __version__, paths
from vtfusion.data.categories import TOY_CATEGORIES
from vtfusion.data.layout import GOOD, MASK_FOLDERS
from vtfusion.data.registry import root_digest
from vtfusion.io import atomic_write_text

GENERATOR_VERSION = "toy-2"
"""Bump whenever the drawing code changes: a new version regenerates every copy."""

MANIFEST_NAME = "manifest.json"

GENERATOR_NAME = "vtfusion.data.toy"

DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "weave": ("cut", "hole", "stain", "thread"),
    "granite": ("crack", "hole", "scratch", "stain"),
    "washer": ("dent", "missing_part", "scratch", "stain"),
    "chip": ("bent_pin", "missing_pin", "scratch", "stain"),
}


# ---------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyConfig:
    """What to generate.

    Attributes:
        seed: root of every per-image random generator; same seed, same files.
        image_size: side of the square RGB images (256 by default, deliberately not the
            model's 240 so that the loader's resize is exercised).
        n_train: normal training images per category (``train/good``).
        n_test_good: normal test images per category (``test/good``).
        n_test_per_defect: defective test images per defect type.
        n_val_good: normal validation images per category (``val/good``).
        n_val_per_defect: defective validation images per defect type (``val/<defect>``).
        categories: which toy categories to write (default: all four).
    """

    seed: int = 0
    image_size: int = 256
    n_train: int = 20
    n_test_good: int = 12
    n_test_per_defect: int = 4
    n_val_good: int = 20
    n_val_per_defect: int = 5
    categories: tuple[str, ...] = TOY_CATEGORIES

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"ToyConfig.seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.image_size, int) or self.image_size < 64:
            raise ValueError(f"ToyConfig.image_size must be an integer >= 64 pixels, got {self.image_size!r}")
        for name in ("n_train", "n_test_good", "n_test_per_defect", "n_val_good", "n_val_per_defect"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0 or value > 999:
                raise ValueError(f"ToyConfig.{name} must be an integer in [0, 999], got {value!r}")
        if self.n_train < 1:
            raise ValueError("ToyConfig.n_train must be at least 1 (few-shot training draws from train/good)")
        cats = tuple(self.categories)
        object.__setattr__(self, "categories", cats)
        if not cats:
            raise ValueError(f"ToyConfig.categories is empty; choose from {', '.join(TOY_CATEGORIES)}")
        for cat in cats:
            _check_category(cat)
        if len(set(cats)) != len(cats):
            raise ValueError(f"ToyConfig.categories has duplicates: {cats}")


def toy_defect_types(category: str) -> tuple[str, ...]:
    """The defect types drawn for a toy ``category`` (sorted, as they appear on disk)."""
    _check_category(category)
    return DEFECT_TYPES[category]


def _check_category(category: str) -> None:
    if category not in DEFECT_TYPES:
        raise ValueError(f"unknown toy category {category!r}; valid categories: {', '.join(TOY_CATEGORIES)}")


def _check_defect(category: str, defect_type: str) -> None:
    _check_category(category)
    if defect_type not in DEFECT_TYPES[category]:
        raise ValueError(f"unknown defect type {defect_type!r} for toy category {category!r}; "
                         f"valid defect types: {', '.join(DEFECT_TYPES[category])}")


# ---------------------------------------------------------------------------------
# small drawing primitives
# ---------------------------------------------------------------------------------


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)`` as float arrays of ``shape``."""
    yy, xx = np.indices(shape, dtype=np.float64)
    return yy, xx


def _bspline_taps(n: int, step: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Lattice indices (first of 4) and cubic B-spline weights that sample a lattice of
    spacing ``step`` at pixels ``0..n-1``; also the lattice length needed."""
    pos = np.arange(n) / step + 1.0
    i = np.floor(pos).astype(np.int64)
    t = pos - i
    w = np.stack([(1 - t) ** 3, 3 * t ** 3 - 6 * t ** 2 + 4, -3 * t ** 3 + 3 * t ** 2 + 3 * t + 1, t ** 3], 1) / 6
    return i - 1, w, int(i.max()) + 3


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Smooth random field with about ``cells`` undulations across the longer side, unit std.

    A random lattice interpolated with separable cubic B-splines (4 taps per axis:
    much cheaper than blurring white noise, and no BLAS threads involved).
    """
    h, w = shape
    step = max(h, w) / max(cells, 1.0)
    ri, rw, rn = _bspline_taps(h, step)
    ci, cw, cn = _bspline_taps(w, step)
    lattice = rng.standard_normal((rn, cn))
    rows = sum(rw[:, k, None] * lattice[ri + k] for k in range(4))            # h x cn
    field = sum(cw[None, :, k] * rows[:, ci + k] for k in range(4))           # h x w
    return (field - field.mean()) / (field.std() + 1e-9)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _luminance(img: np.ndarray) -> np.ndarray:
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def _unit(angle: float) -> np.ndarray:
    """Unit vector ``(y, x)`` of an image-plane angle (radians, x to the right, y down)."""
    return np.array([np.sin(angle), np.cos(angle)])


def _texture_light(rng: np.random.Generator) -> np.ndarray:
    """Direction towards the light, ``(y, x)``: from the upper left, with jitter."""
    return _unit(np.deg2rad(rng.uniform(-150.0, -110.0)))


@dataclass
class _Crop:
    """A rectangular window of the image and its pixel coordinates."""

    ys: slice
    xs: slice
    yy: np.ndarray
    xx: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.yy.shape


def _crop_around(points: np.ndarray, margin: float, shape: tuple[int, int]) -> _Crop:
    """Bounding window of ``points`` (``n x 2`` as y, x) grown by ``margin``, clipped to the image."""
    h, w = shape
    y0 = int(max(0, np.floor(points[:, 0].min() - margin)))
    y1 = int(min(h, np.ceil(points[:, 0].max() + margin) + 1))
    x0 = int(max(0, np.floor(points[:, 1].min() - margin)))
    x1 = int(min(w, np.ceil(points[:, 1].max() + margin) + 1))
    y1, x1 = max(y1, y0 + 1), max(x1, x0 + 1)
    yy, xx = np.indices((y1 - y0, x1 - x0), dtype=np.float64)
    return _Crop(slice(y0, y1), slice(x0, x1), yy + y0, xx + x0)


def _polyline_field(points: np.ndarray, yy: np.ndarray, xx: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance to a polyline, arc length of the nearest point and side of the line.

    Args:
        points: ``n x 2`` vertices (y, x), n >= 2.
        yy, xx: pixel coordinates (any shape).
    Returns:
        ``dist`` (pixels), ``arc`` (pixels from the first vertex along the line) and
        ``side`` (+1 left / -1 right of the direction of travel), each of ``yy``'s shape.
    """
    a, b = points[:-1], points[1:]
    d = b - a
    seg_len = np.sqrt((d ** 2).sum(1)) + 1e-12
    cum = np.concatenate([[0.0], np.cumsum(seg_len)[:-1]])
    py, px = yy.reshape(-1, 1), xx.reshape(-1, 1)
    ry, rx = py - a[:, 0], px - a[:, 1]
    t = np.clip((ry * d[:, 0] + rx * d[:, 1]) / seg_len ** 2, 0.0, 1.0)
    dy, dx = ry - t * d[:, 0], rx - t * d[:, 1]
    dist2 = dy * dy + dx * dx
    k = np.argmin(dist2, axis=1)
    rows = np.arange(len(k))
    dist = np.sqrt(dist2[rows, k])
    arc = cum[k] + t[rows, k] * seg_len[k]
    cross = d[k, 1] * ry[rows, k] - d[k, 0] * rx[rows, k]
    side = np.where(cross >= 0, 1.0, -1.0)
    return dist.reshape(yy.shape), arc.reshape(yy.shape), side.reshape(yy.shape)


def _smooth_path(rng: np.random.Generator, start: np.ndarray, heading: float, length: float,
                 bend: float, n: int = 40) -> np.ndarray:
    """A gently curving path (``n x 2``, y/x): heading changes smoothly (a quadratic plus a sine)."""
    t = np.linspace(0.0, 1.0, n)
    k1, k2 = rng.normal(0.0, bend, 2)
    wobble = rng.normal(0.0, bend * 0.3) * np.sin(2 * np.pi * t * rng.uniform(0.5, 1.5) + rng.uniform(0, 6.3))
    ang = heading + k1 * t + k2 * t * t + wobble
    step = length / (n - 1)
    dy, dx = np.sin(ang) * step, np.cos(ang) * step
    pts = np.stack([np.concatenate([[0.0], np.cumsum(dy[:-1])]),
                    np.concatenate([[0.0], np.cumsum(dx[:-1])])], axis=1)
    return pts + start


def _fractal_path(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, roughness: float, depth: int = 6
                  ) -> np.ndarray:
    """Midpoint-displacement polyline from ``a`` to ``b`` (a fracture line, 2**depth segments)."""
    pts = np.stack([a, b]).astype(np.float64)
    scale = roughness
    for _ in range(depth):
        mids = (pts[:-1] + pts[1:]) / 2
        seg = pts[1:] - pts[:-1]
        normal = np.stack([seg[:, 1], -seg[:, 0]], axis=1)
        mids = mids + normal * rng.normal(0.0, scale, (len(mids), 1))
        out = np.empty((len(pts) + len(mids), 2))
        out[0::2], out[1::2] = pts, mids
        pts = out
        scale *= 0.7
    return pts


def _blob(yy: np.ndarray, xx: np.ndarray, center: np.ndarray, radius: float, rng: np.random.Generator,
          rough: float = 0.25, harmonics: int = 7, stretch: float = 1.0) -> np.ndarray:
    """Normalised radius of an irregular star-shaped region: ``< 1`` inside.

    The outline's radius is ``radius`` times a random Fourier series in the polar angle
    (amplitudes falling as 1/k), optionally stretched along a random direction.
    """
    dy, dx = yy - center[0], xx - center[1]
    if stretch != 1.0:
        phi = rng.uniform(0, np.pi)
        c, s = np.cos(phi), np.sin(phi)
        u, v = c * dx + s * dy, -s * dx + c * dy
        dx, dy = u / stretch, v
    ang = np.arctan2(dy, dx)
    rad = np.ones_like(ang)
    for k in range(2, harmonics + 1):
        rad += rough * rng.normal() / k * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    rad = radius * np.maximum(rad, 0.35)
    return np.hypot(dy, dx) / rad


def _relief(h: np.ndarray, light: np.ndarray, strength: float) -> np.ndarray:
    """Shading factor of a height field lit from ``light`` ((y, x) towards the light).

    Lambertian, linearised around a flat surface: ``1 - k (dh/dx Lx + dh/dy Ly)``.
    """
    gy, gx = np.gradient(h)
    return 1.0 - strength * (gx * light[1] + gy * light[0])


def _finish(clean: np.ndarray, target: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make the defective image and its exact mask.

    Pixels outside ``support`` are copied from ``clean``; inside it the rounded
    ``target`` is used, and the rare support pixel whose value rounds back to the clean
    one is moved by two grey levels in the defect's direction. So the returned mask is
    exactly the set of changed pixels.
    """
    if not support.any():
        raise RuntimeError("internal error: a toy defect produced an empty support")
    out = clean.copy()
    new = np.clip(np.rint(target), 0, 255).astype(np.uint8)
    out[support] = new[support]
    same = support & np.all(out == clean, axis=-1)
    if same.any():
        base = clean[same].astype(np.int16)
        direction = (target[same] - base).sum(-1)
        sign = np.where(direction < 0, -1, 1)[:, None]
        cand = np.clip(base + 2 * sign, 0, 255)
        stuck = np.all(cand == base, axis=-1)
        cand[stuck] = np.clip(base[stuck] - 2 * sign[stuck], 0, 255)
        out[same] = cand.astype(np.uint8)
    return out, support.copy()


def _rand_point(rng: np.random.Generator, size: int, margin: float) -> np.ndarray:
    return rng.uniform(margin, size - margin, 2)


def _pick_pixel(rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    """A random pixel (y, x) of a boolean ``region``."""
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        raise ValueError("no room for the defect in this image")
    i = rng.integers(len(ys))
    return np.array([ys[i], xs[i]], dtype=np.float64) + rng.uniform(-0.5, 0.5, 2)


# ---------------------------------------------------------------------------------
# weave: plain-woven fabric
# ---------------------------------------------------------------------------------

_WEAVE_WARP = np.array([146.0, 118.0, 84.0])
_WEAVE_WEFT = np.array([182.0, 160.0, 120.0])
_WEAVE_UNDER = np.array([34.0, 28.0, 24.0])  # what shows through the gaps (the table)


def _yarn_shade(a: np.ndarray, b: np.ndarray, light_across: float, twist_phase: np.ndarray) -> np.ndarray:
    """Brightness of a yarn: ``a`` across it in [-1, 1], ``b`` along the float in [-1, 1].

    A cylinder lit from the side, darker where the yarn dives under its neighbour,
    with the diagonal stripes of the yarn's twist.
    """
    nz = np.sqrt(np.clip(1.0 - a * a, 0.0, 1.0))
    across = 0.5 + 0.5 * nz + 0.22 * a * light_across
    along = 1.0 - 0.38 * np.clip(np.abs(b), 0, 1) ** 3
    twist = 1.0 + 0.07 * np.cos(2 * np.pi * (twist_phase + 0.55 * a))
    return across * along * twist


def _render_weave(rng: np.random.Generator, size: int) -> np.ndarray:
    s = size / 256.0
    yy, xx = _grid((size, size))
    pitch = rng.uniform(9.0, 10.0) * s
    theta = np.deg2rad(rng.uniform(-3.0, 3.0))
    light = _texture_light(rng)
    # natural irregularity: the lattice is slightly warped
    x = xx + _value_noise(rng, (size, size), 4) * 0.9 * s
    y = yy + _value_noise(rng, (size, size), 4) * 0.9 * s
    c, sn = np.cos(theta), np.sin(theta)
    u = (c * x + sn * y) / pitch + rng.uniform(0.0, 2.0)
    v = (-sn * x + c * y) / pitch + rng.uniform(0.0, 2.0)
    i, j = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - i, v - j
    n_tab = 97  # per-yarn irregularity tables (position, thickness, tone = slubs)
    off_w, off_f = rng.normal(0, 0.035, n_tab), rng.normal(0, 0.035, n_tab)
    hw_w, hw_f = rng.uniform(0.37, 0.45, n_tab), rng.uniform(0.37, 0.45, n_tab)
    tone_w, tone_f = 1 + rng.normal(0, 0.045, n_tab), 1 + rng.normal(0, 0.045, n_tab)
    iw, jf = np.mod(i, n_tab), np.mod(j, n_tab)
    a_warp = (fu - 0.5 - off_w[iw]) / hw_w[iw]
    a_weft = (fv - 0.5 - off_f[jf]) / hw_f[jf]
    b_warp, b_weft = 2 * fv - 1, 2 * fu - 1
    warp_top = (i + j) % 2 == 0

    # fibre streaks run along each yarn (vertical for warp, horizontal for weft)
    noise = rng.standard_normal((2, size, size))
    streak_w = ndimage.gaussian_filter(noise[0], (3.5 * s, 0.6 * s))
    streak_f = ndimage.gaussian_filter(noise[1], (0.6 * s, 3.5 * s))
    streak_w /= streak_w.std() + 1e-9
    streak_f /= streak_f.std() + 1e-9

    jitter = 1 + rng.normal(0, 0.015, 3)
    bright = rng.uniform(0.94, 1.06)
    warp_rgb = _WEAVE_WARP * jitter * bright
    weft_rgb = _WEAVE_WEFT * jitter * bright

    shade_w = _yarn_shade(a_warp, b_warp, light[1], v * 3.1) * tone_w[iw] * (1 + 0.06 * streak_w)
    shade_f = _yarn_shade(a_weft, b_weft, light[0], u * 3.1) * tone_f[jf] * (1 + 0.06 * streak_f)
    cov_w = np.clip((1 - np.abs(a_warp)) * hw_w[iw] * pitch + 0.5, 0, 1)
    cov_f = np.clip((1 - np.abs(a_weft)) * hw_f[jf] * pitch + 0.5, 0, 1)

    col_w = shade_w[..., None] * warp_rgb
    col_f = shade_f[..., None] * weft_rgb
    top = np.where(warp_top[..., None], col_w, col_f)
    under = np.where(warp_top[..., None], col_f, col_w) * 0.5
    cov_top = np.where(warp_top, cov_w, cov_f)[..., None]
    cov_under = np.where(warp_top, cov_f, cov_w)[..., None]
    img = cov_top * top + (1 - cov_top) * (cov_under * under + (1 - cov_under) * _WEAVE_UNDER)

    lighting = 1 + 0.05 * _value_noise(rng, (size, size), 1.5) + 0.04 * (
        light[1] * (0.5 - xx / size) + light[0] * (0.5 - yy / size))
    img = img * lighting[..., None] * (1 + 0.015 * rng.standard_normal((size, size, 1)))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _fabric_colour(img: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Median colour of the brighter (top yarn) pixels of ``region``."""
    px = img[region]
    if len(px) == 0:
        px = img.reshape(-1, 3)
    lum = _luminance(px)
    return np.median(px[lum >= np.median(lum)], axis=0)


def _weave_hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    s = size / 256.0
    center = _rand_point(rng, size, 24 * s)
    radius = rng.uniform(6.0, 12.0) * s
    crop = _crop_around(center[None], radius * 2.2 + 8 * s, img.shape[:2])
    yy, xx = crop.yy, crop.xx
    rho = _blob(yy, xx, center, radius, rng, rough=0.35, harmonics=11, stretch=rng.uniform(1.0, 1.6))
    hole = rho < 1.0
    rim = (rho >= 1.0) & (rho < 1.0 + 2.5 * s / radius)
    patch = img[crop.ys, crop.xs].astype(np.float64)
    fabric = _fabric_colour(patch, (rho > 1.6) & (rho < 2.4))
    light = _texture_light(rng)

    out = patch.copy()
    # the table below the fabric, in the shadow of the hole's lit rim
    dark = np.clip(1 - rho, 0, 1) * 0.5 + 0.5
    under = _WEAVE_UNDER * 0.6 * rng.uniform(0.7, 1.2) * (1 + 0.06 * rng.standard_normal(patch.shape))
    out[hole] = (under * dark[..., None])[hole]
    # the yarns around the hole are pulled and frayed: darker, slightly desaturated
    t = np.clip((rho - 1.0) / (2.5 * s / radius), 0, 1)[..., None]
    grey = patch.mean(-1, keepdims=True)
    frayed = (0.62 + 0.38 * t) * (patch * 0.8 + grey * 0.2)
    out[rim] = frayed[rim]
    support = hole | rim
    # broken yarn ends hanging into the hole, along the warp or weft direction
    for _ in range(int(rng.integers(8, 16))):
        ang = rng.uniform(0, 2 * np.pi)
        edge = center + _boundary_radius(rho, yy, xx, center, ang) * np.array([np.sin(ang), np.cos(ang)])
        inward = center - edge
        if rng.random() < 0.5:
            step = np.array([np.sign(inward[0]) or 1.0, 0.0])
        else:
            step = np.array([0.0, np.sign(inward[1]) or 1.0])
        length = rng.uniform(2.0, 6.0) * s
        width = rng.uniform(3.0, 5.5) * s  # a broken yarn is nearly as wide as a yarn
        seg = np.stack([edge - step * 1.0 * s, edge + step * length])
        dist, arc, side = _polyline_field(seg, yy, xx)
        a = np.clip(dist / (width / 2), 0, 1)
        alpha = np.clip(width / 2 - dist + 0.5, 0, 1) * (rho < 1.15)
        shade = (0.55 + 0.45 * np.sqrt(1 - a * a) + 0.2 * side * a * light[1]) \
            * (0.85 + 0.15 * np.cos(2 * np.pi * arc / (3 * s)))
        yarn = shade[..., None] * fabric
        out = out * (1 - alpha[..., None]) + yarn * alpha[..., None]
        support |= alpha > 0
    return _paste(img, crop, out, support)


def _boundary_radius(rho: np.ndarray, yy: np.ndarray, xx: np.ndarray, center: np.ndarray, ang: float) -> float:
    """Distance from ``center`` to where ``rho`` crosses 1 along direction ``ang`` (nearest pixel)."""
    dy, dx = yy - center[0], xx - center[1]
    d = np.hypot(dy, dx)
    along = np.abs(np.angle(np.exp(1j * (np.arctan2(dy, dx) - ang)))) < 0.15
    inside = along & (rho < 1.0)
    return float(d[inside].max()) if inside.any() else 1.0


def _paste(img: np.ndarray, crop: _Crop, patch_out: np.ndarray, patch_support: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Full-size target image and support from a crop's result."""
    target = img.astype(np.float64)
    support = np.zeros(img.shape[:2], dtype=bool)
    target[crop.ys, crop.xs] = np.where(patch_support[..., None], patch_out, target[crop.ys, crop.xs])
    support[crop.ys, crop.xs] = patch_support
    return target, support


_STAIN_TINTS = {
    "coffee": np.array([0.60, 0.44, 0.30]),
    "oil": np.array([0.55, 0.52, 0.42]),
    "rust": np.array([0.80, 0.48, 0.30]),
    "ink": np.array([0.42, 0.46, 0.68]),
}


def _absorbed_stain(img: np.ndarray, rng: np.random.Generator, radius_px: tuple[float, float],
                    tints: Sequence[str], strength: tuple[float, float], fibre_axis: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A liquid soaked into the material: a tinted region with a darker tide line.

    The colour is multiplied (the texture stays visible through it); the outline is
    irregular and, on fabric, wicks a little along the yarns.
    """
    size = img.shape[0]
    s = size / 256.0
    radius = rng.uniform(*radius_px) * s
    center = _rand_point(rng, size, radius * 0.8 + 8 * s)
    crop = _crop_around(center[None], radius * 2.0 + 4, img.shape[:2])
    yy, xx = crop.yy, crop.xx
    rho = _blob(yy, xx, center, radius, rng, rough=0.3, harmonics=7, stretch=rng.uniform(1.0, 1.7))
    if fibre_axis:  # wicking along warp and weft makes the edge fibrous
        streak = ndimage.gaussian_filter(rng.standard_normal(rho.shape), (2.5 * s, 0.5 * s)) + \
            ndimage.gaussian_filter(rng.standard_normal(rho.shape), (0.5 * s, 2.5 * s))
        rho = rho + 0.08 * streak / (streak.std() + 1e-9) * _smoothstep(0.5, 1.0, rho)
    inside = rho < 1.0
    tint = _STAIN_TINTS[tints[int(rng.integers(len(tints)))]] * (1 + rng.normal(0, 0.03, 3))
    alpha = rng.uniform(*strength)
    uneven = 0.8 + 0.2 * _value_noise(rng, rho.shape, max(2.0, rho.shape[0] / (6 * s)))
    tide = 1.0 + 0.6 * _smoothstep(0.8, 0.98, rho)  # pigment piles up at the drying edge
    k = np.clip(alpha * uneven * tide, 0, 1)[..., None]
    patch = img[crop.ys, crop.xs].astype(np.float64)
    out = patch * (1 - k * (1 - tint))
    return _paste(img, crop, out, inside)


def _weave_stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return _absorbed_stain(img, rng, (9.0, 20.0), ("coffee", "oil", "ink", "rust"), (0.6, 0.9), True)


def _weave_thread(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A loose foreign yarn lying on the fabric, casting a thin shadow."""
    size = img.shape[0]
    s = size / 256.0
    length = rng.uniform(50.0, 110.0) * s
    start = _rand_point(rng, size, 30 * s)
    to_center = np.array([size / 2, size / 2]) - start
    heading = np.arctan2(to_center[0], to_center[1]) + rng.uniform(-0.8, 0.8)
    pts = _smooth_path(rng, start, heading, length, bend=1.6, n=48)
    width = rng.uniform(2.2, 3.6) * s
    light = _texture_light(rng)
    crop = _crop_around(pts, width + 6 * s, img.shape[:2])
    yy, xx = crop.yy, crop.xx
    dist, arc, side = _polyline_field(pts, yy, xx)
    shadow_off = -light * 1.6 * s  # shadow falls away from the light
    sdist, _, _ = _polyline_field(pts, yy - shadow_off[0], xx - shadow_off[1])
    alpha = np.clip(width / 2 - dist + 0.5, 0, 1)
    shadow = np.clip(width / 2 + 0.8 * s - sdist + 0.5, 0, 1) * 0.45
    colours = [np.array([52.0, 40.0, 34.0]), np.array([232.0, 228.0, 220.0]),
               np.array([168.0, 42.0, 38.0]), np.array([44.0, 64.0, 138.0])]
    colour = colours[int(rng.integers(len(colours)))] * (1 + rng.normal(0, 0.04, 3))
    a = np.clip(dist / (width / 2), 0, 1) * side
    ny = np.sqrt(np.clip(1 - a * a, 0, 1))
    # local direction of the yarn to light its side facing the light
    shade = (0.5 + 0.5 * ny + 0.25 * a * _side_light(pts, arc, light)) \
        * (1 + 0.09 * np.cos(2 * np.pi * (arc / (2.4 * s) + 0.5 * a)))
    patch = img[crop.ys, crop.xs].astype(np.float64)
    out = patch * (1 - shadow[..., None])
    out = out * (1 - alpha[..., None]) + (shade[..., None] * colour) * alpha[..., None]
    support = (alpha > 0) | (shadow > 0.02)
    return _paste(img, crop, out, support)


def _side_light(pts: np.ndarray, arc: np.ndarray, light: np.ndarray) -> np.ndarray:
    """How much the left side (``side=+1``) of the path faces the light, per pixel."""
    seg = np.diff(pts, axis=0)
    seg_len = np.sqrt((seg ** 2).sum(1))
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    k = np.clip(np.searchsorted(cum, arc) - 1, 0, len(seg) - 1)
    d = seg[k] / (seg_len[k][..., None] + 1e-12)
    left = np.stack([-d[..., 1], d[..., 0]], axis=-1)  # (y, x) normal on the side where cross >= 0
    return -(left[..., 0] * light[0] + left[..., 1] * light[1])


def _weave_cut(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A slit: severed yarns spring apart into a lens-shaped gap with frayed lips."""
    size = img.shape[0]
    s = size / 256.0
    length = rng.uniform(26.0, 50.0) * s
    center = _rand_point(rng, size, length / 2 + 12 * s)
    heading = rng.uniform(0, np.pi)
    d = np.array([np.sin(heading), np.cos(heading)])
    pts = _smooth_path(rng, center - d * length / 2, heading, length, bend=0.25, n=16)
    open_w = rng.uniform(3.0, 5.0) * s
    crop = _crop_around(pts, open_w + 6 * s, img.shape[:2])
    yy, xx = crop.yy, crop.xx
    dist, arc, side = _polyline_field(pts, yy, xx)
    t = np.clip(arc / length, 0, 1)
    half = open_w / 2 * np.sqrt(np.sin(np.pi * t)) + 0.35 * s
    gap = dist < half
    lip = (dist >= half) & (dist < half + 2.2 * s) & (t > 0.0) & (t < 1.0)
    patch = img[crop.ys, crop.xs].astype(np.float64)
    fabric = _fabric_colour(patch, dist > half + 4 * s)
    out = patch.copy()
    under = _WEAVE_UNDER * 0.6 * rng.uniform(0.7, 1.1) * (1 + 0.06 * rng.standard_normal(patch.shape))
    out[gap] = under[gap]
    lip_t = np.clip((dist - half) / (2.2 * s), 0, 1)[..., None]
    out[lip] = ((0.6 + 0.4 * lip_t) * patch)[lip]
    support = gap | lip
    # fibres bridging the slit from both lips
    for _ in range(int(rng.integers(3, 8))):
        tt = rng.uniform(0.15, 0.85)
        base = _point_at(pts, tt * length)
        normal = _normal_at(pts, tt * length) * rng.choice([-1.0, 1.0])
        w_here = open_w / 2 * np.sqrt(np.sin(np.pi * tt))
        seg = np.stack([base + normal * (w_here + 0.8 * s), base + normal * (w_here * rng.uniform(-0.2, 0.6))])
        fdist, _, _ = _polyline_field(seg, yy, xx)
        alpha = np.clip(0.6 * s - fdist + 0.5, 0, 1) * 0.85
        out = out * (1 - alpha[..., None]) + (fabric * 1.05) * alpha[..., None]
        support |= alpha > 0
    return _paste(img, crop, out, support)


def _point_at(pts: np.ndarray, arc: float) -> np.ndarray:
    seg = np.diff(pts, axis=0)
    cum = np.concatenate([[0.0], np.cumsum(np.sqrt((seg ** 2).sum(1)))])
    k = int(np.clip(np.searchsorted(cum, arc) - 1, 0, len(seg) - 1))
    f = (arc - cum[k]) / max(cum[k + 1] - cum[k], 1e-9)
    return pts[k] + seg[k] * f


def _normal_at(pts: np.ndarray, arc: float) -> np.ndarray:
    seg = np.diff(pts, axis=0)
    cum = np.concatenate([[0.0], np.cumsum(np.sqrt((seg ** 2).sum(1)))])
    k = int(np.clip(np.searchsorted(cum, arc) - 1, 0, len(seg) - 1))
    d = seg[k] / (np.linalg.norm(seg[k]) + 1e-12)
    return np.array([d[1], -d[0]])


# ---------------------------------------------------------------------------------
# granite: polished speckled stone
# ---------------------------------------------------------------------------------

# mineral: (colour, share of grains, relative grain area)
_GRANITE_MINERALS = (
    (np.array([198.0, 152.0, 134.0]), 0.32, 1.6),   # pink feldspar
    (np.array([214.0, 208.0, 200.0]), 0.20, 1.2),   # white feldspar
    (np.array([132.0, 130.0, 128.0]), 0.30, 0.9),   # smoky quartz
    (np.array([36.0, 34.0, 36.0]), 0.18, 0.45),     # biotite / hornblende
)


def _render_granite(rng: np.random.Generator, size: int) -> np.ndarray:
    s = size / 256.0
    yy, xx = _grid((size, size))
    # grains: a power diagram of one jittered seed per lattice cell (a weighted Worley
    # pattern); a grain's weight is its area, so minerals come in different grain sizes
    cell = rng.uniform(5.2, 6.0) * s
    gh = int(np.ceil(size / cell)) + 4
    seeds = (np.stack(np.indices((gh, gh)), -1) - 2 + rng.random((gh, gh, 2))) * cell
    n = gh * gh
    shares = np.array([m[1] for m in _GRANITE_MINERALS])
    kind = rng.choice(len(_GRANITE_MINERALS), size=n, p=shares / shares.sum())
    area = np.array([m[2] for m in _GRANITE_MINERALS])[kind] * rng.gamma(3.0, 1 / 3.0, n) * cell * cell
    qy = yy + _value_noise(rng, (size, size), 24) * 0.9 * s
    qx = xx + _value_noise(rng, (size, size), 24) * 0.9 * s
    cy, cx = np.floor(qy / cell).astype(np.int64) + 2, np.floor(qx / cell).astype(np.int64) + 2
    best = np.full((size, size), np.inf)
    grain = np.zeros((size, size), dtype=np.int64)
    for oy in range(-1, 2):
        for ox in range(-1, 2):
            gy, gx = np.clip(cy + oy, 0, gh - 1), np.clip(cx + ox, 0, gh - 1)
            idx = gy * gh + gx
            sd = seeds[gy, gx]
            power = (qy - sd[..., 0]) ** 2 + (qx - sd[..., 1]) ** 2 - area[idx] / np.pi
            better = power < best
            best = np.where(better, power, best)
            grain = np.where(better, idx, grain)

    tint = 1 + rng.normal(0, 0.035, 3)
    bright = rng.uniform(0.92, 1.06)
    colours = np.stack([m[0] for m in _GRANITE_MINERALS])[kind] * (1 + rng.normal(0, 0.07, (n, 1))) \
        * (1 + rng.normal(0, 0.025, (n, 3)))
    img = colours[grain]
    # cleavage stripes in feldspar, cloudy translucency in quartz
    phi = rng.uniform(0, np.pi, n)[grain]
    stripes = np.cos(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / (3.0 * s))
    k = kind[grain]
    cloud = _value_noise(rng, (size, size), 20)
    mod = 1 + np.where(k <= 1, 0.035 * stripes, 0.0) + np.where(k == 2, 0.07 * cloud, 0.0)
    # mica glitter in the dark grains
    glitter = (k == 3) & (rng.random((size, size)) < 0.03)
    mod = mod + glitter * rng.uniform(0.8, 2.5, (size, size))
    # polished grain boundaries read as fine dark seams
    edge = (grain != np.roll(grain, 1, 0)) | (grain != np.roll(grain, 1, 1))
    mod = mod * np.where(edge, 0.9, 1.0)
    img = img * mod[..., None]
    img = ndimage.gaussian_filter(img, (0.55 * s, 0.55 * s, 0))  # optics: a touch of softness
    light = _texture_light(rng)
    sheen = 1 + 0.05 * _value_noise(rng, (size, size), 1.5) + 0.05 * (
        light[1] * (0.5 - xx / size) + light[0] * (0.5 - yy / size))
    img = img * sheen[..., None] * tint * bright + 2.0 * rng.standard_normal((size, size, 1))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _granite_scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scratches through the polish: crushed crystal powder reads as a whitish line."""
    size = img.shape[0]
    s = size / 256.0
    target = img.astype(np.float64)
    support = np.zeros(img.shape[:2], dtype=bool)
    heading = rng.uniform(0, np.pi)
    start = _rand_point(rng, size, 50 * s)
    light = _texture_light(rng)
    for n in range(int(rng.integers(1, 4))):
        length = rng.uniform(50.0, 120.0) * s
        offset = np.array([-np.cos(heading), np.sin(heading)]) * rng.uniform(-8, 8) * s * (n > 0)
        begin = start + offset - _unit(heading) * rng.uniform(0, 20) * s
        pts = _smooth_path(rng, begin, heading + rng.normal(0, 0.06), length, bend=0.12, n=32)
        width = rng.uniform(0.8, 1.6) * s
        crop = _crop_around(pts, width + 3 * s, img.shape[:2])
        dist, arc, side = _polyline_field(pts, crop.yy, crop.xx)
        strength = np.interp(arc, np.linspace(0, length, 12), np.clip(rng.uniform(0.2, 1.3, 12), 0, 1))
        core = np.clip(width - dist + 0.5, 0, 1) * strength
        groove = -np.clip(1 - dist / (width + 1.0 * s), 0, 1) ** 2 * 2.0
        shade = _relief(groove, light, 0.25)
        patch = target[crop.ys, crop.xs]
        lit = patch * np.where(core > 0, 1.0, shade)[..., None]
        out = lit + (235.0 - lit) * (0.65 * core)[..., None]
        sup = (core > 0.05) | ((np.abs(shade - 1) > 0.02) & (strength > 0.05))
        sup &= np.isfinite(arc) & (arc > 0) & (arc < length)
        target[crop.ys, crop.xs] = np.where(sup[..., None], out, patch)
        support[crop.ys, crop.xs] |= sup
    return target, support


def _granite_hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A chipped-out pit: a rough, matte crater lit from the side, with a crushed rim."""
    size = img.shape[0]
    s = size / 256.0
    radius = rng.uniform(6.0, 11.0) * s
    center = _rand_point(rng, size, 20 * s)
    crop = _crop_around(center[None], radius * 2.0 + 6 * s, img.shape[:2])
    yy, xx = crop.yy, crop.xx
    rho = _blob(yy, xx, center, radius, rng, rough=0.35, harmonics=12, stretch=rng.uniform(1.0, 1.5))
    depth = rng.uniform(3.0, 5.0) * s
    h = -depth * np.clip(1 - rho ** 2, 0, 1) ** 0.7
    light = _texture_light(rng)
    shade = np.clip(_relief(h, light, 0.45), 0.35, 1.6)
    patch = img[crop.ys, crop.xs].astype(np.float64)
    grey = patch.mean(-1, keepdims=True)
    rough = 1 + 0.15 * rng.standard_normal(rho.shape)
    floor = (0.4 * patch + 0.6 * grey) * 0.5 * rough[..., None]  # fractured, unpolished, in shade
    inside = rho < 1.0
    rim = (rho >= 1.0) & (rho < 1.0 + 1.0 * s / radius)
    out = patch.copy()
    out[inside] = (floor * shade[..., None])[inside]
    crushed = patch + (225.0 - patch) * 0.25
    out[rim] = crushed[rim]
    return _paste(img, crop, out, inside | rim)


def _granite_stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return _absorbed_stain(img, rng, (10.0, 24.0), ("oil", "coffee", "rust"), (0.5, 0.75), False)


def _granite_crack(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A fracture: a dark fissure along a midpoint-displacement line, tapering, maybe branched."""
    size = img.shape[0]
    s = size / 256.0
    length = rng.uniform(60.0, 140.0) * s
    center = _rand_point(rng, size, 40 * s)
    heading = rng.uniform(0, 2 * np.pi)
    d = _unit(heading)
    a, b = center - d * length / 2, center + d * length / 2
    lines = [(_fractal_path(rng, a, b, 0.18), rng.uniform(1.1, 2.0) * s)]
    for _ in range(int(rng.integers(0, 3))):
        main = lines[0][0]
        p = main[int(rng.integers(len(main) // 5, 4 * len(main) // 5))]
        ang = heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
        lines.append((_fractal_path(rng, p, p + _unit(ang) * length * rng.uniform(0.2, 0.45), 0.2),
                      lines[0][1] * 0.7))
    light = _texture_light(rng)
    target = img.astype(np.float64)
    support = np.zeros(img.shape[:2], dtype=bool)
    for pts, w0 in lines:
        seg = np.diff(pts, axis=0)
        total = float(np.sqrt((seg ** 2).sum(1)).sum())
        crop = _crop_around(pts, w0 + 4 * s, img.shape[:2])
        dist, arc, side = _polyline_field(pts, crop.yy, crop.xx)
        taper = 0.35 + 0.65 * np.sin(np.pi * np.clip(arc / total, 0, 1)) ** 0.6
        half = w0 / 2 * taper
        core = np.clip(half - dist + 0.5, 0, 1)
        lip = (dist < half + 1.3 * s) & (core < 1)
        facing = _side_light(pts, arc, light) * side  # the broken edge facing the light is bright
        patch = target[crop.ys, crop.xs]
        dark = patch * (0.18 + 0.1 * rng.random(dist.shape))[..., None]
        out = patch * (1 + 0.22 * np.clip(facing, -1, 1) * lip)[..., None]
        out = out * (1 - core[..., None]) + dark * core[..., None]
        sup = (core > 0) | lip
        target[crop.ys, crop.xs] = np.where(sup[..., None], out, patch)
        support[crop.ys, crop.xs] |= sup
    return target, support


# ---------------------------------------------------------------------------------
# washer: a turned steel ring on a dark mat
# ---------------------------------------------------------------------------------

_WASHER_BG = np.array([56.0, 60.0, 66.0])
_WASHER_METAL = np.array([176.0, 180.0, 186.0])


def _render_washer(rng: np.random.Generator, size: int) -> np.ndarray:
    s = size / 256.0
    yy, xx = _grid((size, size))
    az = np.deg2rad(rng.uniform(-160.0, -100.0))  # towards the light (upper left)
    light = _unit(az)
    elev = np.deg2rad(rng.uniform(50.0, 62.0))
    cy, cx = size / 2 + rng.uniform(-8, 8, 2) * s
    r_out = rng.uniform(76.0, 84.0) * s
    r_in = r_out * rng.uniform(0.44, 0.5)
    tilt, phi = rng.uniform(0.94, 1.0), rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    ex = dx * np.cos(phi) + dy * np.sin(phi)
    ey = (-dx * np.sin(phi) + dy * np.cos(phi)) / tilt
    r = np.hypot(ex, ey)
    theta = np.arctan2(dy, dx)
    cover = np.clip(r_out - r + 0.5, 0, 1) * np.clip(r - r_in + 0.5, 0, 1)

    # background: matte rubber mat, shadowed by the washer
    bg = _WASHER_BG * (1 + rng.normal(0, 0.04, 3)) * rng.uniform(0.9, 1.1)
    mat = 1 + 0.04 * _value_noise(rng, (size, size), 3) + 0.03 * rng.standard_normal((size, size))
    vignette = 1 - 0.18 * ((dy / size) ** 2 + (dx / size) ** 2) * 2
    back = bg * (mat * vignette)[..., None]
    sh = 5.0 * s
    sr = np.hypot((xx - cx + light[1] * sh), (yy - cy + light[0] * sh))
    shadow_disk = np.clip(r_out - sr + 0.5, 0, 1) * np.clip(sr - r_in + 0.5, 0, 1)
    shadow = ndimage.gaussian_filter(shadow_disk, 3.0 * s)
    back = back * (1 - 0.45 * shadow)[..., None]

    # surface: flat face, rounded outer and inner edges (bevels)
    bevel = 4.5 * s
    t_out = np.clip((r - (r_out - bevel)) / bevel, 0, 1)
    t_in = np.clip(((r_in + bevel) - r) / bevel, 0, 1)
    slope = 2.2 * (t_out ** 1.5 - t_in ** 1.5)  # + tilts outward, - inward
    radial_light = np.cos(theta) * light[1] + np.sin(theta) * light[0]
    diffuse = (slope * radial_light * np.cos(elev) + np.sin(elev)) / np.sqrt(1 + slope ** 2)
    # lathe marks: a random profile along the radius
    n_r = int(r_out * 3) + 8
    prof = ndimage.gaussian_filter1d(rng.standard_normal(n_r), 1.0)
    prof /= prof.std() + 1e-9
    marks = 1 + 0.05 * np.interp(r * 3, np.arange(n_r), prof)
    # turned metal reflects in a bow tie across the centre, aligned with the light
    ang = np.sin(theta - az)
    bow = np.exp(-(ang ** 2) / (2 * rng.uniform(0.18, 0.28) ** 2)) * (1 - np.maximum(t_out, t_in))
    rim_spec = np.clip(radial_light, 0, 1) ** 6 * (4 * t_out * (1 - t_out)) \
        + np.clip(-radial_light, 0, 1) ** 6 * (4 * t_in * (1 - t_in))
    metal_rgb = _WASHER_METAL * (1 + rng.normal(0, 0.025, 3)) * rng.uniform(0.93, 1.05)
    metal = metal_rgb * ((0.25 + 0.8 * diffuse) * marks)[..., None] \
        + 255.0 * (0.22 * bow + 0.45 * rim_spec)[..., None]
    metal = metal * (1 + 0.02 * rng.standard_normal((size, size, 1)))
    img = back * (1 - cover[..., None]) + metal * cover[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@dataclass
class _WasherGeometry:
    ring: np.ndarray       # bool, the metal
    center: np.ndarray     # (y, x)
    r_out: float
    r_in: float
    light: np.ndarray      # (y, x) towards the light, estimated from the lit bevel
    bg_lum: float


def _washer_geometry(img: np.ndarray) -> _WasherGeometry:
    """Find the washer in a rendered image (bright metal on a dark mat)."""
    lum = _luminance(img.astype(np.float64))
    border = np.concatenate([lum[:4].ravel(), lum[-4:].ravel(), lum[:, :4].ravel(), lum[:, -4:].ravel()])
    bg = float(np.median(border))
    metal = lum > bg + 22.0
    labels, n = ndimage.label(metal)
    if n == 0:
        raise ValueError("render_defect('washer', ...): no washer found in the image; "
                         "pass an image made by render_normal('washer', ...)")
    sizes = ndimage.sum_labels(np.ones_like(lum), labels, index=np.arange(1, n + 1))
    ring = labels == (int(np.argmax(sizes)) + 1)
    filled = ndimage.binary_fill_holes(ring)
    ys, xs = np.nonzero(filled)
    center = np.array([ys.mean(), xs.mean()])
    r_out = float(np.sqrt(filled.sum() / np.pi))
    r_in = float(np.sqrt(max(filled.sum() - ring.sum(), 1) / np.pi))
    # the lit part of the outer bevel tells where the light comes from
    yy, xx = np.nonzero(ring)
    rr = np.hypot(yy - center[0], xx - center[1])
    band = rr > r_out - 3.5
    ang = np.arctan2(yy[band] - center[0], xx[band] - center[1])
    w = lum[yy[band], xx[band]] ** 4
    az = float(np.arctan2((w * np.sin(ang)).sum(), (w * np.cos(ang)).sum()))
    return _WasherGeometry(ring, center, r_out, r_in, _unit(az), bg)


def _face_region(geo: _WasherGeometry, margin: float) -> np.ndarray:
    """Pixels of the washer at least ``margin`` pixels from its edges."""
    return ndimage.distance_transform_edt(geo.ring) > margin


def _washer_scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A groove in the metal: one lip catches the light, the other is in shade."""
    size = img.shape[0]
    s = size / 256.0
    geo = _washer_geometry(img)
    start = _pick_pixel(rng, _face_region(geo, 6 * s))
    radial = np.arctan2(start[0] - geo.center[0], start[1] - geo.center[1])
    heading = radial + np.pi / 2 + rng.normal(0, 0.6)  # mostly tangential, as when handled
    length = rng.uniform(20.0, 50.0) * s
    pts = _smooth_path(rng, start - _unit(heading) * length / 2, heading, length, bend=0.25, n=24)
    width = rng.uniform(0.7, 1.3) * s
    crop = _crop_around(pts, width + 4 * s, img.shape[:2])
    dist, arc, side = _polyline_field(pts, crop.yy, crop.xx)
    strength = np.interp(arc, np.linspace(0, length, 8), rng.uniform(0.4, 1.0, 8))
    h = -1.2 * np.clip(1 - (dist / (width + 0.8 * s)) ** 2, 0, 1) * strength
    shade = np.clip(_relief(h, geo.light, 0.9), 0.5, 1.7)
    patch = img[crop.ys, crop.xs].astype(np.float64)
    # the bottom of a fresh groove is bright, burnished metal
    glint = (0.5 + 0.5 * rng.random(dist.shape)) * np.clip(width * 0.6 - dist + 0.5, 0, 1) * 45.0 * strength
    out = patch * shade[..., None] + glint[..., None]
    sup = (h < 0) | (np.abs(shade - 1) > 0.01)
    sup &= _face_region(geo, 1.5)[crop.ys, crop.xs]
    return _paste(img, crop, out, sup)


def _washer_dent(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An impact dent: the face is pushed in, so the shading and the lathe marks bend."""
    size = img.shape[0]
    s = size / 256.0
    geo = _washer_geometry(img)
    radius = rng.uniform(6.0, 11.0) * s
    center = _pick_pixel(rng, _face_region(geo, radius * 1.3 + 2 * s))
    crop = _crop_around(center[None], radius * 2 + 4, img.shape[:2])
    yy, xx = crop.yy, crop.xx
    rho = _blob(yy, xx, center, radius, rng, rough=0.2, harmonics=5, stretch=rng.uniform(1.0, 1.8))
    depth = rng.uniform(1.6, 3.0) * s
    h = -depth * np.clip(1 - rho ** 2, 0, 1) ** 2
    gy, gx = np.gradient(h)
    patch = img[crop.ys, crop.xs].astype(np.float64)
    # marks bend with the surface: sample the face where it came from before it sank
    warp = 1.2
    coords = [yy - crop.yy[0, 0] - warp * gy, xx - crop.xx[0, 0] - warp * gx]
    moved = np.stack([ndimage.map_coordinates(patch[..., c], coords, order=1, mode="nearest") for c in range(3)], -1)
    shade = np.clip(_relief(h, geo.light, 0.8), 0.45, 1.6)
    out = moved * shade[..., None]
    sup = (rho < 1.0) & geo.ring[crop.ys, crop.xs]
    return _paste(img, crop, out, sup)


def _washer_missing_part(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A piece broken out of the rim: the mat shows through a ragged notch."""
    size = img.shape[0]
    s = size / 256.0
    geo = _washer_geometry(img)
    ang = rng.uniform(0, 2 * np.pi)
    u = _unit(ang)
    radius = rng.uniform(8.0, 15.0) * s
    notch_center = geo.center + u * (geo.r_out + radius * rng.uniform(0.0, 0.35))
    crop = _crop_around(notch_center[None], radius * 2 + 8 * s, img.shape[:2])
    yy, xx = crop.yy, crop.xx
    rho = _blob(yy, xx, notch_center, radius, rng, rough=0.4, harmonics=10, stretch=rng.uniform(1.0, 1.5))
    ring = geo.ring[crop.ys, crop.xs]
    footprint = ndimage.binary_dilation(ring, iterations=2)  # catches the anti-aliased edge
    gone = (rho < 1.0) & footprint
    # new broken face: a thin band of metal along the notch, lit by its orientation
    face = (rho >= 1.0) & (rho < 1.0 + 2.0 * s / radius) & ring
    patch = img[crop.ys, crop.xs].astype(np.float64)
    rr = np.hypot(yy - geo.center[0], xx - geo.center[1])
    mat = (rr > geo.r_out + 3 * s) & (rr < geo.r_out + 14 * s)
    if mat.sum() < 10:
        mat = ~ndimage.binary_dilation(footprint, iterations=3)
    mat_px = patch[mat]
    fill = np.median(mat_px, axis=0) if len(mat_px) else np.full(3, geo.bg_lum)
    grain = mat_px.std(axis=0).mean() if len(mat_px) > 10 else 2.0
    out = patch.copy()
    back = fill * (1 + rng.standard_normal(rho.shape)[..., None] * grain / max(fill.mean(), 1))
    # contact shadow next to the remaining metal
    near = ndimage.distance_transform_edt(~(ring & ~gone))
    back = back * (1 - 0.2 * np.exp(-near / (1.5 * s)))[..., None]
    out[gone] = back[gone]
    gy, gx = np.gradient(rho)
    facing = -(gx * geo.light[1] + gy * geo.light[0]) / (np.hypot(gx, gy) + 1e-9)
    broken = patch * (0.75 + 0.45 * facing)[..., None] * (1 + 0.08 * rng.standard_normal(rho.shape))[..., None]
    out[face] = broken[face]
    return _paste(img, crop, out, gone | face)


def _washer_stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rust: a grainy orange-brown crust, densest in the middle, with satellite pits."""
    size = img.shape[0]
    s = size / 256.0
    geo = _washer_geometry(img)
    radius = rng.uniform(6.0, 13.0) * s
    center = _pick_pixel(rng, _face_region(geo, 4 * s))
    crop = _crop_around(center[None], radius * 2.2 + 6, img.shape[:2])
    yy, xx = crop.yy, crop.xx
    rho = _blob(yy, xx, center, radius, rng, rough=0.55, harmonics=10, stretch=rng.uniform(1.0, 1.6))
    grains = rng.random(rho.shape)
    # a rust front is patchy: dense crust inside, isolated spots near the front
    cover = (rho < 0.75) | ((rho < 1.25) & (grains < 0.55 * (1.25 - rho) / 0.5 + 0.05))
    cover = ndimage.binary_opening(cover, iterations=1) | (rho < 0.6)
    cover &= geo.ring[crop.ys, crop.xs]
    patch = img[crop.ys, crop.xs].astype(np.float64)
    rust = np.array([150.0, 72.0, 34.0]) * (1 + rng.normal(0, 0.05, 3))
    lum = _luminance(patch)[..., None] / 160.0
    crust = rust * (0.6 + 0.45 * lum) * (0.8 + 0.4 * rng.random(rho.shape))[..., None]
    alpha = np.clip(0.95 - 0.35 * rho, 0.45, 0.95)[..., None]
    out = patch * (1 - alpha) + crust * alpha
    return _paste(img, crop, out, cover)


# ---------------------------------------------------------------------------------
# chip: an SOIC package on a board
# ---------------------------------------------------------------------------------

_BOARD = np.array([30.0, 96.0, 60.0])
_TRACE = np.array([52.0, 128.0, 72.0])
_PAD = np.array([212.0, 172.0, 86.0])
_BODY = np.array([34.0, 34.0, 37.0])
_LEAD = np.array([186.0, 189.0, 194.0])
_SILK = np.array([226.0, 228.0, 222.0])

# chip geometry in pixels of a 256 image (scaled with the image)
_BODY_HALF = (50.0, 33.0)          # (y, x) half sizes: leads leave the left and right sides
_N_LEADS = 7                        # per side
_CHIP_LAYOUT_SEED = 7805            # fixed design of the board (traces, vias)
_LEAD_LEN, _LEAD_HALF_W = 18.0, 3.1
_PAD_RANGE, _PAD_HALF_W = (7.0, 24.0), 4.8

_FONT = {  # 3x5 glyphs for the laser marking
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "7": "111001010010010", "8": "111101111101111",
    "V": "101101101101010", "T": "111010010010010", "A": "010101111101101", "C": "111100100100111",
    "H": "101101111101101", "L": "100100100100111",
}


def _lead_layer(s_ax: np.ndarray, t_ax: np.ndarray, length: float, half_w: float, light_axis: float,
                light_t: float) -> tuple[np.ndarray, np.ndarray]:
    """A gull-wing lead seen from above, in its own frame.

    Args:
        s_ax: distance from the body edge along the lead (pixels).
        t_ax: distance across the lead (pixels).
        light_axis, light_t: components of the light direction along and across the lead.
    Returns:
        ``alpha`` (coverage) and ``shade`` (brightness factor) of the lead.
    """
    sdf = np.maximum(np.abs(t_ax) - half_w, np.maximum(-s_ax - 2.0, s_ax - length))
    alpha = np.clip(0.5 - sdf, 0, 1)
    # height profile: leaves the body high, bends down at the shoulder, flat foot
    z_top = 4.0
    knee0, knee1 = 0.15 * length, 0.5 * length
    tt = np.clip((s_ax - knee0) / (knee1 - knee0), 0, 1)
    dz = -z_top * 6 * tt * (1 - tt) / (knee1 - knee0)   # derivative of the smoothstep drop
    across = np.clip(np.abs(t_ax) / half_w, 0, 1)
    nt = 0.8 * np.sign(t_ax) * across ** 4                # rounded edges of the stamped lead
    nz = 1.0
    shade = (-dz * light_axis * 0.7 + nt * light_t * 0.7 + nz * 0.75) / np.sqrt(1 + dz * dz + nt * nt)
    spec = 0.35 * np.exp(-((s_ax - 0.78 * length) / (0.16 * length)) ** 2) * (1 - across ** 2)
    shade = 0.3 + 0.85 * shade + spec
    return alpha, shade


def _chip_frame(size: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    s = size / 256.0
    center = np.array([size / 2, size / 2]) + rng.uniform(-7, 7, 2) * s
    return center, np.deg2rad(rng.uniform(-5.0, 5.0))


def _to_frame(yy: np.ndarray, xx: np.ndarray, center: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates -> coordinates in a frame rotated by ``angle`` about ``center``."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - center[0], xx - center[1]
    return -s * dx + c * dy, c * dx + s * dy  # (ly, lx)


def _render_chip(rng: np.random.Generator, size: int) -> np.ndarray:
    s = size / 256.0
    yy, xx = _grid((size, size))
    center, angle = _chip_frame(size, rng)
    ly, lx = _to_frame(yy, xx, center, angle)
    az = np.deg2rad(rng.uniform(-150.0, -110.0))
    light = _unit(az)
    # light in the chip frame
    l_ly = -np.sin(angle) * light[1] + np.cos(angle) * light[0]
    l_lx = np.cos(angle) * light[1] + np.sin(angle) * light[0]
    bh, bw = _BODY_HALF[0] * s, _BODY_HALF[1] * s
    lead_len, lead_hw = _LEAD_LEN * s, _LEAD_HALF_W * s
    pitch = 2 * bh / _N_LEADS
    lead_y = (np.arange(_N_LEADS) + 0.5) * pitch - bh

    # board: solder mask over glass weave, lit unevenly
    board = _BOARD * (1 + rng.normal(0, 0.04, 3)) * rng.uniform(0.92, 1.08)
    weave = np.cos(2 * np.pi * xx / (7 * s)) * np.cos(2 * np.pi * yy / (7 * s))
    tex = 1 + 0.025 * weave + 0.03 * _value_noise(rng, (size, size), 6) + 0.02 * rng.standard_normal((size, size))
    img = board * tex[..., None]
    # copper traces under the mask from most pads outward, each ending in a via
    side_x = np.where(lx >= 0, 1, 0)           # 0: left row, 1: right row
    ax = np.abs(lx)
    pad0, pad1 = _PAD_RANGE[0] * s + bw, _PAD_RANGE[1] * s + bw
    k_lead = np.clip(np.floor((ly + bh) / pitch), 0, _N_LEADS - 1).astype(np.int64)
    t_lead = ly - lead_y[k_lead]                # across the nearest lead row position
    # the board layout is part of the product's design: the same on every board
    layout = np.random.default_rng(_CHIP_LAYOUT_SEED)
    active = layout.random((2, _N_LEADS)) > 0.3
    end = pad1 + layout.uniform(12, 40, (2, _N_LEADS)) * s
    end_px = end[side_x, k_lead]
    on = active[side_x, k_lead]
    trace = np.clip(1.6 * s - np.abs(t_lead) + 0.5, 0, 1) * on * (ax > pad1 - 2 * s) * (ax < end_px)
    img = img * (1 - trace[..., None]) + (_TRACE * tex[..., None]) * trace[..., None]
    via_r = np.hypot(t_lead, ax - end_px)
    via = np.clip(3.2 * s - via_r + 0.5, 0, 1) * on
    hole = np.clip(1.4 * s - via_r + 0.5, 0, 1) * on
    img = img * (1 - via[..., None]) + (_PAD * 0.9) * via[..., None]
    img = img * (1 - hole[..., None]) + np.array([20.0, 18.0, 16.0]) * hole[..., None]
    # silkscreen corner brackets and the pin-1 mark
    sx, sy = bw + _PAD_RANGE[1] * s + 4 * s, bh + 6 * s
    bracket = ((np.abs(np.abs(lx) - sx) < 1.0 * s) & (np.abs(ly) > sy - 12 * s) & (np.abs(ly) < sy + 1.0 * s)) | \
              ((np.abs(np.abs(ly) - sy) < 1.0 * s) & (np.abs(lx) > sx - 12 * s) & (np.abs(lx) < sx + 1.0 * s))
    dot = np.hypot(ly + sy + 5 * s, lx + sx - 4 * s) < 2.2 * s
    silk = ndimage.gaussian_filter((bracket | dot).astype(np.float64), 0.5 * s)
    img = img * (1 - silk[..., None]) + (_SILK * tex[..., None]) * silk[..., None]
    # gold pads
    pad_rgb = _PAD * (1 + rng.normal(0, 0.03, 3))
    pad_sdf = np.maximum(np.abs(t_lead) - _PAD_HALF_W * s, np.maximum(pad0 - ax, ax - pad1))
    pads = np.clip(0.5 - pad_sdf, 0, 1)
    pad_tex = (1 + 0.04 * rng.standard_normal((size, size)) + 0.08 * (ly / bh) * l_ly)
    img = img * (1 - pads[..., None]) + (pad_rgb * pad_tex[..., None]) * pads[..., None]
    # the body casts a soft shadow away from the light
    off = -np.array([l_ly, l_lx]) * 5 * s
    body_sdf = _round_box(ly - off[0], lx - off[1], bh, bw, 3 * s)
    shadow = ndimage.gaussian_filter(np.clip(0.5 - body_sdf, 0, 1), 3.0 * s)
    img = img * (1 - 0.5 * shadow)[..., None]
    # leads (each pixel is drawn by the lead of its row position: leads never overlap)
    lead_rgb = _LEAD * (1 + rng.normal(0, 0.02, 3)) * rng.uniform(0.94, 1.04)
    side = np.where(lx >= 0, 1.0, -1.0)
    s_ax = ax - bw
    near = (s_ax > -3 * s) & (s_ax < lead_len + 4 * s) & (np.abs(t_lead) < lead_hw + 4 * s)
    sa, ta, sd = s_ax[near], t_lead[near], side[near]
    alpha, shade = _lead_layer(sa, ta, lead_len, lead_hw, sd * l_lx, l_ly)
    sh_alpha, _ = _lead_layer(sa + sd * off[1] * 0.5, ta + off[0] * 0.5, lead_len, lead_hw, 0, 0)
    region = img[near] * (1 - 0.45 * sh_alpha)[:, None]
    img[near] = region * (1 - alpha[:, None]) + (lead_rgb * shade[:, None]) * alpha[:, None]
    # body: black epoxy, chamfered edges, pin-1 dimple, laser marking
    body_sdf = _round_box(ly, lx, bh, bw, 3 * s)
    body_a = np.clip(0.5 - body_sdf, 0, 1)
    inner = np.clip(-body_sdf / (3.0 * s), 0, 1)
    gy, gx = np.gradient(body_sdf)
    edge_light = -(gx * light[1] + gy * light[0]) * (1 - inner)
    body_rgb = _BODY * (1 + rng.normal(0, 0.04)) * (1 + 0.05 * _value_noise(rng, (size, size), 8)
                                                    + 0.03 * rng.standard_normal((size, size)))[..., None]
    body_rgb = body_rgb * (1 + 0.9 * edge_light)[..., None] + 10.0 * (1 - inner)[..., None]
    dimple_r = np.hypot(ly + bh - 9 * s, lx + bw - 9 * s)
    dimple = np.clip(3.5 * s - dimple_r + 0.5, 0, 1)
    body_rgb = body_rgb * (1 - 0.35 * dimple)[..., None]
    marking = _marking(ly, lx, s)
    body_rgb = body_rgb * (1 - marking[..., None]) + np.array([118.0, 118.0, 120.0]) * marking[..., None]
    img = img * (1 - body_a[..., None]) + body_rgb * body_a[..., None]
    lighting = 1 + 0.04 * _value_noise(rng, (size, size), 1.5)
    img = img * lighting[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _round_box(ly: np.ndarray, lx: np.ndarray, hy: float, hx: float, r: float) -> np.ndarray:
    """Signed distance to a rounded box (negative inside)."""
    qy, qx = np.abs(ly) - hy + r, np.abs(lx) - hx + r
    outside = np.hypot(np.maximum(qy, 0), np.maximum(qx, 0))
    return outside + np.minimum(np.maximum(qy, qx), 0) - r


def _marking(ly: np.ndarray, lx: np.ndarray, s: float) -> np.ndarray:
    """Laser-etched text on the package (two lines), as coverage in [0, 1]."""
    cov = np.zeros(ly.shape)
    cell = 2.3 * s
    for line, y_top in (("VT7805", -10.0 * s), ("24L3C", 5.0 * s)):
        width = len(line) * 4 * cell
        gy = np.floor((ly - y_top) / cell).astype(np.int64)
        for k, ch in enumerate(line):
            x0 = -width / 2 + k * 4 * cell
            gx = np.floor((lx - x0) / cell).astype(np.int64)
            inside = (gy >= 0) & (gy < 5) & (gx >= 0) & (gx < 3)
            if not inside.any():
                continue
            bits = np.array([c == "1" for c in _FONT[ch]]).reshape(5, 3)
            cov[inside] = np.maximum(cov[inside], bits[gy[inside], gx[inside]] * 0.85)
    return cov


@dataclass
class _ChipGeometry:
    body: np.ndarray        # bool, the package (holes filled)
    center: np.ndarray      # (y, x)
    long_axis: np.ndarray   # unit (y, x) along the rows of leads
    short_axis: np.ndarray  # unit (y, x) from the body towards the leads of one side
    half_long: float
    half_short: float
    leads: list[np.ndarray]  # bool masks, one per lead


def _chip_geometry(img: np.ndarray) -> _ChipGeometry:
    """Find the package and its leads by colour: black epoxy, grey tin, green/gold board."""
    f = img.astype(np.float64)
    lum = _luminance(f)
    sat = f.max(-1) - f.min(-1)
    dark = (lum < 70) & (sat < 22)
    labels, n = ndimage.label(dark)
    if n == 0:
        raise ValueError("render_defect('chip', ...): no chip package found in the image; "
                         "pass an image made by render_normal('chip', ...)")
    sizes = ndimage.sum_labels(np.ones_like(lum), labels, index=np.arange(1, n + 1))
    body = ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    ys, xs = np.nonzero(body)
    center = np.array([ys.mean(), xs.mean()])
    cov = np.cov(np.stack([ys - center[0], xs - center[1]]))
    evals, evecs = np.linalg.eigh(cov)
    long_axis, short_axis = evecs[:, 1], evecs[:, 0]
    proj_l = (ys - center[0]) * long_axis[0] + (xs - center[1]) * long_axis[1]
    proj_s = (ys - center[0]) * short_axis[0] + (xs - center[1]) * short_axis[1]
    half_long, half_short = float(np.abs(proj_l).max()), float(np.abs(proj_s).max())
    metal = (sat < 34) & (lum > 78) & ~body
    near_body = ndimage.binary_dilation(body, iterations=3)
    labels, n = ndimage.label(metal)
    leads = []
    for k in range(1, n + 1):
        comp = labels == k
        if (comp & near_body).any() and 12 <= comp.sum() <= 2000:
            leads.append(comp)
    if not leads:
        raise ValueError("render_defect('chip', ...): no leads found next to the package")
    return _ChipGeometry(body, center, long_axis, short_axis, half_long, half_short, leads)


@dataclass
class _Lead:
    mask: np.ndarray
    root: np.ndarray   # (y, x) where it leaves the body, on its centre line
    axis: np.ndarray   # unit (y, x) outward
    across: np.ndarray
    length: float
    half_w: float
    colour: np.ndarray  # median colour of the lead


def _lead_info(img: np.ndarray, geo: _ChipGeometry, mask: np.ndarray) -> _Lead:
    ys, xs = np.nonzero(mask)
    c = np.array([ys.mean(), xs.mean()])
    side = np.sign((c - geo.center) @ geo.short_axis) or 1.0
    axis = geo.short_axis * side
    across = geo.long_axis
    rel_y, rel_x = ys - geo.center[0], xs - geo.center[1]
    along = rel_y * axis[0] + rel_x * axis[1]
    acr = rel_y * across[0] + rel_x * across[1]
    t0 = float((acr.min() + acr.max()) / 2)
    root = geo.center + axis * geo.half_short + across * t0
    length = float(along.max() - geo.half_short + 0.5)
    half_w = float((acr.max() - acr.min()) / 2 + 0.5)
    return _Lead(mask, root, axis, across, length, half_w, np.median(img[mask].astype(np.float64), axis=0))


def _board_fill(patch: np.ndarray, rng: np.random.Generator, exclude: np.ndarray) -> np.ndarray:
    """Solder-mask colour for uncovered board: median of the nearby green, plus its grain."""
    sat = patch.max(-1) - patch.min(-1)
    green = (patch[..., 1] > patch[..., 0] + 25) & (patch[..., 1] > patch[..., 2] + 10) & (sat > 30) & ~exclude
    px = patch[green]
    if len(px) < 10:
        px = (_BOARD * np.ones((10, 3)))
    base = np.median(px, axis=0)
    grain = float(np.clip(px.std(axis=0).mean(), 1.0, 6.0))
    return base + grain * rng.standard_normal(patch.shape[:2])[..., None]


def _pad_box(patch: np.ndarray, lead: _Lead, yy: np.ndarray, xx: np.ndarray, lead_mask: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """The gold pad under a lead (from the visible rim of gold around the foot) and its colour."""
    f = patch
    gold = (f[..., 0] > f[..., 2] + 60) & (f[..., 1] > f[..., 2] + 30) & (f[..., 0] > 120)
    near = ndimage.binary_dilation(lead_mask, iterations=int(3 + lead.half_w))
    rim = gold & near
    s_ax = (yy - lead.root[0]) * lead.axis[0] + (xx - lead.root[1]) * lead.axis[1]
    t_ax = (yy - lead.root[0]) * lead.across[0] + (xx - lead.root[1]) * lead.across[1]
    if rim.sum() < 5:
        box = (s_ax > lead.length * 0.4) & (s_ax < lead.length + 5) & (np.abs(t_ax) < lead.half_w + 1.5)
        return box, _PAD
    s0, s1 = s_ax[rim].min(), s_ax[rim].max()
    t0, t1 = t_ax[rim].min(), t_ax[rim].max()
    box = (s_ax >= s0 - 0.5) & (s_ax <= s1 + 0.5) & (t_ax >= t0 - 0.5) & (t_ax <= t1 + 0.5)
    return box, np.median(f[rim], axis=0)


def _chip_remove_lead(img: np.ndarray, rng: np.random.Generator, geo: _ChipGeometry, lead: _Lead,
                      stub: float) -> tuple[np.ndarray, np.ndarray, _Crop]:
    """Board and pad as they look with the lead gone (a ``stub`` pixels long stump stays)."""
    size = img.shape[0]
    s = size / 256.0
    ends = np.stack([lead.root, lead.root + lead.axis * (lead.length + 8 * s)])
    crop = _crop_around(ends, lead.half_w + 10 * s, img.shape[:2])
    yy, xx = crop.yy, crop.xx
    patch = img[crop.ys, crop.xs].astype(np.float64)
    body = geo.body[crop.ys, crop.xs]
    lead_mask = lead.mask[crop.ys, crop.xs]
    s_ax = (yy - lead.root[0]) * lead.axis[0] + (xx - lead.root[1]) * lead.axis[1]
    others = np.zeros_like(lead_mask)
    for m in geo.leads:
        if m is not lead.mask:
            others |= m[crop.ys, crop.xs]
    # grown by 3 px: the lead's anti-aliased edge and its shadow go with it
    erase = ndimage.binary_dilation(lead_mask, iterations=3) & ~body & ~ndimage.binary_dilation(others, iterations=1)
    erase &= s_ax > stub
    box, pad_rgb = _pad_box(patch, lead, yy, xx, lead_mask)
    board = _board_fill(patch, rng, ndimage.binary_dilation(lead_mask, iterations=3))
    out = patch.copy()
    pad = pad_rgb * (1 + 0.04 * rng.standard_normal(patch.shape[:2]))[..., None]
    out[erase] = np.where(box[..., None], pad, board)[erase]
    # dull solder left on the pad where the foot sat
    t_ax = (yy - lead.root[0]) * lead.across[0] + (xx - lead.root[1]) * lead.across[1]
    solder = erase & box & (np.abs(t_ax) < lead.half_w * 0.8) & (s_ax > lead.length * 0.55) \
        & (s_ax < lead.length * 0.95) & (rng.random(s_ax.shape) < 0.85)
    out[solder] = (np.array([150.0, 150.0, 146.0]) * (0.85 + 0.3 * rng.random(s_ax.shape))[..., None])[solder]
    if stub > 0:  # the broken end of the stump is a dark fracture
        end = (np.abs(s_ax - stub) < 0.8 * s) & lead_mask & ~body
        out[end] = out[end] * 0.55
        erase |= end
    return out, erase, crop


def _chip_missing_pin(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A lead broken off at the package: a stump, the bare pad with solder left on it."""
    geo = _chip_geometry(img)
    lead = _lead_info(img, geo, geo.leads[int(rng.integers(len(geo.leads)))])
    s = img.shape[0] / 256.0
    stub = rng.uniform(1.5, 4.0) * s if rng.random() < 0.7 else 0.0
    out, erase, crop = _chip_remove_lead(img, rng, geo, lead, stub)
    return _paste(img, crop, out, erase)


def _chip_bent_pin(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A lead bent sideways off its pad, casting its shadow on the board."""
    size = img.shape[0]
    s = size / 256.0
    geo = _chip_geometry(img)
    lead = _lead_info(img, geo, geo.leads[int(rng.integers(len(geo.leads)))])
    out, erase, crop = _chip_remove_lead(img, rng, geo, lead, 0.0)
    # redraw the lead rotated about its root, in the board plane
    bend = np.deg2rad(rng.uniform(14.0, 30.0)) * rng.choice([-1.0, 1.0])
    c, sn = np.cos(bend), np.sin(bend)
    axis = lead.axis * c + lead.across * sn
    across = -lead.axis * sn + lead.across * c
    ends = np.stack([lead.root, lead.root + axis * (lead.length + 2)])
    crop2 = _crop_around(np.concatenate([ends, [lead.root + lead.axis * (lead.length + 8 * s)]]),
                         lead.half_w + 10 * s, img.shape[:2])
    target, support = _paste(img, crop, out, erase)
    yy, xx = crop2.yy, crop2.xx
    s_ax = (yy - lead.root[0]) * axis[0] + (xx - lead.root[1]) * axis[1]
    t_ax = (yy - lead.root[0]) * across[0] + (xx - lead.root[1]) * across[1]
    light = _unit(np.deg2rad(-130.0))
    alpha, shade = _lead_layer(s_ax, t_ax, lead.length, lead.half_w - 0.5, float(axis @ light),
                               float(across @ light))
    body = geo.body[crop2.ys, crop2.xs]
    alpha = alpha * ~body
    # the lifted foot throws a shadow away from the light
    off = -light * 2.5 * s
    sh_alpha, _ = _lead_layer(s_ax - float(off @ axis), t_ax - float(off @ across), lead.length,
                              lead.half_w - 0.5, 0, 0)
    sh_alpha = sh_alpha * ~body * (s_ax > lead.length * 0.3)
    base = lead.colour / 0.95  # median brightness of a lead is about 0.95 of its metal colour
    region = target[crop2.ys, crop2.xs]
    region = region * (1 - 0.4 * sh_alpha)[..., None]
    region = region * (1 - alpha[..., None]) + (base * shade[..., None]) * alpha[..., None]
    target[crop2.ys, crop2.xs] = region
    support[crop2.ys, crop2.xs] |= (alpha > 0) | (sh_alpha > 0.02)
    return target, support


def _chip_scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scuffs on the epoxy: fine light-grey lines where the matte surface was abraded."""
    size = img.shape[0]
    s = size / 256.0
    geo = _chip_geometry(img)
    region = ndimage.binary_erosion(geo.body, iterations=int(3 * s) + 1)
    target = img.astype(np.float64)
    support = np.zeros(img.shape[:2], dtype=bool)
    start = _pick_pixel(rng, ndimage.binary_erosion(geo.body, iterations=int(12 * s)))
    heading = rng.uniform(0, 2 * np.pi)
    for n in range(int(rng.integers(1, 4))):
        length = rng.uniform(15.0, 45.0) * s
        off = _unit(heading + np.pi / 2) * rng.uniform(1.5, 4.0) * s * n
        pts = _smooth_path(rng, start + off - _unit(heading) * length / 2, heading + rng.normal(0, 0.05),
                           length, bend=0.2, n=20)
        width = rng.uniform(0.6, 1.3) * s
        crop = _crop_around(pts, width + 3 * s, img.shape[:2])
        dist, arc, _ = _polyline_field(pts, crop.yy, crop.xx)
        strength = np.interp(arc, np.linspace(0, length, 10), np.clip(rng.uniform(0.3, 1.2, 10), 0, 1))
        core = np.clip(width - dist + 0.5, 0, 1) * strength * (arc > 0) * (arc < length)
        patch = target[crop.ys, crop.xs]
        out = patch + (rng.uniform(120, 170) - patch) * (0.85 * core)[..., None]
        sup = (core > 0.03) & region[crop.ys, crop.xs]
        target[crop.ys, crop.xs] = np.where(sup[..., None], out, patch)
        support[crop.ys, crop.xs] |= sup
    if not support.any():
        raise ValueError("scratch fell outside the package")
    return target, support


def _chip_stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flux residue: a glossy amber film over leads and board, with a crystallised edge."""
    size = img.shape[0]
    s = size / 256.0
    geo = _chip_geometry(img)
    lead = _lead_info(img, geo, geo.leads[int(rng.integers(len(geo.leads)))])
    radius = rng.uniform(8.0, 16.0) * s
    center = lead.root + lead.axis * rng.uniform(0.0, lead.length + 6 * s) + lead.across * rng.uniform(-6, 6) * s
    crop = _crop_around(center[None], radius * 2.2 + 6, img.shape[:2])
    yy, xx = crop.yy, crop.xx
    rho = _blob(yy, xx, center, radius, rng, rough=0.5, harmonics=9, stretch=rng.uniform(1.0, 1.8))
    inside = rho < 1.0
    patch = img[crop.ys, crop.xs].astype(np.float64)
    amber = np.array([196.0, 138.0, 42.0]) * (1 + rng.normal(0, 0.05, 3))
    alpha = rng.uniform(0.35, 0.55) + 0.3 * _smoothstep(0.82, 0.98, rho)
    film = patch * (1 - alpha[..., None]) + (amber * (0.45 + 0.6 * _luminance(patch) / 180)[..., None]) \
        * alpha[..., None]
    # a wet meniscus: highlight on the edge facing the light
    light = _unit(np.deg2rad(-130.0))
    gy, gx = np.gradient(rho)
    facing = (gx * light[1] + gy * light[0]) / (np.hypot(gx, gy) + 1e-9)
    gloss = np.clip(facing, 0, 1) ** 2 * _smoothstep(0.7, 0.9, rho) * (1 - _smoothstep(0.93, 1.0, rho))
    out = film + 90.0 * gloss[..., None]
    return _paste(img, crop, out, inside)


# ---------------------------------------------------------------------------------
# public rendering API
# ---------------------------------------------------------------------------------

_RENDERERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "weave": _render_weave,
    "granite": _render_granite,
    "washer": _render_washer,
    "chip": _render_chip,
}

_DEFECTS: dict[tuple[str, str], Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    ("weave", "cut"): _weave_cut,
    ("weave", "hole"): _weave_hole,
    ("weave", "stain"): _weave_stain,
    ("weave", "thread"): _weave_thread,
    ("granite", "crack"): _granite_crack,
    ("granite", "hole"): _granite_hole,
    ("granite", "scratch"): _granite_scratch,
    ("granite", "stain"): _granite_stain,
    ("washer", "dent"): _washer_dent,
    ("washer", "missing_part"): _washer_missing_part,
    ("washer", "scratch"): _washer_scratch,
    ("washer", "stain"): _washer_stain,
    ("chip", "bent_pin"): _chip_bent_pin,
    ("chip", "missing_pin"): _chip_missing_pin,
    ("chip", "scratch"): _chip_scratch,
    ("chip", "stain"): _chip_stain,
}


def render_normal(category: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Draw one defect-free image of a toy ``category``.

    Args:
        category: ``weave``, ``granite``, ``washer`` or ``chip``.
        rng: the image's random generator (position, rotation, colour, texture phase).
        size: side of the square image in pixels (>= 64).
    Returns:
        ``size x size x 3`` uint8 RGB.
    """
    _check_category(category)
    if size < 64:
        raise ValueError(f"toy image size must be >= 64 pixels, got {size}")
    return _RENDERERS[category](rng, int(size))


def render_defect(category: str, defect_type: str, image: np.ndarray, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Draw a defect of ``defect_type`` into a normal image of ``category``.

    Args:
        category: toy category the image shows.
        defect_type: one of :func:`toy_defect_types` ``(category)``.
        image: ``H x W x 3`` uint8 normal image (from :func:`render_normal`); not modified.
        rng: random generator of the defect (place, size, shape, colour).
    Returns:
        ``(defective, mask)``: the ``H x W x 3`` uint8 image and the ``H x W`` bool mask
        of exactly the pixels that differ from ``image`` (never empty).
    """
    _check_defect(category, defect_type)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"render_defect expects an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
    target, support = _DEFECTS[(category, defect_type)](image, rng)
    return _finish(image, target, support)


def _stable_id(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def image_seed_sequence(seed: int, category: str, split: str, index: int) -> np.random.SeedSequence:
    """Seed sequence of one image: a function of ``(seed, category, split, index)`` only.

    ``split`` is ``train``, ``test/good``, ``test/<defect_type>``, ``val/good`` or
    ``val/<defect_type>``: validation images never share a seed with test images.
    """
    return np.random.SeedSequence([int(seed), _stable_id(category), _stable_id(split), int(index)])


def _split_parts(split: str) -> tuple[str, str]:
    """``"test/stain"`` -> ``("test", "stain")``; ``"train"`` -> ``("train", "good")``."""
    if split == "train":
        return "train", GOOD
    part, _, kind = split.partition("/")
    if part not in ("test", "val") or not kind:
        raise ValueError(f"unknown split {split!r}; use train, test/good, test/<defect_type>, "
                         "val/good or val/<defect_type>")
    return part, kind


def render_sample(category: str, split: str, index: int, config: ToyConfig = ToyConfig()
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """The image (and mask, for a defect) that the dataset holds at ``split``/``index``.

    ``split`` is ``train``, ``test/good``, ``test/<defect_type>``, ``val/good`` or
    ``val/<defect_type>``; the result is the same whether or not the rest of the dataset
    is generated.
    """
    _check_category(category)
    _, kind = _split_parts(split)
    normal_ss, defect_ss = image_seed_sequence(config.seed, category, split, index).spawn(2)
    image = render_normal(category, np.random.default_rng(normal_ss), config.image_size)
    if kind == GOOD:
        return image, None
    return render_defect(category, kind, image, np.random.default_rng(defect_ss))


# ---------------------------------------------------------------------------------
# writing the dataset
# ---------------------------------------------------------------------------------


def _save_png(path: Path, array: np.ndarray) -> None:
    """PNG from ``H x W x 3`` (RGB) or ``H x W`` (L) uint8, with fixed options and no metadata,
    so the bytes depend on the pixels only (level 1: 4x faster than 6, same size on noisy images)."""
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path, format="PNG", compress_level=1)


def _jobs(category: str, config: ToyConfig, defects: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """Every ``(split, index)`` the dataset holds for ``category`` (``defects``: its defect types)."""
    defects = DEFECT_TYPES[category] if defects is None else defects
    jobs: list[tuple[str, int]] = [("train", i) for i in range(config.n_train)]
    for part, n_good, n_defect in (("test", config.n_test_good, config.n_test_per_defect),
                                   ("val", config.n_val_good, config.n_val_per_defect)):
        jobs += [(f"{part}/{GOOD}", i) for i in range(n_good)]
        jobs += [(f"{part}/{d}", i) for d in defects for i in range(n_defect)]
    return jobs


def _folders(split: str) -> tuple[str, str]:
    """Image folder and mask folder (relative to the category) of a split name."""
    part, kind = _split_parts(split)
    if part == "train":
        return "train/good", ""
    return f"{part}/{kind}", "" if kind == GOOD else f"{MASK_FOLDERS[part]}/{kind}"


def _write_category(cat_dir: Path, category: str, config: ToyConfig) -> int:
    count = 0
    for split, i in _jobs(category, config):
        image, mask = render_sample(category, split, i, config)
        image_folder, mask_folder = _folders(split)
        folder = cat_dir / image_folder
        folder.mkdir(parents=True, exist_ok=True)
        _save_png(folder / f"{i:03d}.png", image)
        if mask is not None:
            gt = cat_dir / mask_folder
            gt.mkdir(parents=True, exist_ok=True)
            _save_png(gt / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
        count += 1
    return count


def _manifest(config: ToyConfig) -> dict:
    cfg = asdict(config)
    cfg["categories"] = list(config.categories)
    return {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "package_version": __version__,
        "config": cfg,
        "defect_types": {c: list(DEFECT_TYPES[c]) for c in config.categories},
    }


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


#: The counts of ToyConfig that decide each split's images (besides seed and image size).
SPLIT_COUNTS: dict[str, tuple[str, ...]] = {"train": ("n_train",), "val": ("n_val_good", "n_val_per_defect"),
                                            "test": ("n_test_good", "n_test_per_defect")}


def _split_identity(manifest: dict, split: str | None) -> dict:
    """What of a manifest decides ``split``'s images (``None``: every split's), per category.

    Each image is drawn from ``(seed, category, split, index)`` alone, so a category's split
    depends on the generator version, the seed, the image size, that split's counts and,
    for the defective splits, the category's defect types; not on the other splits or
    on which other categories were written.
    """
    cfg = manifest.get("config", {})
    counts = [c for name in ((split,) if split is not None else tuple(SPLIT_COUNTS)) for c in SPLIT_COUNTS[name]]
    identity = {"generator": manifest.get("generator"), "generator_version": manifest.get("generator_version"),
                **{key: cfg.get(key) for key in ("seed", "image_size", *counts)}}
    if split != "train":
        identity["defect_types"] = manifest.get("defect_types")
    return identity


def split_variant(root: Path, split: str | None) -> str | None:
    """``None`` when ``split`` at ``root`` holds the images the default toy root holds, else 8 hex
    digits of what differs (:func:`vtfusion.data.registry.storage_name`).

    ``split``: ``train``, ``val``, ``test`` or ``None`` (every split). A root without a
    readable manifest is told apart by its path, so it never shares results with another.
    """
    if split is not None and split not in SPLIT_COUNTS:
        raise ValueError(f"unknown toy split {split!r}; use one of {', '.join(SPLIT_COUNTS)}")
    manifest = _read_manifest(root)
    if manifest is None or not isinstance(manifest.get("config"), dict):
        return root_digest(root)
    default = _manifest(ToyConfig(categories=TOY_CATEGORIES))
    default["defect_types"] = {c: t for c, t in default["defect_types"].items()
                               if c in (manifest.get("defect_types") or {})}
    ours = _split_identity(manifest, split)
    if ours == _split_identity(default, split):
        return None
    return hashlib.sha256(json.dumps(ours, sort_keys=True, default=str).encode()).hexdigest()[:8]


def generated_files(config: ToyConfig, defect_types: Mapping[str, Sequence[str]] = DEFECT_TYPES) -> list[str]:
    """Every file the generator writes for ``config``, relative to the root (POSIX), sorted."""
    files = []
    for cat in config.categories:
        for split, i in _jobs(cat, config, defect_types[cat]):
            image_folder, mask_folder = _folders(split)
            files.append(f"{cat}/{image_folder}/{i:03d}.png")
            if mask_folder:
                files.append(f"{cat}/{mask_folder}/{i:03d}_mask.png")
    return sorted(files)


def _is_inside(rel: str) -> bool:
    """A manifest entry names a file inside the root (no absolute path, no ``..``)."""
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts and MANIFEST_NAME != rel


def _owned_files(manifest: dict | None) -> set[str]:
    """The files a manifest says the generator wrote: the only ones it may ever replace or remove."""
    if manifest is None or manifest.get("generator") != GENERATOR_NAME:
        return set()
    listed = manifest.get("files")
    if isinstance(listed, list):
        return {rel for rel in listed if isinstance(rel, str) and _is_inside(rel)}
    # Manifests written before the file list: the files follow from their config.
    try:
        known = {f.name for f in fields(ToyConfig)}
        cfg = {k: v for k, v in manifest["config"].items() if k in known}
        config = ToyConfig(**{**cfg, "categories": tuple(cfg["categories"])})
        defects = {c: tuple(manifest["defect_types"][c]) for c in config.categories}
        return {rel for rel in generated_files(config, defects) if _is_inside(rel)}
    except (KeyError, TypeError, ValueError, AttributeError):
        return set()


def _write_manifest(root: Path, config: ToyConfig, files: Sequence[str], complete: bool = True) -> None:
    """Atomically write the manifest; ``complete=False`` marks a copy being replaced (never reused)."""
    manifest = {**_manifest(config), "files": sorted(files)}
    if not complete:
        manifest["incomplete"] = True
    atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _is_complete(root: Path, config: ToyConfig) -> bool:
    """Manifest matches and every file the config generates exists (user files do not matter)."""
    manifest = _read_manifest(root)
    if manifest is None or {k: v for k, v in manifest.items() if k != "files"} != _manifest(config):
        return False
    return all((root / rel).is_file() for rel in generated_files(config))


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a folder that is not a toy dataset (e.g. a mistyped --root)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"toy dataset root {root} exists and is not a folder; choose another --root")
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("generator") == GENERATOR_NAME:
        return
    if any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists, is not empty and has no toy manifest ({MANIFEST_NAME}); refusing to replace it. "
            "Pass an empty or new folder as the toy dataset root, or delete it yourself.")


@contextlib.contextmanager
def _exclusive_lock(root: Path) -> Iterator[None]:
    """Serialise generators of the same root across processes (POSIX ``flock``).

    The lock file lives in the temporary folder so the data folder stays clean.
    """
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"vtfusion-toy-{key}.lock"
    try:
        import fcntl  # local: POSIX only (see below)
    except ImportError:  # Windows: no flock; the atomic rename still avoids half-written data
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _check_no_user_file_in_the_way(root: Path, files: Sequence[str], owned: set[str]) -> None:
    """Refuse to overwrite a file the generator did not write (one a user put there)."""
    for rel in files:
        if rel not in owned and (root / rel).exists():
            raise FileExistsError(
                f"{root / rel} is not listed in {root / MANIFEST_NAME} (the toy generator did not write it) "
                f"and would be overwritten; move it out of {root} or choose another --root")


def _move_files(src: Path, dst: Path, files: Sequence[str]) -> None:
    """Move each finished file into place; ``os.replace`` is atomic, so no file is ever half-written."""
    for rel in files:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(src / rel, dst / rel)


def _remove_files(root: Path, files: set[str]) -> None:
    """Remove files the generator wrote earlier and no longer writes, then their emptied folders."""
    for rel in sorted(files):
        (root / rel).unlink(missing_ok=True)
        for folder in Path(rel).parents:
            if folder == Path("."):
                break
            try:
                (root / folder).rmdir()  # only succeeds when empty: user files keep their folder
            except OSError:
                break


def _generate_unlocked(root: Path, config: ToyConfig) -> int:
    """Write ``config``'s files into ``root``, touching only files the manifest says are ours.

    Images are rendered into a temporary sibling folder first. A new root is published by
    renaming that folder; an existing one gets each file moved in, the files of the old
    copy that the new one lacks removed, and the new manifest written last. Files a user
    added to ``root`` are never removed.
    """
    _check_replaceable(root)
    owned = _owned_files(_read_manifest(root))
    files = generated_files(config)
    _check_no_user_file_in_the_way(root, files, owned)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        n = sum(_write_category(tmp / cat, cat, config) for cat in config.categories)
        if not root.exists():
            _write_manifest(tmp, config, files)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private
            os.rename(tmp, root)  # atomic: readers see no copy or the complete one
            return n
        # Interrupted from here on, the manifest still lists every file that may be ours
        # and is marked incomplete, so the next run regenerates and cleans up.
        _write_manifest(root, config, sorted(owned | set(files)), complete=False)
        _move_files(tmp, root, files)
        _remove_files(root, owned - set(files))
        _write_manifest(root, config, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return n


def generate_toy_dataset(root: str | Path, config: ToyConfig = ToyConfig()) -> Path:
    """Write the toy dataset under ``root`` (MVTec layout), replacing an older copy.

    ``manifest.json`` lists every file the generator wrote; only those are ever replaced
    or removed, so files a user added to ``root`` survive a regeneration (a user file where
    the generator would write is a ``FileExistsError``). Files are rendered into a temporary
    sibling folder and moved into place, so none is ever half-written; concurrent generators
    of the same root are serialised by a lock. A non-empty ``root`` without a toy manifest
    is never written to (``FileExistsError``).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root).expanduser()
    with _exclusive_lock(root):
        _generate_unlocked(root, config)
    return root


def _ensure(root: Path, config: ToyConfig) -> bool:
    """Generate unless an identical copy is present; True when it generated."""
    if _is_complete(root, config):
        return False
    with _exclusive_lock(root):
        if _is_complete(root, config):  # another process finished it while we waited
            return False
        _generate_unlocked(root, config)
    return True


def ensure_toy_dataset(root: str | Path | None = None, config: ToyConfig = ToyConfig()) -> Path:
    """The toy dataset's root, generated only when missing or different.

    ``root`` defaults to :func:`vtfusion.paths.toy_root` (``data/toy`` or
    ``$VTFUSION_TOY_ROOT``). The copy is reused when its ``manifest.json`` records the
    same config, package version and generator version and every folder is complete;
    otherwise it is regenerated (see :func:`generate_toy_dataset`).
    """
    root = Path(root).expanduser() if root is not None else paths.toy_root()
    _ensure(root, config)
    return root


# ---------------------------------------------------------------------------------
# contact sheet (for the book and for eyeballing the defects)
# ---------------------------------------------------------------------------------


def overlay_mask(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """``image`` with ``mask`` tinted and outlined in ``colour`` (uint8 RGB)."""
    out = image.astype(np.float64)
    col = np.array(colour, dtype=np.float64)
    out[mask] = out[mask] * 0.7 + col * 0.3
    outline = mask & ~ndimage.binary_erosion(mask)
    outline = ndimage.binary_dilation(outline) & ~mask | outline
    out[outline] = col
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def contact_sheet(config: ToyConfig = ToyConfig(), index: int = 0, overlay: bool = True) -> np.ndarray:
    """One row per category: a normal test image, then one image of each defect type.

    The tiles are the dataset's own ``test/good/<index>`` and ``test/<defect>/<index>``
    images (rendered in memory); masks are outlined when ``overlay`` is True.
    """
    rows = []
    width = 1 + max(len(DEFECT_TYPES[c]) for c in config.categories)
    size = config.image_size
    gap = 4
    for cat in config.categories:
        tiles = [render_sample(cat, "test/good", index, config)[0]]
        for d in DEFECT_TYPES[cat]:
            img, mask = render_sample(cat, f"test/{d}", index, config)
            tiles.append(overlay_mask(img, mask) if overlay else img)
        tiles += [np.full((size, size, 3), 255, np.uint8)] * (width - len(tiles))
        row = np.full((size, width * (size + gap) - gap, 3), 255, np.uint8)
        for k, t in enumerate(tiles):
            row[:, k * (size + gap):k * (size + gap) + size] = t
        rows.append(row)
    sheet = np.full((len(rows) * (size + gap) - gap, rows[0].shape[1], 3), 255, np.uint8)
    for k, r in enumerate(rows):
        sheet[k * (size + gap):k * (size + gap) + size] = r
    return sheet


# ---------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vtfusion.data.toy [--root DIR] [--seed N] [--ensure|--force] [--contact-sheet PNG]``."""
    parser = argparse.ArgumentParser(
        prog="python -m vtfusion.data.toy",
        description="Generate the procedurally drawn toy industrial dataset (MVTec layout).")
    parser.add_argument("--root", type=Path, default=None,
                        help="target folder (default: data/toy, or $VTFUSION_TOY_ROOT)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--ensure", action="store_true",
                      help="generate only if missing or different (the default)")
    mode.add_argument("--force", action="store_true", help="regenerate even if an identical copy exists")
    parser.add_argument("--contact-sheet", type=Path, default=None, metavar="PNG",
                        help="also save a contact sheet (normal + each defect per category, masks outlined)")
    args = parser.parse_args(argv)
    root = args.root.expanduser() if args.root is not None else paths.toy_root()
    try:
        config = ToyConfig(seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    try:
        if args.force:
            generate_toy_dataset(root, config)
            generated = True
        else:
            generated = _ensure(root, config)
    except (FileExistsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    took = time.perf_counter() - start
    n_images = sum(len(_jobs(c, config)) for c in config.categories)
    if generated:
        print(f"toy dataset: generated {len(config.categories)} categories ({n_images} images, seed "
              f"{config.seed}) in {root} in {took:.2f} s")
    else:
        print(f"toy dataset: up to date in {root} (manifest matches, seed {config.seed}); checked in {took:.2f} s")
    if args.contact_sheet is not None:
        args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
        _save_png(args.contact_sheet, contact_sheet(config))
        print(f"contact sheet: {args.contact_sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
