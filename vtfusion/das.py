"""Diversified Anomaly Synthesis, DAS (paper §III-B, Fig. 3, Table III; DESIGN §2).

DAS turns a normal image into an abnormal one whose defect is known pixel by pixel.
The paper uses four types, two *structural* and two *textural*:

``misplaced``
    cut-paste: patches cut from the image (rotated, maybe mirrored) and pasted elsewhere,
    "structural misplacement and semantic irregularities while preserving local textures".
``blurry`` (Table III calls it *fuzzy*)
    Gaussian blur inside a random blob: "image degradation and reduced clarity".
``crack``
    thin irregular, possibly branching crack masks "with textures consistent with the
    background pattern": filled with a shifted, darkened (or, on dark surfaces,
    lightened) copy of the same image, never a flat colour.
``noise``
    uniform, Gaussian or positive noise inside a random blob: "sensor imperfections,
    signal interference, or transmission errors".
``combined``
    several of the four on one image (Fig. 3, last column).

Every call returns the altered image and a binary mask of **exactly** the altered
pixels: the mask is ``region AND (pixel changed by at least min_pixel_change)`` and
every pixel outside it is copied bit for bit from the input. A draw that changes too
little of its region (blurring a flat area, pasting a period of a periodic texture
onto itself) or whose mask falls outside the configured area bounds is redrawn (with a stronger
setting when too little changed); after ``max_retries`` redraws a guaranteed "push"
noise on a blob is used.

Everything is vectorised over the batch with torch ops (CPU and CUDA), driven by one
``torch.Generator``: the same seed gives bit-identical output on the same device.
Pixel sizes in the config are given at ``reference_size`` (240, the paper's input)
and scale with the shorter image side; areas are fractions of the image.

Public API: :class:`DASConfig`, :func:`synthesize` (one image, numpy or torch),
:func:`synthesize_batch` (the trainer's path), :class:`AnomalyTypeSelector` and
:func:`area_bounds`; foreground placement lives in :mod:`vtfusion.foreground`.

The types are registered by name (:class:`DASKind`, :func:`register_das_kind`,
:func:`list_das_kinds`, :func:`get_das_kind`): a new type is one drawing function and one
registration, in a new file or here; it is then accepted by ``DASConfig.types``,
:class:`AnomalyTypeSelector`, :func:`synthesize` and ``vtfusion list das-kinds``. The
defaults stay the paper's five types (:data:`ALL_KINDS`), so registering one changes no
existing config or result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vtfusion.foreground import ForegroundConfig, category_foreground, foreground_mask, to_gray
from vtfusion.registry import Registry

__all__ = [
    "ALL_KINDS", "BASE_KINDS", "STRUCTURAL_KINDS", "TEXTURAL_KINDS", "NOISE_KINDS",
    "AnomalyTypeSelector", "BlurryConfig", "CombinedConfig", "CrackConfig", "DASConfig", "DASKind",
    "ForegroundConfig", "MisplacedConfig", "NoiseConfig", "area_bounds", "canonical_kind",
    "category_foreground", "foreground_mask", "get_das_kind", "kind_params", "list_das_kinds", "make_generator",
    "register_das_kind", "synthesize", "synthesize_batch",
]

BASE_KINDS = ("misplaced", "blurry", "crack", "noise")
ALL_KINDS = BASE_KINDS + ("combined",)
STRUCTURAL_KINDS = ("misplaced", "blurry")  # paper III-B: mimic structural anomalies
TEXTURAL_KINDS = ("crack", "noise")  # paper III-B: simulate textural anomalies
NOISE_KINDS = ("uniform", "gaussian", "positive")


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DASKind:
    """One registered anomaly type.

    Attributes:
        name: the type's name in ``DASConfig.types`` and Table III.
        draw: ``draw(d, images, foreground, cfg, strength, area_scale, quantise) -> (altered, region)``
            on ``n`` images at once: ``d`` the batch's random source (``rand``, ``randn``,
            ``uniform``, ``log_uniform``, ``integers``, ``points_on``), ``images`` ``n x C x H x W``
            float in [0, 1], ``foreground`` ``n x H x W`` bool (where anomalies may go),
            ``cfg`` the :class:`DASConfig`, ``strength`` ``n`` multipliers that grow on redraws,
            ``area_scale`` ``n`` factors of the area bounds, ``quantise`` rounds to the stored
            dtype. Returns the altered images and the bool ``n x H x W`` region drawn in; the
            exact mask (region AND changed) and the redraws are the driver's.
        description: one line for ``vtfusion list das-kinds``.
        family: ``structural``, ``textural`` (paper III-B) or ``mixed``.
        params: the type's parameters when :class:`DASConfig` has no section of its name (a
            registered new type), an object with at least ``area`` ((min, max) share of the
            image). Such parameters are not part of a config hash: register another name
            for other values.
        aliases: other names accepted for it.
    """

    name: str
    draw: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    description: str = ""
    family: str = "mixed"
    params: Any = None
    aliases: tuple[str, ...] = ()


DAS_KINDS: Registry[DASKind] = Registry("DAS anomaly kind")


def register_das_kind(kind: DASKind, replace: bool = False) -> DASKind:
    """Make ``kind`` available to ``DASConfig.types``, the selector and :func:`synthesize`."""
    if kind.params is None and kind.name not in {f.name for f in fields(DASConfig)}:
        raise ValueError(f"DAS kind {kind.name!r} has no section in DASConfig; give its parameters as params=")
    return DAS_KINDS.register(kind.name, kind, replace=replace)


def list_das_kinds() -> tuple[str, ...]:
    """Names of the registered anomaly types, in registration order (the paper's five first)."""
    return DAS_KINDS.names()


def get_das_kind(name: str) -> DASKind:
    """The registered :class:`DASKind` of ``name`` or of one of its aliases."""
    return DAS_KINDS.get(canonical_kind(name))


def _aliases() -> dict[str, str]:
    """Other names of the registered types (Table III says "Fuzzy", the literature "cut-paste")."""
    return {a: k for k in list_das_kinds() for a in DAS_KINDS.get(k).aliases}


def canonical_kind(kind: str) -> str:
    """The canonical name of an anomaly type (``fuzzy`` -> ``blurry``); ValueError if unknown."""
    aliases = _aliases()
    name = aliases.get(str(kind).lower(), str(kind).lower())
    if name not in DAS_KINDS:
        raise ValueError(f"unknown DAS anomaly type {kind!r}; choose one of {', '.join(list_das_kinds())} "
                         f"(aliases: {', '.join(aliases)})")
    return name


def kind_params(cfg: "DASConfig", kind: str) -> Any:
    """The parameters of ``kind``: its section of ``cfg`` (``cfg.crack``), else its registered ``params``."""
    name = canonical_kind(kind)
    return getattr(cfg, name) if name in {f.name for f in fields(cfg)} else DAS_KINDS.get(name).params


# --------------------------------------------------------------------------- config


def _check_range(owner: str, name: str, value: tuple, low: float = 0.0, high: float = math.inf,
                 integer: bool = False) -> None:
    if len(value) != 2 or not value[0] <= value[1]:
        raise ValueError(f"{owner}.{name}={value!r} must be a (min, max) pair with min <= max")
    if not (low <= value[0] and value[1] <= high):
        raise ValueError(f"{owner}.{name}={value!r} must lie within [{low}, {high}]")
    if integer and not all(float(v).is_integer() for v in value):
        raise ValueError(f"{owner}.{name}={value!r} must be whole numbers")


@dataclass(frozen=True)
class MisplacedConfig:
    """Cut-paste ("misplaced") anomalies.

    Attributes:
        area: (min, max) share of the image covered by the changed pixels (all patches).
        patches: (min, max) number of patches per image.
        aspect: (min, max) height/width ratio of a patch, drawn log-uniformly.
        max_side: largest patch side as a share of the image side.
        max_rotation_deg: the pasted content is rotated by an angle drawn uniformly in
            [-max, max] relative to where it was cut **[choice]** (the paper only says
            "cut ... and placed at different locations").
        flip_prob: probability that a patch is mirrored before pasting **[choice]**.
    """

    area: tuple[float, float] = (0.01, 0.08)
    patches: tuple[int, int] = (1, 3)
    aspect: tuple[float, float] = (0.33, 3.0)
    max_side: float = 0.4
    max_rotation_deg: float = 30.0
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        _check_range("MisplacedConfig", "area", self.area, 0.0, 1.0)
        _check_range("MisplacedConfig", "patches", self.patches, 1, 64, integer=True)
        _check_range("MisplacedConfig", "aspect", self.aspect, 1e-3)
        if not 0 < self.max_side <= 1:
            raise ValueError(f"MisplacedConfig.max_side={self.max_side} must be in (0, 1]")


@dataclass(frozen=True)
class BlurryConfig:
    """Gaussian-blur ("blurry"/"fuzzy") anomalies.

    Attributes:
        area: (min, max) share of the image covered by the changed pixels.
        blobs: (min, max) number of random blobs making the region.
        sigma: (min, max) Gaussian standard deviation in pixels at ``reference_size``
            (the paper gives none) **[choice]**.
    """

    area: tuple[float, float] = (0.02, 0.12)
    blobs: tuple[int, int] = (1, 2)
    sigma: tuple[float, float] = (2.0, 5.0)

    def __post_init__(self) -> None:
        _check_range("BlurryConfig", "area", self.area, 0.0, 1.0)
        _check_range("BlurryConfig", "blobs", self.blobs, 1, 16, integer=True)
        _check_range("BlurryConfig", "sigma", self.sigma, 1e-3)


@dataclass(frozen=True)
class CrackConfig:
    """Crack anomalies: random walks with varying heading, tapering width and branches.

    Attributes:
        area: (min, max) share of the image covered by the changed pixels.
        cracks: (min, max) number of main cracks per image.
        length: (min, max) length of a main crack as a share of the shorter image side.
        step: random-walk step in pixels at ``reference_size``.
        drift_std_deg: standard deviation of the accumulated change of course per step
            (how much a crack bends over its length).
        jag_std_deg: standard deviation of the independent per-step deviation from the
            course (how jagged it is in detail).
        width: (min, max) widest point of a crack in pixels at ``reference_size``; the
            width tapers to 30 % of it at both ends.
        max_branches: branches per main crack, each present with ``branch_prob``.
        branch_prob: probability of each branch.
        branch_angle_deg: (min, max) angle between a branch and its parent.
        branch_length: (min, max) branch length as a share of its parent's length.
        contrast: (min, max) darkening (or lightening) of the fill: the crack shows the
            image shifted by ``shift`` pixels, multiplied by ``1 - contrast`` **[choice]**
            ("textures consistent with the background pattern").
        shift: (min, max) displacement in pixels of the texture copy used as fill.
        dark_threshold: images whose mean foreground luminance is below it get light
            cracks (darkening a black surface changes nothing).
    """

    area: tuple[float, float] = (0.001, 0.04)
    cracks: tuple[int, int] = (1, 3)
    length: tuple[float, float] = (0.25, 0.6)
    step: float = 3.0
    drift_std_deg: float = 8.0
    jag_std_deg: float = 30.0
    width: tuple[float, float] = (1.0, 3.0)
    max_branches: int = 2
    branch_prob: float = 0.5
    branch_angle_deg: tuple[float, float] = (20.0, 60.0)
    branch_length: tuple[float, float] = (0.25, 0.6)
    contrast: tuple[float, float] = (0.35, 0.75)
    shift: tuple[float, float] = (2.0, 6.0)
    dark_threshold: float = 0.3

    def __post_init__(self) -> None:
        _check_range("CrackConfig", "area", self.area, 0.0, 1.0)
        _check_range("CrackConfig", "cracks", self.cracks, 1, 64, integer=True)
        _check_range("CrackConfig", "length", self.length, 1e-3, 4.0)
        _check_range("CrackConfig", "width", self.width, 0.1)
        _check_range("CrackConfig", "branch_angle_deg", self.branch_angle_deg, 0.0, 180.0)
        _check_range("CrackConfig", "branch_length", self.branch_length, 0.0, 1.0)
        _check_range("CrackConfig", "contrast", self.contrast, 0.0, 1.0)
        _check_range("CrackConfig", "shift", self.shift, 0.0)
        if self.step <= 0:
            raise ValueError(f"CrackConfig.step={self.step} must be > 0 (pixels)")
        if self.max_branches < 0 or not 0 <= self.branch_prob <= 1:
            raise ValueError("CrackConfig needs max_branches >= 0 and 0 <= branch_prob <= 1, got "
                             f"{self.max_branches}, {self.branch_prob}")


@dataclass(frozen=True)
class NoiseConfig:
    """Noise anomalies (paper: "uniform noise, positively distributed noise, or Gaussian noise").

    Attributes:
        area: (min, max) share of the image covered by the changed pixels.
        blobs: (min, max) number of random blobs making the region.
        kinds: noise distributions drawn uniformly per image: ``uniform`` (U(-a, a)),
            ``gaussian`` (``N(0, a^2)``), ``positive`` (``|N(0, a^2)|``, one-sided brightening).
        amplitude: (min, max) of ``a`` on the [0, 1] intensity scale **[choice]**.
        color_prob: probability of independent noise per channel (coloured); otherwise
            the same noise on all channels. Grayscale-origin images (equal channels)
            always get monochrome noise.
    """

    area: tuple[float, float] = (0.02, 0.12)
    blobs: tuple[int, int] = (1, 2)
    kinds: tuple[str, ...] = NOISE_KINDS
    amplitude: tuple[float, float] = (0.15, 0.4)
    color_prob: float = 0.5

    def __post_init__(self) -> None:
        _check_range("NoiseConfig", "area", self.area, 0.0, 1.0)
        _check_range("NoiseConfig", "blobs", self.blobs, 1, 16, integer=True)
        _check_range("NoiseConfig", "amplitude", self.amplitude, 0.0)
        bad = [k for k in self.kinds if k not in NOISE_KINDS]
        if not self.kinds or bad:
            raise ValueError(f"NoiseConfig.kinds={self.kinds!r}: use a non-empty subset of {NOISE_KINDS}")


@dataclass(frozen=True)
class CombinedConfig:
    """The ``combined`` type: several base types on one image (Fig. 3, last column).

    Attributes:
        types: base types a combined anomaly draws from.
        parts: (min, max) number of distinct base types per image **[choice]**.
        area: (min, max) share of the image covered by the union of the parts' changed
            pixels; each part uses its own type's bounds divided by the number of parts.
    """

    types: tuple[str, ...] = BASE_KINDS
    parts: tuple[int, int] = (2, 4)
    area: tuple[float, float] = (0.005, 0.2)

    def __post_init__(self) -> None:
        kinds = tuple(canonical_kind(k) for k in self.types)
        if "combined" in kinds or len(set(kinds)) < 2:
            raise ValueError(f"CombinedConfig.types={self.types!r}: give at least two distinct base types "
                             f"from {BASE_KINDS}")
        object.__setattr__(self, "types", kinds)
        _check_range("CombinedConfig", "parts", self.parts, 1, len(kinds), integer=True)
        _check_range("CombinedConfig", "area", self.area, 0.0, 1.0)


@dataclass(frozen=True)
class DASConfig:
    """All DAS parameters (defaults documented per field; see the chapter ``02_das``).

    Attributes:
        types: types the training selector draws from, uniformly **[choice]** (the paper
            does not give the mixture). Table III's single-type rows restrict it to one
            type, e.g. ``DASConfig(types=("crack",))``; its "All" row is the default.
        misplaced, blurry, crack, noise, combined: per-type parameters.
        blob_roughness: irregularity of blob regions: amplitude of the random radial
            harmonics (0 gives discs; 0.4 gives potato-like shapes).
        min_pixel_change: a pixel counts as altered (and enters the mask) when some
            channel moved by at least this much on the [0, 1] scale **[choice]**; smaller
            changes are undone, so "outside the mask" is bit-identical to the input.
        changed_fraction_min: share of a drawn region that must actually change, else the
            draw is redone stronger **[choice]**.
        max_retries: redraws per image before the guaranteed fallback noise.
        retry_gain: each redraw multiplies the strength (blur sigma, noise amplitude,
            crack contrast) by this factor.
        foreground: how object foregrounds are estimated (:mod:`vtfusion.foreground`).
        reference_size: image side at which the pixel sizes of the config hold.
        cpu_threads: torch CPU threads used while synthesising CPU tensors (restored
            afterwards); None leaves torch's setting. 1 by default **[choice]**: DAS is a
            few hundred image-sized ops whose thread hand-offs cost more than a second
            thread saves as soon as the machine is busy. On the project's shared 2-core
            machine a mixed batch of 16 took 60-100 ms either way with free cores, but up
            to 1.6 s with 2 threads under load against 0.11 s with 1 (``bench/bench_das.py``).
    """

    types: tuple[str, ...] = ALL_KINDS
    misplaced: MisplacedConfig = field(default_factory=MisplacedConfig)
    blurry: BlurryConfig = field(default_factory=BlurryConfig)
    crack: CrackConfig = field(default_factory=CrackConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    combined: CombinedConfig = field(default_factory=CombinedConfig)
    blob_roughness: float = 0.4
    min_pixel_change: float = 2.0 / 255.0
    changed_fraction_min: float = 0.3
    max_retries: int = 4
    retry_gain: float = 1.5
    foreground: ForegroundConfig = field(default_factory=ForegroundConfig)
    reference_size: int = 240
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        if isinstance(self.types, str):
            object.__setattr__(self, "types", (self.types,))
        kinds = tuple(dict.fromkeys(canonical_kind(k) for k in self.types))
        if not kinds:
            raise ValueError("DASConfig.types is empty; enable at least one of " + ", ".join(list_das_kinds()))
        object.__setattr__(self, "types", kinds)
        if not 0.0 <= self.changed_fraction_min <= 1.0:
            raise ValueError(f"DASConfig.changed_fraction_min={self.changed_fraction_min} must be in [0, 1]")
        if not 0.0 <= self.min_pixel_change < 1.0:
            raise ValueError(f"DASConfig.min_pixel_change={self.min_pixel_change} must be in [0, 1)")
        if self.max_retries < 0 or self.retry_gain < 1.0:
            raise ValueError(f"DASConfig needs max_retries >= 0 and retry_gain >= 1, got "
                             f"{self.max_retries}, {self.retry_gain}")
        if self.reference_size <= 0 or self.blob_roughness < 0:
            raise ValueError("DASConfig needs reference_size > 0 and blob_roughness >= 0")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"DASConfig.cpu_threads={self.cpu_threads} must be >= 1 or None")

    def only(self, kind: str) -> "DASConfig":
        """A copy whose selector draws only ``kind`` (a Table III single-type row)."""
        return dataclasses.replace(self, types=(canonical_kind(kind),))

    def to_dict(self) -> dict:
        """Plain nested dictionary (for saving next to results)."""
        return _asdict(self)


def _asdict(obj):
    if is_dataclass(obj):
        return {f.name: _asdict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_asdict(v) for v in obj]
    return obj


def area_bounds(kind: str, config: DASConfig | None = None) -> tuple[float, float]:
    """(min, max) share of the image that the mask of a ``kind`` anomaly covers.

    Holds for every returned mask except the rare fallback on an image whose foreground
    is smaller than the minimum (see :func:`synthesize_batch`).
    """
    cfg = config or DASConfig()
    return tuple(kind_params(cfg, kind).area)  # type: ignore[return-value]


# --------------------------------------------------------------------------- selector


class AnomalyTypeSelector:
    """Draws the anomaly type of each training image, uniformly over the enabled types.

    The default enables the four types and ``combined`` (Table III "All");
    :meth:`restrict` gives a selector for one Table III single-type row.

    Example::

        sel = AnomalyTypeSelector.from_config(DASConfig())
        kinds = sel.sample(4, torch.Generator().manual_seed(0))  # e.g. ['crack', 'combined', ...]
    """

    def __init__(self, types: Sequence[str] = ALL_KINDS) -> None:
        kinds = tuple(dict.fromkeys(canonical_kind(k) for k in ([types] if isinstance(types, str) else types)))
        if not kinds:
            raise ValueError("AnomalyTypeSelector needs at least one type; choose from "
                             + ", ".join(list_das_kinds()))
        self.types = kinds

    @classmethod
    def from_config(cls, config: DASConfig) -> "AnomalyTypeSelector":
        return cls(config.types)

    def restrict(self, kind: str) -> "AnomalyTypeSelector":
        """A selector that always returns ``kind`` (Table III ablation)."""
        return AnomalyTypeSelector((kind,))

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[str]:
        """``n`` types drawn independently and uniformly from :attr:`types`."""
        if n < 0:
            raise ValueError(f"AnomalyTypeSelector.sample: n must be >= 0, got {n}")
        dev = generator.device if generator is not None else "cpu"
        idx = torch.randint(len(self.types), (n,), generator=generator, device=dev).tolist()
        return [self.types[i] for i in idx]

    def __repr__(self) -> str:
        return f"AnomalyTypeSelector(types={self.types})"


# --------------------------------------------------------------------------- randomness


def make_generator(seed: int | torch.Generator | np.random.Generator | None,
                   device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` from a seed, a numpy ``Generator`` (one draw), or None (fresh entropy)."""
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    elif isinstance(seed, np.random.Generator):
        gen.manual_seed(int(seed.integers(0, 2**63 - 1)))
    elif isinstance(seed, (int, np.integer)):
        gen.manual_seed(int(seed))
    else:
        raise TypeError(f"generator must be an int seed, torch.Generator, numpy Generator or None, "
                        f"got {type(seed).__name__}")
    return gen


class _Draw:
    """Random numbers from one generator, delivered on the images' device."""

    def __init__(self, generator: torch.Generator, device: torch.device) -> None:
        self.g, self.device = generator, device

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.g, device=self.g.device).to(self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.g, device=self.g.device).to(self.device)

    def uniform(self, lo, hi, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * self.rand(*shape)

    def log_uniform(self, lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.exp(self.uniform(math.log(lo), math.log(hi), *shape))

    def integers(self, lo: int, hi: int, *shape: int) -> torch.Tensor:
        """Uniform integers in [lo, hi] (inclusive)."""
        return (lo + (self.rand(*shape) * (hi - lo + 1)).floor().clamp(max=hi - lo)).long()

    def points_on(self, allowed: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` points per image uniformly on the True pixels of ``allowed`` (``n x H x W``).

        Returns ``n x count x 2`` float (y, x) pixel coordinates.
        """
        n, h, w = allowed.shape
        weights = allowed.flatten(1).float()
        weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, torch.ones_like(weights))
        idx = torch.multinomial(weights.to(self.g.device), count, replacement=True, generator=self.g)
        idx = idx.to(self.device)
        jitter = self.rand(n, count, 2) - 0.5
        return torch.stack((idx // w, idx % w), -1).float() + jitter


# --------------------------------------------------------------------------- shapes


def _target_area(d: _Draw, bounds: tuple[float, float], area_scale: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Target area in pixels per image, log-uniform in the upper part of ``bounds``.

    The lower end is raised to 1.5 x the minimum (when that fits) because the border and
    the foreground clip regions: drawing right at the minimum would mostly end in a redraw.
    """
    lo, hi = bounds
    return d.log_uniform(min(1.5 * lo, hi), hi, area_scale.shape[0]) * area_scale * h * w


def _grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.arange(h, device=device, dtype=torch.float32)[:, None],
            torch.arange(w, device=device, dtype=torch.float32)[None, :])


def _blob_region(d: _Draw, fg: torch.Tensor, area_px: torch.Tensor, blobs: tuple[int, int],
                 roughness: float, angle_bins: int = 256) -> torch.Tensor:
    """Union of irregular blobs of total area ~``area_px`` centred on ``fg``; ``n x H x W`` bool.

    A blob is the star-shaped region ``rho <= r0 * (1 + sum_k a_k cos(k theta + phi_k))``,
    k = 2..5 with random ``a_k ~ U(-roughness, roughness) / k``; ``r0`` is set so that its
    area is the blob's share of ``area_px``. The radius is tabulated over ``angle_bins``
    directions and looked up per pixel (one ``atan2`` instead of trig per harmonic).
    """
    n, h, w = fg.shape
    nb = blobs[1]
    count = d.integers(blobs[0], nb, n)
    centres = d.points_on(fg, nb)  # n x B x 2
    ks = torch.arange(2, 6, device=fg.device, dtype=torch.float32)
    amp = d.uniform(-roughness, roughness, n, nb, 4) / ks
    phase = d.uniform(0.0, 2 * math.pi, n, nb, 4)
    # Mean of r(theta)^2 is r0^2 (1 + sum a_k^2 / 2): divide it out so the area is as drawn.
    r0 = torch.sqrt(area_px[:, None] / count[:, None] / (math.pi * (1 + 0.5 * (amp**2).sum(-1))))
    theta = (torch.arange(angle_bins, device=fg.device, dtype=torch.float32) + 0.5) * (2 * math.pi / angle_bins)
    harmonics = torch.cos(ks[:, None] * theta[None] + phase[..., None])  # n x B x 4 x bins
    radius = r0[..., None] * (1 + (amp[..., None] * harmonics).sum(2))  # n x B x bins
    radius2 = torch.where((torch.arange(nb, device=fg.device)[None] < count[:, None])[..., None],
                          radius.clamp_min(0) ** 2, torch.full_like(radius, -1.0))  # absent blob: empty
    yy, xx = _grid(h, w, fg.device)
    region = torch.zeros(n, h, w, dtype=torch.bool, device=fg.device)
    for j in range(nb):
        dy = yy - centres[:, j, 0, None, None]
        dx = xx - centres[:, j, 1, None, None]
        ang = torch.atan2(dy, dx)  # [-pi, pi]
        bin_ = ((ang + math.pi) * (angle_bins / (2 * math.pi))).long().clamp_(0, angle_bins - 1)
        r2 = torch.gather(radius2[:, j], 1, bin_.flatten(1)).view(n, h, w)
        region |= dy * dy + dx * dx <= r2
    return region & fg


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one ``sigma`` (pixels) per image; ``n x C x H x W``."""
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(3.0 * float(sigma.max()))))
    offs = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kern = torch.exp(-0.5 * (offs[None] / sigma[:, None].to(x.dtype)) ** 2)
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c) x K
    mode = "reflect" if radius < min(h, w) else "replicate"
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode=mode), kern[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode=mode), kern[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def _is_gray(x: torch.Tensor) -> torch.Tensor:
    """Per image: all channels equal (a grayscale source stored as RGB)."""
    if x.shape[1] == 1:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return (x == x[:, :1]).flatten(1).all(1)


# --------------------------------------------------------------------------- the four types
# Each draw function takes the images ``x`` (n x C x H x W float in [0, 1]), the allowed
# region ``fg`` (n x H x W bool), per-image strength and area scale (``n``), and returns the
# altered images and the region it touched; the caller derives the exact mask.


def _bilinear_at(x: torch.Tensor, b: torch.Tensor, sy: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``x`` (``n x C x H x W``) at points (image ``b``, row ``sy``, column ``sx``).

    Points must lie in ``[0, H-1] x [0, W-1]``; returns ``P x C``. Whole-pixel points are copied exactly.
    """
    _, _, h, w = x.shape
    y0 = sy.floor().clamp(0, max(h - 2, 0)).long()
    x0 = sx.floor().clamp(0, max(w - 2, 0)).long()
    fy = (sy - y0).clamp(0, 1).to(x.dtype)[:, None]
    fx = (sx - x0).clamp(0, 1).to(x.dtype)[:, None]
    y1, x1 = (y0 + 1).clamp(max=h - 1), (x0 + 1).clamp(max=w - 1)
    top = x[b, :, y0, x0] * (1 - fx) + x[b, :, y0, x1] * fx
    bottom = x[b, :, y1, x0] * (1 - fx) + x[b, :, y1, x1] * fx
    # Exact copy where the weights are 0/1 (an unrotated patch): avoid 0 * inf-style rounding noise.
    return torch.where(fy == 0, top, torch.where(fy == 1, bottom, top * (1 - fy) + bottom * fy))


def _draw_misplaced(d: _Draw, x, fg, cfg: DASConfig, strength: torch.Tensor, area_scale, quantise=None):
    """Misplaced type (paper III-B): patches cut from the image and pasted elsewhere.

    Each patch is a rectangle of random size, aspect and orientation whose centre lies on
    the foreground; its content is the image around a random source centre, optionally
    rotated and mirrored. Patches are cut from the original image.
    """
    mc = cfg.misplaced
    n, _, h, w = x.shape
    count = d.integers(mc.patches[0], mc.patches[1], n)
    pmax = mc.patches[1]
    area = _target_area(d, mc.area, area_scale, h, w) / count  # px^2 per patch
    aspect = d.log_uniform(*mc.aspect, n, pmax)
    ph = torch.sqrt(area[:, None] * aspect).clamp(1.0, mc.max_side * h)
    pw = torch.sqrt(area[:, None] / aspect).clamp(1.0, mc.max_side * w)
    dst = d.points_on(fg, pmax).round()
    src = torch.stack((d.uniform(ph / 2, h - ph / 2, n, pmax), d.uniform(pw / 2, w - pw / 2, n, pmax)), -1)
    # A whole-pixel offset keeps an unrotated, unmirrored patch an exact copy of its source.
    offset = (src - dst).round()
    rot = torch.deg2rad(d.uniform(-mc.max_rotation_deg, mc.max_rotation_deg, n, pmax))
    rot = torch.where(d.rand(n, pmax) < 0.5, torch.zeros_like(rot), rot)  # half the patches unrotated
    psi = d.uniform(0.0, math.pi, n, pmax)  # orientation of the pasted footprint
    flip = d.rand(n, pmax) < mc.flip_prob
    # All patches at once (n x P x H x W); where footprints overlap the later patch wins,
    # as if they were pasted one after the other.
    yy, xx = _grid(h, w, x.device)
    qy = yy - dst[..., 0, None, None]
    qx = xx - dst[..., 1, None, None]
    cp, sp = torch.cos(psi)[..., None, None], torch.sin(psi)[..., None, None]
    inside = ((cp * qx + sp * qy).abs() <= pw[..., None, None] / 2) & \
             ((cp * qy - sp * qx).abs() <= ph[..., None, None] / 2)
    inside &= (torch.arange(pmax, device=x.device)[None] < count[:, None])[..., None, None]
    owner = (inside * torch.arange(1, pmax + 1, device=x.device, dtype=torch.uint8)[:, None, None]).amax(1)
    b, py, px_ = ((owner > 0) & fg).nonzero(as_tuple=True)
    j = owner[b, py, px_].long() - 1
    # Source coordinates of the selected pixels only (the footprints are a few % of the image).
    ly, lx = py.float() - dst[b, j, 0], px_.float() - dst[b, j, 1]
    lxf = torch.where(flip[b, j], -lx, lx)
    cr, sr = torch.cos(rot[b, j]), torch.sin(rot[b, j])
    sx = px_.float() + offset[b, j, 1] + (cr * lxf - lx) - sr * ly
    sy = py.float() + offset[b, j, 0] + (sr * lxf + cr * ly - ly)
    ok = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
    b, py, px_, sy, sx = b[ok], py[ok], px_[ok], sy[ok], sx[ok]
    out = x.clone()
    out[b, :, py, px_] = _bilinear_at(x, b, sy, sx)
    region = torch.zeros(n, h, w, dtype=torch.bool, device=x.device)
    region[b, py, px_] = True
    return out, region


def _draw_blurry(d: _Draw, x, fg, cfg: DASConfig, strength: torch.Tensor, area_scale, quantise=None):
    """Blurry type (paper III-B): Gaussian blur inside a random blob region."""
    bc = cfg.blurry
    n, _, h, w = x.shape
    px = min(h, w) / cfg.reference_size
    region = _blob_region(d, fg, _target_area(d, bc.area, area_scale, h, w), bc.blobs, cfg.blob_roughness)
    sigma = (d.uniform(*bc.sigma, n) * px * strength).clamp_min(0.5)
    return _gaussian_blur(x, sigma), region  # _finalise keeps it inside the region only


def _crack_walks(d: _Draw, fg, cc: CrackConfig, px: float):
    """Main cracks and their branches as random walks.

    Returns points ``n x P x T+1 x 2`` (y, x), per-walk length in pixels ``n x P``,
    whether each walk exists ``n x P`` and its widest width ``n x P`` (pixels).
    """
    n, h, w = fg.shape
    short = min(h, w)
    cmax, nb = cc.cracks[1], cc.max_branches
    step = max(cc.step * px, 0.5)
    steps = max(1, int(math.ceil(cc.length[1] * short / step)))
    drift, jag = math.radians(cc.drift_std_deg), math.radians(cc.jag_std_deg)

    def walk(start, heading0, count):  # start: n x m x 2, heading0: n x m
        # A slowly bending course (accumulated drift) plus independent per-step zig-zag:
        # straight-ish overall, jagged in detail, as fractures are.
        course = heading0[..., None] + torch.cumsum(d.randn(*heading0.shape, count) * drift, -1)
        heading = course + d.randn(*heading0.shape, count) * jag
        delta = step * torch.stack((torch.sin(heading), torch.cos(heading)), -1)
        pts = torch.cat((start[:, :, None], start[:, :, None] + torch.cumsum(delta, 2)), 2)
        return pts, torch.cat((heading0[..., None], course), -1)

    ncr = d.integers(cc.cracks[0], cc.cracks[1], n)
    length = d.uniform(*cc.length, n, cmax) * short
    main, heading = walk(d.points_on(fg, cmax), d.uniform(0, 2 * math.pi, n, cmax), steps)
    main_on = torch.arange(cmax, device=fg.device)[None] < ncr[:, None]
    width = d.uniform(*cc.width, n, cmax) * px
    walks, lengths, exists, widths = [main], [length], [main_on], [width]
    if nb > 0:
        # Branches leave their parent somewhere in its middle 60 %, at an angle to it.
        at = (d.uniform(0.2, 0.8, n, cmax, nb) * length[..., None] / step).long().clamp(0, steps)
        b_start = torch.gather(main, 2, at[..., None].expand(-1, -1, -1, 2))
        side = torch.where(d.rand(n, cmax, nb) < 0.5, -1.0, 1.0)
        b_head = torch.gather(heading, 2, at) + side * torch.deg2rad(d.uniform(*cc.branch_angle_deg, n, cmax, nb))
        b_pts, _ = walk(b_start.reshape(n, cmax * nb, 2), b_head.reshape(n, cmax * nb), steps)
        walks.append(b_pts)
        lengths.append((length[..., None] * d.uniform(*cc.branch_length, n, cmax, nb)).reshape(n, -1))
        exists.append((main_on[..., None] & (d.rand(n, cmax, nb) < cc.branch_prob)).reshape(n, -1))
        widths.append((width[..., None] * 0.6).expand(-1, -1, nb).reshape(n, -1))
    return torch.cat(walks, 1), torch.cat(lengths, 1), torch.cat(exists, 1), torch.cat(widths, 1), step


def _rasterise_cracks(pts, lengths, exists, widths, step: float, h: int, w: int) -> torch.Tensor:
    """Draw tapering poly-lines into ``n x H x W`` bool.

    Points are densified to < 0.5 px spacing and splatted into one layer per width class
    (odd widths 1, 3, 5, ...); wider classes are dilated further by repeated 3x3 max pools.
    """
    n, p, t1, _ = pts.shape
    sub = max(1, int(math.ceil(step / 0.5)))
    frac = torch.arange(sub, device=pts.device, dtype=pts.dtype) / sub
    seg = pts[:, :, :-1, None] + (pts[:, :, 1:, None] - pts[:, :, :-1, None]) * frac[:, None]
    seg = seg.reshape(n, p, -1, 2)  # n x P x (T*sub) x 2
    arc = (torch.arange(seg.shape[2], device=pts.device, dtype=pts.dtype) / sub * step)[None, None]
    u = arc / lengths[..., None].clamp_min(1e-6)  # position along the walk, 0..1
    width = widths[..., None] * (0.3 + 0.7 * torch.sin(math.pi * u.clamp(0, 1)))
    cls = ((width - 1) / 2).round().clamp_min(0).long()  # kernel 2*cls+1
    yi, xi = seg[..., 0].round().long(), seg[..., 1].round().long()
    keep = (u <= 1) & exists[..., None] & (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    k = int(cls[keep].max()) + 1 if bool(keep.any()) else 1
    layers = torch.zeros(n * k * h * w, dtype=torch.float32, device=pts.device)
    b = torch.arange(n, device=pts.device)[:, None, None].expand_as(yi)
    flat = ((b * k + cls.clamp(max=k - 1)) * h + yi) * w + xi
    layers[flat[keep]] = 1.0  # same value everywhere: the result does not depend on write order
    layers = layers.view(n, k, h, w)
    acc = layers[:, k - 1]
    for c in range(k - 2, -1, -1):
        acc = torch.maximum(layers[:, c], _dilate3(acc))
    return acc > 0.5


def _dilate3(m: torch.Tensor) -> torch.Tensor:
    """3x3 binary dilation of ``n x H x W`` by shifted maxima (cheaper than max_pool2d on CPU)."""
    p = F.pad(m, (1, 1, 1, 1))
    rows = torch.maximum(torch.maximum(p[:, :, :-2], p[:, :, 1:-1]), p[:, :, 2:])
    return torch.maximum(torch.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _draw_crack(d: _Draw, x, fg, cfg: DASConfig, strength: torch.Tensor, area_scale, quantise=None):
    """Crack type (paper III-B): thin irregular branching cracks filled with the image's own texture."""
    cc = cfg.crack
    n, c, h, w = x.shape
    px = min(h, w) / cfg.reference_size
    pts, lengths, exists, widths, step = _crack_walks(d, fg, cc, px)
    # Combined parts scale lengths so that a crack part keeps to its share of the area.
    lengths = lengths * area_scale[:, None].clamp(max=1.0).sqrt()
    region = _rasterise_cracks(pts, lengths, exists, widths, step, h, w) & fg
    # Fill: the same image shifted by a few pixels (texture consistent with the background,
    # yet not identical to what was there), darkened, or lightened on dark surfaces.
    shift = d.uniform(*cc.shift, n) * px
    ang = d.uniform(0, 2 * math.pi, n)
    sy, sx = (shift * torch.sin(ang)).round().long(), (shift * torch.cos(ang)).round().long()
    iy = (torch.arange(h, device=x.device)[None, :, None] - sy[:, None, None]).clamp(0, h - 1)
    ix = (torch.arange(w, device=x.device)[None, None, :] - sx[:, None, None]).clamp(0, w - 1)
    idx = (iy * w + ix).reshape(n, 1, h * w).expand(-1, c, -1)
    shifted = x.reshape(n, c, h * w).gather(2, idx).reshape(n, c, h, w)
    contrast = (d.uniform(*cc.contrast, n) * strength).clamp(max=0.9)[:, None, None, None]
    lum = to_gray(x)
    fgf = fg.float()
    mean_lum = (lum * fgf).flatten(1).sum(1) / fgf.flatten(1).sum(1).clamp_min(1.0)
    dark = (mean_lum < cc.dark_threshold)[:, None, None, None]
    fill = torch.where(dark, shifted + contrast * (1 - shifted), shifted * (1 - contrast))
    return fill, region  # _finalise keeps it inside the region only


def _draw_noise(d: _Draw, x, fg, cfg: DASConfig, strength: torch.Tensor, area_scale, quantise=None):
    """Noise type (paper III-B): uniform, Gaussian or positive noise inside a random blob."""
    nc = cfg.noise
    n, c, h, w = x.shape
    region = _blob_region(d, fg, _target_area(d, nc.area, area_scale, h, w), nc.blobs, cfg.blob_roughness)
    kind = d.integers(0, len(nc.kinds) - 1, n)
    amp = d.uniform(*nc.amplitude, n) * strength
    mono = _is_gray(x) | (d.rand(n) >= nc.color_prob)
    # Noise is drawn only for the region's pixels (a few % of the image), in raster order.
    b, yy, xx = region.nonzero(as_tuple=True)
    u = d.rand(b.numel(), c)
    u = torch.where(mono[b, None], u[:, :1].expand_as(u), u)
    centred = (2 * u - 1).clamp(-1 + 1e-6, 1 - 1e-6)
    gauss = math.sqrt(2.0) * torch.erfinv(centred)  # N(0, 1) by the inverse CDF: one random field
    by_kind = {"uniform": centred, "gaussian": gauss, "positive": gauss.abs()}
    noise = torch.zeros_like(centred)
    for i, name in enumerate(nc.kinds):
        noise = torch.where((kind[b] == i)[:, None], by_kind[name], noise)
    out = x.clone()
    vals = x[b, :, yy, xx]  # P x C
    out[b, :, yy, xx] = (vals + amp[b, None].to(x.dtype) * noise.to(x.dtype)).clamp(0, 1)
    return out, region


def _draw_fallback(d: _Draw, x, fg, cfg: DASConfig, strength: torch.Tensor, area_scale, bounds):
    """Guaranteed change: push every pixel of a blob by 0.25..0.5 away from its own value."""
    n, _, h, w = x.shape
    lo, hi = bounds
    target = math.sqrt(lo * hi) * area_scale * h * w  # geometric middle of the bounds
    region = _blob_region(d, fg, target, (1, 1), cfg.blob_roughness)
    push = 0.25 + 0.25 * d.rand(n, 1, h, w)
    out = torch.where(x < 0.5, x + push, x - push).clamp(0, 1)
    return out, region  # _finalise keeps it inside the region only


register_das_kind(DASKind("misplaced", _draw_misplaced, "cut-paste: rotated, maybe mirrored patches pasted "
                           "elsewhere", "structural", aliases=("cutpaste", "cut-paste", "cut_paste")))
register_das_kind(DASKind("blurry", _draw_blurry, "Gaussian blur inside a random blob (Table III: fuzzy)",
                          "structural", aliases=("fuzzy", "blur")))
register_das_kind(DASKind("crack", _draw_crack, "thin branching cracks filled with a shifted, darkened copy "
                          "of the image", "textural"))
register_das_kind(DASKind("noise", _draw_noise, "uniform, Gaussian or positive noise inside a random blob",
                          "textural"))


# --------------------------------------------------------------------------- driver


def _finalise(x, out, region, cfg: DASConfig, quantise):
    """Exact mask: region AND changed; pixels that did not change enough are restored."""
    out = quantise(out)
    diff = (out - x).abs().amax(1)
    thr = cfg.min_pixel_change
    changed = diff >= thr * (1 - 1e-4) if thr > 0 else diff > 0
    mask = region & changed
    return torch.where(mask[:, None], out, x), mask


def _accepted(mask, region, cfg: DASConfig, lo_px, hi_px):
    got = mask.flatten(1).sum(1)
    drawn = region.flatten(1).sum(1)
    return (got >= lo_px.clamp_min(1)) & (got <= hi_px) & (got >= cfg.changed_fraction_min * drawn)


def _too_weak(mask, region, cfg: DASConfig, lo_px):
    """Failed because too little changed (not because the region came out too small/large)."""
    got = mask.flatten(1).sum(1)
    drawn = region.flatten(1).sum(1)
    return (got < cfg.changed_fraction_min * drawn) | ((got < lo_px) & (drawn >= lo_px))


def _run_kind(kind: str, x, fg, d: _Draw, cfg: DASConfig, strength: torch.Tensor, quantise, area_scale):
    """One base type (or ``combined``) on ``n`` images, with redraws.

    Returns ``(images, masks, regions)``: the accepted draws, their exact masks and the
    regions they were drawn in (for ``combined``, the union of its parts' masks).
    """
    n, _, h, w = x.shape
    lo, hi = kind_params(cfg, kind).area
    draw = DAS_KINDS.get(kind).draw
    lo_px, hi_px = lo * area_scale * h * w, hi * area_scale * h * w
    s = strength.clone()
    # First draw on all images without copies (most are accepted); redraws on the rest.
    out, region = draw(d, x, fg, cfg, s, area_scale, quantise)
    out, mask = _finalise(x, out, region, cfg, quantise)
    drawn = region
    ok = _accepted(mask, region, cfg, lo_px, hi_px)
    # Only a draw that changed too little is redone stronger; a region that came out too
    # small or too large (clipped by the border or the foreground) is just redrawn.
    s = torch.where(_too_weak(mask, region, cfg, lo_px) & ~ok, s * cfg.retry_gain, s)
    todo = (~ok).nonzero()[:, 0]
    if todo.numel() == 0:
        return out, mask, drawn
    for _ in range(cfg.max_retries):
        xs, fs, sc = x[todo], fg[todo], area_scale[todo]
        o, region = draw(d, xs, fs, cfg, s[todo], sc, quantise)
        o, m = _finalise(xs, o, region, cfg, quantise)
        ok = _accepted(m, region, cfg, lo_px[todo], hi_px[todo])
        out[todo[ok]], mask[todo[ok]], drawn[todo[ok]] = o[ok], m[ok], region[ok]
        weak = _too_weak(m, region, cfg, lo_px[todo]) & ~ok
        s[todo[weak]] *= cfg.retry_gain
        todo = todo[~ok]
        if todo.numel() == 0:
            return out, mask, drawn
    # Rare: e.g. a perfectly flat image cannot be blurred. Keep the contract (a non-empty
    # exact mask) with a change that cannot fail.
    for attempt in range(3):
        xs, fs, sc = x[todo], fg[todo], area_scale[todo]
        o, region = _draw_fallback(d, xs, fs, cfg, s[todo], sc, (lo, hi))
        o, m = _finalise(xs, o, region, cfg, quantise)
        ok = _accepted(m, region, cfg, lo_px[todo], hi_px[todo]) | (attempt == 2)
        out[todo[ok]], mask[todo[ok]], drawn[todo[ok]] = o[ok], m[ok], region[ok]
        todo = todo[~ok]
        if todo.numel() == 0:
            break
    return out, mask, drawn


def _draw_combined(d: _Draw, x, fg, cfg: DASConfig, strength: torch.Tensor, area_scale, quantise):
    """Combined type (Fig. 3): 2..4 distinct base types applied one after the other."""
    cc = cfg.combined
    n = x.shape[0]
    t = len(cc.types)
    parts = d.integers(cc.parts[0], cc.parts[1], n)
    rank = d.rand(n, t).argsort(1).argsort(1)  # a random ranking of the types per image
    include = rank < parts[:, None]
    order = d.rand(t).argsort().tolist()  # order in which the parts are applied
    out = x.clone()
    region = torch.zeros(x.shape[0], x.shape[2], x.shape[3], dtype=torch.bool, device=x.device)
    for ti in order:
        sel = include[:, ti].nonzero()[:, 0]
        if sel.numel() == 0:
            continue
        o, m, _ = _run_kind(cc.types[ti], out[sel], fg[sel], d, cfg, strength[sel], quantise,
                            area_scale[sel] / parts[sel].float())
        out[sel] = o
        region[sel] |= m
    return out, region


register_das_kind(DASKind("combined", _draw_combined, "several of the base types on one image (Fig. 3, "
                          "last column)", "mixed", aliases=("all",)))


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"{name} must be a B x C x H x W tensor, got "
                         f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"{name} must be float in [0, 1] or uint8, got dtype {images.dtype}")
    if images.is_floating_point() and images.numel():
        lo, hi = float(images.amin()), float(images.amax())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"{name} are float with values in [{lo:.3g}, {hi:.3g}]; DAS needs [0, 1] "
                             "(divide 0..255 images by 255, or pass them as uint8; undo any normalisation)")


def _prepare_foreground(foreground, images: torch.Tensor) -> torch.Tensor:
    b, _, h, w = images.shape
    if foreground is None:
        return torch.ones(b, h, w, dtype=torch.bool, device=images.device)
    fg = torch.as_tensor(foreground, device=images.device)
    if fg.ndim == 4 and fg.shape[1] == 1:
        fg = fg[:, 0]
    if fg.ndim == 2:
        fg = fg.expand(b, h, w)
    if tuple(fg.shape) != (b, h, w):
        raise ValueError(f"foreground has shape {tuple(fg.shape)}; expected {b} x 1 x {h} x {w} "
                         f"(or {b} x {h} x {w}, or {h} x {w}) to match the images; see vtfusion.foreground")
    return fg > 0.5 if fg.is_floating_point() else fg.bool()


@torch.no_grad()
def synthesize_batch(
    images: torch.Tensor,
    generator: torch.Generator | int | np.random.Generator | None = None,
    config: DASConfig | None = None,
    foreground: torch.Tensor | None = None,
    kinds: str | Sequence[str] | None = None,
    strength: float = 1.0,
    *,
    with_regions: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Synthesise one abnormal image per input image (Algorithm 1, line 4).

    Args:
        images: ``B x C x H x W`` float in [0, 1] (any float dtype) or uint8, CPU or CUDA.
        generator: a ``torch.Generator`` (ideally on the images' device), an int seed, a
            numpy ``Generator``, or None (fresh entropy). Same seed and device: identical output.
        config: :class:`DASConfig`; the default when None.
        foreground: where anomalies may go, ``B x 1 x H x W`` / ``B x H x W`` / ``H x W``
            (bool or {0, 1}); None means anywhere. Compute it once per shot image with
            :func:`vtfusion.foreground.category_foreground`.
        kinds: the type of each image (a list of B names, or one name for all); None draws
            them with :class:`AnomalyTypeSelector` over ``config.types``.
        strength: multiplies blur sigma, noise amplitude and crack contrast.
        with_regions: also return the regions the anomalies were drawn in (the mask is
            the part of the region that actually changed; at least
            ``config.changed_fraction_min`` of it).

    Returns:
        ``(abnormal, masks)``, or ``(abnormal, masks, regions)`` with ``with_regions``:
        ``abnormal`` like ``images`` (dtype, device); ``masks`` float32 ``B x 1 x H x W`` in
        {0, 1}, 1 exactly where a pixel differs from the input; ``regions`` bool ``B x 1 x H x W``.
    """
    cfg = config or DASConfig()
    _check_images(images)
    with _cpu_threads(cfg.cpu_threads if images.device.type == "cpu" else None):
        return _synthesize_batch(images, generator, cfg, foreground, kinds, strength, with_regions)


@contextlib.contextmanager
def _cpu_threads(n: int | None):
    """Temporarily use ``n`` torch CPU threads (None: leave as is)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _synthesize_batch(images, generator, cfg: DASConfig, foreground, kinds, strength, with_regions):
    b, _, h, w = images.shape
    gen = make_generator(generator, images.device)
    if kinds is None:
        kinds = AnomalyTypeSelector.from_config(cfg).sample(b, gen)
    elif isinstance(kinds, str):
        kinds = [kinds] * b
    kinds = [canonical_kind(k) for k in kinds]
    if len(kinds) != b:
        raise ValueError(f"kinds has {len(kinds)} entries for a batch of {b} images")
    fg = _prepare_foreground(foreground, images)
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.to(work) / 255.0 if images.dtype == torch.uint8 else images.to(work)
    if images.dtype == torch.uint8:
        def quantise(t):  # compare what will be stored: whole grey levels
            return (t * 255.0).round() / 255.0
    elif images.dtype in (torch.float32, torch.float64):
        def quantise(t):
            return t
    else:
        def quantise(t):  # float16 / bfloat16: round to the storage type first
            return t.to(images.dtype).to(work)
    d = _Draw(gen, images.device)
    out = x.clone()
    masks = torch.zeros(b, h, w, dtype=torch.bool, device=images.device)
    regions = torch.zeros_like(masks)
    ones = torch.ones(b, device=images.device)
    for kind in list_das_kinds():  # one group per type, in a fixed order, so the draw sequence is reproducible
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if not idx:
            continue
        sel = torch.tensor(idx, device=images.device)
        o, m, r = _run_kind(kind, x[sel], fg[sel], d, cfg, float(strength) * ones[sel], quantise, ones[sel])
        out[sel], masks[sel], regions[sel] = o, m, r
    if images.dtype == torch.uint8:
        stored = (out * 255.0).round().clamp(0, 255).to(torch.uint8)
    else:
        stored = out.to(images.dtype)
    # Outside the mask the input itself is returned: bit-identical by construction.
    result = torch.where(masks[:, None], stored, images)
    if with_regions:
        return result, masks[:, None].float(), regions[:, None]
    return result, masks[:, None].float()


def _single_to_batch(image) -> tuple[torch.Tensor, dict]:
    """One image in any accepted form -> ``1 x C x H x W`` tensor and how to convert back."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"numpy image has dtype {image.dtype}; use uint8 or float in [0, 1]")
        if image.ndim not in (2, 3):
            raise ValueError(f"numpy image must be H x W or H x W x C, got shape {image.shape}")
        arr = image[..., None] if image.ndim == 2 else image
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
        return t, {"numpy": True, "ndim": image.ndim}
    if isinstance(image, torch.Tensor):
        if image.ndim == 2:
            return image[None, None], {"numpy": False, "ndim": 2}
        if image.ndim == 3:
            return image[None], {"numpy": False, "ndim": 3}
        raise ValueError(f"tensor image must be C x H x W (or H x W), got shape {tuple(image.shape)}; "
                         "use synthesize_batch for B x C x H x W")
    raise TypeError(f"image must be a numpy array or torch tensor, got {type(image).__name__}")


def synthesize(
    image: torch.Tensor | np.ndarray,
    kind: str = "combined",
    generator: torch.Generator | int | np.random.Generator | None = None,
    config: DASConfig | None = None,
    foreground: torch.Tensor | np.ndarray | None = None,
    strength: float = 1.0,
) -> tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]:
    """Synthesise one anomaly of type ``kind`` on one image (paper §III-B).

    Args:
        image: numpy ``H x W`` / ``H x W x C`` (uint8, or float in [0, 1]) or a torch
            ``C x H x W`` / ``H x W`` tensor (float in [0, 1] or uint8). Any size.
        kind: ``misplaced``, ``blurry`` (alias ``fuzzy``), ``crack``, ``noise`` or ``combined``.
        generator: int seed, ``torch.Generator``, numpy ``Generator`` or None.
        config: :class:`DASConfig`; the default when None.
        foreground: ``H x W`` bool mask of allowed pixels (see :func:`foreground_mask`);
            None means anywhere.
        strength: multiplies blur sigma, noise amplitude and crack contrast.

    Returns:
        ``(abnormal, mask)``: ``abnormal`` in the input's type, layout and dtype; ``mask``
        ``H x W`` bool (numpy for numpy input), True exactly where pixels changed.
    """
    batch, how = _single_to_batch(image)
    fg = None
    if foreground is not None:
        fg = torch.as_tensor(np.asarray(foreground) if isinstance(foreground, np.ndarray) else foreground)
        fg = fg.to(batch.device).reshape(1, 1, *fg.shape[-2:])
    out, mask = synthesize_batch(batch, generator, config, fg, [kind], strength)
    if how["numpy"]:
        arr = out[0].permute(1, 2, 0).numpy()
        return (arr[..., 0] if how["ndim"] == 2 else arr), mask[0, 0].numpy() > 0.5
    return (out[0] if how["ndim"] == 3 else out[0, 0]), mask[0, 0] > 0.5
