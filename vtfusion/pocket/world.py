"""The pocket world: a generator of captioned industrial images for pre-training a small CLIP.

Every image is 240 x 240 RGB (the paper backbone's input, so the pocket CLIP has the same
15 x 15 patch grid), drawn in batches with torch from one ``torch.Generator``: the same
seed and batch index give the same images on the same machine.

**Families** (:data:`FAMILIES`), each varied in colour, lighting, pose and scale:

* surfaces (the whole image is the part): knit fabric, denim twill, leather, wood
  grain, brushed metal, ceramic tiles, plaster, wire mesh, plastic sheet;
* objects on a mat: gears, bolts, cans seen from above, tablets, cables, circuit
  boards, metal brackets.

**Defects** (:data:`DEFECTS`), each with a renderer of its own: scratches, cracks, burn
marks, smudges, dust, discolouration, bubbles, dents, tears, holes and missing pieces;
0 to 3 per image, about half of the images defect-free. Each returns the exact mask of
the pixels it changed.

**Disjoint from what it is judged on.** No family is a toy-dataset category (weave,
granite, washer, chip) and nothing here imports the toy generator
(:mod:`vtfusion.data.toy`) or DAS (:mod:`vtfusion.das`); ``tests/test_pocket.py``
enforces both. The world is to the pocket CLIP what web photographs are to CLIP: it has
seen damaged things, never the benchmark.

Captions come from :mod:`vtfusion.pocket.captions`; :func:`sample_batch` returns images,
masks and captions together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from vtfusion.pocket.captions import caption

SIZE = 240

# --------------------------------------------------------------------------- colours

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.72, 0.14, 0.12), "orange": (0.88, 0.45, 0.12), "yellow": (0.90, 0.78, 0.20),
    "green": (0.20, 0.55, 0.25), "olive": (0.45, 0.48, 0.20), "teal": (0.12, 0.50, 0.50),
    "blue": (0.18, 0.35, 0.75), "navy": (0.10, 0.14, 0.35), "purple": (0.42, 0.22, 0.55),
    "pink": (0.90, 0.55, 0.62), "brown": (0.42, 0.26, 0.14), "tan": (0.72, 0.58, 0.40),
    "beige": (0.86, 0.80, 0.66), "black": (0.10, 0.10, 0.11), "grey": (0.50, 0.50, 0.52),
    "silver": (0.74, 0.75, 0.78), "white": (0.92, 0.92, 0.90), "gold": (0.80, 0.64, 0.28),
    "copper": (0.72, 0.42, 0.24), "maroon": (0.45, 0.10, 0.14),
}


# --------------------------------------------------------------------------- randomness


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=gen)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * _rand(gen, n)


def _randint(gen: torch.Generator, lo: int, hi: int, n: int = 1) -> torch.Tensor:
    """``n`` integers in ``[lo, hi]``."""
    return torch.randint(lo, hi + 1, (n,), generator=gen)


def _pick(gen: torch.Generator, options, n: int) -> list:
    idx = torch.randint(len(options), (n,), generator=gen).tolist()
    return [options[i] for i in idx]


def _col(v: torch.Tensor) -> torch.Tensor:
    """Per-image scalars ``n`` -> ``n x 1 x 1 x 1``."""
    return v.view(-1, 1, 1, 1)


# --------------------------------------------------------------------------- primitives


def coords(n: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1]: ``yy, xx``, each ``n x 1 x size x size``."""
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return yy.expand(n, 1, size, size), xx.expand(n, 1, size, size)


def rotate(yy: torch.Tensor, xx: torch.Tensor, angle: torch.Tensor, cy: torch.Tensor | float = 0.0,
           cx: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates in a frame rotated by ``angle`` (radians, per image) around ``(cy, cx)``."""
    c, s = _col(torch.cos(angle)), _col(torch.sin(angle))
    cy = _col(cy) if torch.is_tensor(cy) else cy
    cx = _col(cx) if torch.is_tensor(cx) else cx
    dy, dx = yy - cy, xx - cx
    return c * dy - s * dx, s * dy + c * dx


def noise(gen: torch.Generator, n: int, cells: tuple[int, int] | int, size: int = SIZE,
          octaves: int = 1, channels: int = 1) -> torch.Tensor:
    """Smooth value noise in about [0, 1]: ``n x channels x size x size``.

    Random ``cells`` grids upsampled bicubically; ``octaves > 1`` adds finer grids at half
    the amplitude each (fractal noise). ``cells`` may be ``(rows, columns)`` for
    anisotropic noise.
    """
    ch, cw = (cells, cells) if isinstance(cells, int) else cells
    out = torch.zeros(n, channels, size, size)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        grid = _rand(gen, n, channels, max(2, ch), max(2, cw))
        out += amp * F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)
        total += amp
        amp, ch, cw = amp * 0.5, ch * 2, cw * 2
    return (out / total).clamp(0.0, 1.0)


def sample_texture(texture: torch.Tensor, yy: torch.Tensor, xx: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``n x c x h x w`` textures at coordinates in [-1, 1] (wrapping), ``n x c x H x W``."""
    gy = torch.remainder(yy + 1, 2) - 1
    gx = torch.remainder(xx + 1, 2) - 1
    grid = torch.stack([gx[:, 0], gy[:, 0]], dim=-1)
    return F.grid_sample(texture, grid, mode=mode, padding_mode="border", align_corners=False)


def smoothstep(e0: float | torch.Tensor, e1: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3 - 2 * t)


def colours(gen: torch.Generator, names: list[str], jitter: float = 0.06) -> torch.Tensor:
    """RGB ``n x 3 x 1 x 1`` of colour words, each jittered a little."""
    base = torch.tensor([COLOURS[c] for c in names], dtype=torch.float32)
    base = base * (1 + jitter * (2 * _rand(gen, len(names), 1) - 1)) + jitter * 0.5 * (2 * _rand(gen, len(names), 3) - 1)
    return base.clamp(0.0, 1.0).view(-1, 3, 1, 1)


def lighting(gen: torch.Generator, n: int, yy: torch.Tensor, xx: torch.Tensor, strength: float = 0.25
             ) -> torch.Tensor:
    """A soft directional light: ``n x 1 x H x W`` gain around 1."""
    ang = _uniform(gen, n, 0, 2 * math.pi)
    amp = _uniform(gen, n, 0.0, strength)
    gain = _uniform(gen, n, 0.85, 1.15)
    return _col(gain) * (1 + _col(amp) * (_col(torch.cos(ang)) * xx + _col(torch.sin(ang)) * yy) * 0.5)


# --------------------------------------------------------------------------- families


@dataclass
class Drawn:
    """What a family renderer returns for ``n`` images."""

    images: torch.Tensor                 # n x 3 x H x W in [0, 1]
    foreground: torch.Tensor             # n x 1 x H x W in {0, 1}: where defects may go
    background: torch.Tensor             # n x 3 x H x W: what shows through a hole or a missing piece
    colour: list[str]
    material: list[str]
    noun: list[str]


@dataclass(frozen=True)
class Family:
    """One object or surface family of the pocket world."""

    name: str
    kind: str                              # "surface" or "object"
    nouns: tuple[str, ...]
    materials: tuple[str, ...]
    colours: tuple[str, ...]
    render: Callable[[torch.Generator, int], Drawn] = field(repr=False, compare=False)


def _mat(gen: torch.Generator, n: int, light: bool | None = None) -> tuple[torch.Tensor, list[str]]:
    """A plain mat or table under an object, dark or light, with a little texture."""
    names = _pick(gen, ("black", "grey", "navy", "beige", "white", "brown", "green"), n)
    if light is not None:
        names = ["white" if light else "black"] * n
    base = colours(gen, names, 0.1) * 0.85
    tex = 0.92 + 0.16 * noise(gen, n, 24, octaves=2)
    return (base * tex).clamp(0, 1), names


def _surface(images: torch.Tensor, colour: list[str], material: list[str], noun: list[str], under: str = "black"
             ) -> Drawn:
    n = images.shape[0]
    under_rgb = torch.tensor(COLOURS[under]).view(1, 3, 1, 1).expand(n, 3, *images.shape[-2:]) * 0.6
    return Drawn(images.clamp(0, 1), torch.ones(n, 1, *images.shape[-2:]), under_rgb.clone(), colour, material, noun)


def _knit(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    v, u = rotate(yy, xx, _uniform(gen, n, -0.2, 0.2))
    width = _col(_uniform(gen, n, 0.06, 0.12))
    u, v = u / width, v / (width * 0.75)
    fu = torch.remainder(u, 1.0) - 0.5
    phase = v + 1.3 * fu.abs()
    loops = 0.5 + 0.5 * torch.cos(2 * math.pi * phase)
    seams = 1 - 0.6 * torch.exp(-((fu.abs() - 0.5) / 0.08) ** 2)
    fibre = 0.85 + 0.3 * noise(gen, n, 80)
    names = _pick(gen, ("red", "navy", "grey", "beige", "green", "maroon", "white", "purple", "teal"), n)
    img = colours(gen, names) * (0.45 + 0.55 * loops) * seams * fibre * lighting(gen, n, yy, xx)
    return _surface(img, names, ["wool"] * n, _pick(gen, ("knit fabric", "knitted textile", "jersey fabric"), n))


def _denim(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    v, u = rotate(yy, xx, _uniform(gen, n, -0.25, 0.25))
    period = _col(_uniform(gen, n, 0.025, 0.05))
    twill = 0.5 + 0.5 * torch.sin(2 * math.pi * (u + 0.45 * v) / period)
    threads = noise(gen, n, (6, 160), octaves=2)
    names = _pick(gen, ("navy", "blue", "black", "grey", "olive", "tan"), n)
    base = colours(gen, names)
    img = base * (0.6 + 0.4 * twill) * (0.75 + 0.5 * threads) + 0.08 * (1 - twill) * threads
    img = img * lighting(gen, n, yy, xx)
    return _surface(img, names, ["cotton"] * n, _pick(gen, ("denim", "twill fabric", "canvas fabric"), n))


def _relief(height: torch.Tensor, gen: torch.Generator, amount: float) -> torch.Tensor:
    """Shading of a height field under a random light direction: gain around 1."""
    ang = _uniform(gen, height.shape[0], 0, 2 * math.pi)
    gy = height[..., 2:, 1:-1] - height[..., :-2, 1:-1]
    gx = height[..., 1:-1, 2:] - height[..., 1:-1, :-2]
    shade = _col(torch.cos(ang)) * gx + _col(torch.sin(ang)) * gy
    return 1 + amount * F.pad(shade, (1, 1, 1, 1), mode="replicate")


def _leather(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    cells = int(_randint(gen, 28, 48))
    pebbles = noise(gen, n, cells, octaves=2)
    height = smoothstep(0.35, 0.75, pebbles)
    names = _pick(gen, ("brown", "black", "tan", "maroon", "beige", "navy"), n)
    img = colours(gen, names) * _relief(height, gen, 6.0) * (0.8 + 0.3 * height) * lighting(gen, n, yy, xx)
    return _surface(img, names, ["leather"] * n, _pick(gen, ("leather", "leather hide", "grained leather"), n))


def _wood(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    v, u = rotate(yy, xx, _uniform(gen, n, -0.4, 0.4))
    warp = noise(gen, n, (3, 6), octaves=3)
    freq = _col(_uniform(gen, n, 6.0, 14.0))
    rings = torch.remainder((v + 0.35 * warp) * freq, 1.0)
    grain = smoothstep(0.0, 0.7, rings) * (1 - smoothstep(0.85, 1.0, rings))
    fibres = noise(gen, n, (4, 120))
    names = _pick(gen, ("brown", "tan", "beige", "orange", "maroon"), n)
    base = colours(gen, names)
    img = base * (0.7 + 0.35 * grain) * (0.88 + 0.24 * fibres) * lighting(gen, n, yy, xx)
    return _surface(img, names, ["wood"] * n, _pick(gen, ("wooden board", "wood plank", "timber panel"), n))


def _brushed(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    v, u = rotate(yy, xx, _uniform(gen, n, -math.pi, math.pi))
    streak_tex = noise(gen, n, (96, 3), size=128, octaves=2)
    streaks = sample_texture(streak_tex, v, u * 0.5)
    names = _pick(gen, ("silver", "grey", "gold", "copper", "black"), n)
    sheen = 0.85 + 0.3 * torch.exp(-((u - _col(_uniform(gen, n, -0.6, 0.6))) / 0.5) ** 2)
    img = colours(gen, names) * (0.78 + 0.35 * streaks) * sheen * lighting(gen, n, yy, xx, 0.15)
    return _surface(img, names, ["brushed metal"] * n,
                    _pick(gen, ("metal plate", "steel sheet", "aluminium panel"), n))


def _tiles(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    v, u = rotate(yy, xx, _uniform(gen, n, -0.1, 0.1))
    size = _col(_uniform(gen, n, 0.3, 0.6))
    tu, tv = u / size, v / size
    fu, fv = torch.remainder(tu, 1.0), torch.remainder(tv, 1.0)
    grout_w = _col(_uniform(gen, n, 0.03, 0.06))
    grout = 1 - (smoothstep(0, grout_w, fu) * smoothstep(0, grout_w, 1 - fu)
                 * smoothstep(0, grout_w, fv) * smoothstep(0, grout_w, 1 - fv))
    per_tile = sample_texture(_rand(gen, n, 1, 16, 16), torch.floor(tv) / 8, torch.floor(tu) / 8, mode="nearest")
    names = _pick(gen, ("white", "beige", "blue", "teal", "grey", "green", "pink", "black"), n)
    base = colours(gen, names) * (0.92 + 0.12 * per_tile)
    gloss = 1 + 0.12 * (1 - fu) * (1 - fv)
    grout_rgb = torch.full_like(base, 0.55) * _col(_uniform(gen, n, 0.6, 1.1))
    img = (base * gloss * (1 - grout) + grout_rgb * grout) * lighting(gen, n, yy, xx, 0.15)
    return _surface(img, names, ["ceramic"] * n, _pick(gen, ("ceramic tiles", "tiled wall", "tile floor"), n))


def _plaster(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    mottle = noise(gen, n, 10, octaves=4)
    grit = noise(gen, n, 100)
    names = _pick(gen, ("white", "beige", "grey", "pink", "yellow", "teal"), n)
    img = colours(gen, names) * (0.85 + 0.2 * mottle) * (0.95 + 0.08 * grit) * lighting(gen, n, yy, xx)
    return _surface(img, names, _pick(gen, ("plaster", "paint"), n),
                    _pick(gen, ("plaster wall", "painted wall", "stucco surface"), n))


def _mesh(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    v, u = rotate(yy, xx, _uniform(gen, n, -0.5, 0.5))
    pitch = _col(_uniform(gen, n, 0.12, 0.25))
    wire = _col(_uniform(gen, n, 0.05, 0.12))
    du = (torch.remainder(u / pitch, 1.0) - 0.5).abs()
    dv = (torch.remainder(v / pitch, 1.0) - 0.5).abs()
    wires = torch.maximum(1 - smoothstep(wire * 0.5, wire, 0.5 - du), 1 - smoothstep(wire * 0.5, wire, 0.5 - dv))
    round_shade = 0.7 + 0.3 * torch.cos(math.pi * torch.minimum(0.5 - du, 0.5 - dv) / wire).clamp(0, 1)
    names = _pick(gen, ("silver", "grey", "gold", "black", "copper"), n)
    back, _ = _mat(gen, n)
    metal = colours(gen, names) * round_shade
    img = (metal * wires + back * 0.6 * (1 - wires)) * lighting(gen, n, yy, xx)
    drawn = _surface(img, names, ["steel wire"] * n, _pick(gen, ("wire mesh", "metal grid", "wire screen"), n))
    drawn.background = back * 0.6
    return drawn


def _plastic(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    names = _pick(gen, ("red", "blue", "yellow", "green", "white", "black", "orange", "purple", "grey"), n)
    cy, cx = _col(_uniform(gen, n, -0.6, 0.6)), _col(_uniform(gen, n, -0.6, 0.6))
    spec = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.3) * _col(_uniform(gen, n, 0.05, 0.25))
    grain = noise(gen, n, 60)
    img = colours(gen, names) * (0.92 + 0.1 * grain) * lighting(gen, n, yy, xx) + spec
    return _surface(img, names, ["plastic"] * n, _pick(gen, ("plastic sheet", "plastic cover", "plastic panel"), n))


def _place(gen: torch.Generator, n: int, scale: tuple[float, float]) -> tuple[torch.Tensor, ...]:
    """A pose for each object: centre ``(cy, cx)``, rotation, scale."""
    return (_uniform(gen, n, -0.12, 0.12), _uniform(gen, n, -0.12, 0.12), _uniform(gen, n, -math.pi, math.pi),
            _uniform(gen, n, *scale))


def _compose(obj: torch.Tensor, alpha: torch.Tensor, back: torch.Tensor, shadow_from: torch.Tensor | None = None
             ) -> torch.Tensor:
    """Object over a mat, with a soft drop shadow."""
    if shadow_from is None:
        shadow_from = alpha
    shadow = F.avg_pool2d(F.pad(shadow_from, (6, 0, 6, 0), mode="replicate")[..., :-6, :-6], 9, 1, 4)
    return obj * alpha + back * (1 - 0.45 * shadow) * (1 - alpha)


def _metal_colour(gen: torch.Generator, n: int, options=("silver", "gold", "copper", "grey", "black")) -> list[str]:
    return _pick(gen, options, n)


def _gear(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    cy, cx, ang, scale = _place(gen, n, (0.45, 0.75))
    y, x = rotate(yy, xx, ang, cy, cx)
    r, theta = torch.sqrt(y ** 2 + x ** 2), torch.atan2(y, x)
    teeth = _col(_randint(gen, 8, 20, n).float())
    depth = _col(_uniform(gen, n, 0.06, 0.12))
    tooth = smoothstep(-0.3, 0.3, torch.cos(teeth * theta))
    edge = _col(scale) * (1 - depth) + _col(scale) * depth * tooth
    alpha = 1 - smoothstep(edge - 0.012, edge + 0.012, r)
    hub = 1 - smoothstep(0.18 * _col(scale), 0.2 * _col(scale), r)
    bore = 1 - smoothstep(0.07 * _col(scale), 0.085 * _col(scale), r)
    names = _metal_colour(gen, n, ("silver", "gold", "copper", "black", "white", "red", "blue"))
    base = colours(gen, names)
    shade = (0.75 + 0.35 * (1 - r / _col(scale)).clamp(0, 1)) * (1 - 0.25 * hub) * lighting(gen, n, yy, xx, 0.4)
    back, _ = _mat(gen, n)
    obj = base * shade
    obj = obj * (1 - bore) + back * bore
    alpha = alpha * (1 - bore)
    materials = ["plastic" if c in ("white", "red", "blue") else "metal" for c in names]
    return Drawn(_compose(obj, alpha, back).clamp(0, 1), (alpha > 0.5).float(), back, names, materials,
                 _pick(gen, ("gear", "cog", "gear wheel"), n))


def _bolt(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    cy, cx, ang, scale = _place(gen, n, (0.7, 1.0))
    v, u = rotate(yy, xx, ang, cy, cx)
    length, radius = 0.75 * _col(scale), _col(_uniform(gen, n, 0.1, 0.16)) * _col(scale)
    shaft = (1 - smoothstep(radius - 0.01, radius + 0.01, v.abs())) * (1 - smoothstep(length * 0.5, length * 0.5 + 0.01, u)) \
        * smoothstep(-length * 0.5 - 0.01, -length * 0.5, u)
    head_w, head_l = radius * 1.9, radius * 1.2
    head_u = u + length * 0.5 + head_l * 0.5
    head = (1 - smoothstep(head_w - 0.01, head_w + 0.01, v.abs())) * (1 - smoothstep(head_l * 0.5 - 0.01, head_l * 0.5, head_u.abs()))
    pitch = _col(_uniform(gen, n, 0.025, 0.04))
    thread = 0.75 + 0.25 * torch.sin(2 * math.pi * (u + 0.3 * v) / pitch) * (u > -length * 0.2).float()
    cyl = 1 - 0.55 * (v / (radius + 1e-6)).clamp(-1, 1) ** 2
    cyl_head = 1 - 0.45 * (v / (head_w + 1e-6)).clamp(-1, 1) ** 2
    names = _metal_colour(gen, n, ("silver", "gold", "grey", "black", "copper"))
    base = colours(gen, names)
    alpha = torch.maximum(shaft, head)
    shade = torch.where(head > 0.5, cyl_head, cyl * thread) * lighting(gen, n, yy, xx, 0.3)
    back, _ = _mat(gen, n)
    materials = ["brass" if c == "gold" else "steel" for c in names]
    return Drawn(_compose(base * shade, alpha, back).clamp(0, 1), (alpha > 0.5).float(), back, names, materials,
                 _pick(gen, ("bolt", "screw", "hex bolt"), n))


def _can(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    cy, cx, ang, scale = _place(gen, n, (0.6, 0.85))
    y, x = rotate(yy, xx, ang, cy, cx)
    r = torch.sqrt(y ** 2 + x ** 2) / _col(scale)
    theta = torch.atan2(y, x)
    alpha = 1 - smoothstep(0.985, 1.0, r)
    rim = smoothstep(0.86, 0.9, r) * (1 - smoothstep(0.95, 0.985, r))
    groove = torch.exp(-((r - 0.82) / 0.015) ** 2)
    brushed = noise(gen, n, (2, 64))
    radial = sample_texture(brushed, theta / math.pi, r * 0.1)
    tab_y, tab_x = y / _col(scale), x / _col(scale) - 0.2
    tab = (1 - smoothstep(0.16, 0.18, tab_y.abs())) * (1 - smoothstep(0.3, 0.32, tab_x.abs()))
    rivet = torch.exp(-((tab_y ** 2 + (tab_x + 0.2) ** 2) / 0.003))
    names = _metal_colour(gen, n, ("silver", "gold", "grey", "red", "blue", "black"))
    base = colours(gen, names)
    lid = colours(gen, ["silver"] * n) * (0.85 + 0.2 * radial)
    face = torch.where(r < 0.86, lid, base)
    shade = (1 + 0.25 * rim - 0.35 * groove) * (1 + 0.15 * tab - 0.2 * rivet) * lighting(gen, n, yy, xx, 0.35)
    back, _ = _mat(gen, n)
    return Drawn(_compose(face * shade, alpha, back).clamp(0, 1), (alpha > 0.5).float(), back, names,
                 ["aluminium"] * n, _pick(gen, ("can lid", "tin can", "drink can top"), n))


def _tablets(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    back, _ = _mat(gen, n)
    alpha_all = torch.zeros(n, 1, SIZE, SIZE)
    obj = torch.zeros(n, 3, SIZE, SIZE)
    names = _pick(gen, ("white", "pink", "yellow", "blue", "orange", "beige"), n)
    base = colours(gen, names, 0.04)
    count = int(_randint(gen, 1, 3))
    offsets = (torch.tensor([[0.0, 0.0]]) if count == 1 else
               torch.tensor([[-0.3, -0.3], [0.3, 0.3], [0.3, -0.3]])[:count])
    oval = _uniform(gen, n, 1.0, 1.7)
    for oy, ox in offsets.tolist():
        cy, cx, ang, scale = _place(gen, n, (0.28, 0.42) if count > 1 else (0.45, 0.65))
        y, x = rotate(yy, xx, ang, cy + oy, cx + ox)
        y, x = y / _col(scale), x / (_col(scale) * _col(oval))
        r2 = y ** 2 + x ** 2
        alpha = 1 - smoothstep(0.96, 1.0, r2)
        dome = torch.sqrt((1 - r2).clamp(0, 1))
        score = 1 - 0.25 * torch.exp(-(y / 0.03) ** 2) * (x.abs() < 0.8).float()
        shade = (0.65 + 0.4 * dome) * score
        obj = torch.where(alpha > alpha_all, base * shade, obj)
        alpha_all = torch.maximum(alpha_all, alpha)
    obj = obj * lighting(gen, n, yy, xx, 0.2)
    return Drawn(_compose(obj, alpha_all, back).clamp(0, 1), (alpha_all > 0.5).float(), back, names,
                 ["pharmaceutical"] * n, _pick(gen, ("tablet", "pill", "medicine tablet"), n))


def _cable(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    back, _ = _mat(gen, n)
    v, u = rotate(yy, xx, _uniform(gen, n, -math.pi, math.pi))
    wires = int(_randint(gen, 2, 5))
    width = _col(_uniform(gen, n, 0.08, 0.14))
    amp, freq = _col(_uniform(gen, n, 0.0, 0.15)), _col(_uniform(gen, n, 1.0, 3.0))
    wave = amp * torch.sin(freq * math.pi * u)
    obj = torch.zeros(n, 3, SIZE, SIZE)
    alpha_all = torch.zeros(n, 1, SIZE, SIZE)
    palette = ("red", "blue", "yellow", "green", "black", "white", "orange", "brown", "grey")
    first = []
    for i in range(wires):
        names = _pick(gen, palette, n)
        first.append(names)
        centre = (i - (wires - 1) / 2) * width * 2.1
        d = (v - wave - centre) / width
        alpha = 1 - smoothstep(0.9, 1.0, d.abs())
        shade = 1 - 0.55 * d.clamp(-1, 1) ** 2 + 0.25 * torch.exp(-((d + 0.35) / 0.2) ** 2)
        obj = obj + colours(gen, names) * shade * alpha * (1 - alpha_all)
        alpha_all = torch.maximum(alpha_all, alpha)
    obj = obj * lighting(gen, n, yy, xx, 0.2)
    return Drawn(_compose(obj, alpha_all, back).clamp(0, 1), (alpha_all > 0.5).float(), back, first[0],
                 _pick(gen, ("rubber", "insulated copper"), n), _pick(gen, ("cable", "electric cable", "wire bundle"), n))


def _board(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    names = _pick(gen, ("green", "blue", "black", "red", "teal"), n)
    base = colours(gen, names) * (0.9 + 0.12 * noise(gen, n, 40))
    img = base.clone()
    cell = 0.125
    grid_y = torch.floor((yy + 1) / cell)
    grid_x = torch.floor((xx + 1) / cell)
    lane = sample_texture(_rand(gen, n, 2, 16, 16), (grid_y + 0.5) * cell - 1, (grid_x + 0.5) * cell - 1, "nearest")
    fy = torch.remainder((yy + 1) / cell, 1.0) - 0.5
    fx = torch.remainder((xx + 1) / cell, 1.0) - 0.5
    trace_h = (lane[:, :1] > 0.6).float() * (fy.abs() < 0.08).float()
    trace_v = (lane[:, 1:] > 0.7).float() * (fx.abs() < 0.08).float()
    traces = torch.maximum(trace_h, trace_v)
    img = img * (1 - traces) + (base * 1.35 + 0.05) * traces
    pads = ((lane[:, :1] < 0.12).float() * (fy.abs() < 0.3).float() * (fx.abs() < 0.22).float())
    metal = colours(gen, _pick(gen, ("gold", "silver"), n))
    img = img * (1 - pads) + metal * pads
    comp = ((lane[:, 1:] < 0.1) & (lane[:, :1] > 0.3)).float() * (fy.abs() < 0.22).float() * (fx.abs() < 0.42).float()
    ends = comp * (fx.abs() > 0.3).float()
    img = img * (1 - comp) + (colours(gen, ["black"] * n) + 0.05) * (comp - ends) + metal * ends
    via_r = torch.sqrt(fy ** 2 + fx ** 2)
    vias = ((lane[:, :1] > 0.3) & (lane[:, :1] < 0.36)).float() * (via_r < 0.14).float()
    img = img * (1 - vias) + (metal * (via_r > 0.07).float()) * vias
    img = img * lighting(gen, n, yy, xx, 0.2)
    return _surface(img, names, ["fibreglass"] * n, _pick(gen, ("circuit board", "printed board", "electronics board"), n))


def _bracket(gen: torch.Generator, n: int) -> Drawn:
    yy, xx = coords(n)
    cy, cx, ang, scale = _place(gen, n, (0.55, 0.8))
    v, u = rotate(yy, xx, ang, cy, cx)
    hw, hh = _col(scale), _col(scale) * _col(_uniform(gen, n, 0.35, 0.6))
    corner = 0.08
    qx, qy = (u.abs() - hw + corner).clamp_min(0), (v.abs() - hh + corner).clamp_min(0)
    dist = torch.sqrt(qx ** 2 + qy ** 2) - corner
    alpha = 1 - smoothstep(-0.01, 0.01, dist)
    hole_x = hw * 0.65
    holes = torch.zeros_like(alpha)
    hole_r = hh * _col(_uniform(gen, n, 0.25, 0.45))
    for sx in (-1.0, 1.0):
        dh = torch.sqrt((u - sx * hole_x) ** 2 + v ** 2)
        holes = torch.maximum(holes, 1 - smoothstep(hole_r - 0.01, hole_r + 0.01, dh))
    alpha = alpha * (1 - holes)
    streaks = sample_texture(noise(gen, n, (64, 3), size=128), v, u * 0.5)
    names = _metal_colour(gen, n, ("silver", "grey", "black", "gold"))
    back, _ = _mat(gen, n)
    obj = colours(gen, names) * (0.8 + 0.3 * streaks) * lighting(gen, n, yy, xx, 0.35)
    return Drawn(_compose(obj, alpha, back).clamp(0, 1), (alpha > 0.5).float(), back, names,
                 _pick(gen, ("steel", "aluminium"), n), _pick(gen, ("metal bracket", "mounting plate", "bracket"), n))


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("knit_fabric", "surface", ("knit fabric", "knitted textile", "jersey fabric"), ("wool",),
           ("red", "navy", "grey", "beige", "green", "maroon", "white", "purple", "teal"), _knit),
    Family("denim_twill", "surface", ("denim", "twill fabric", "canvas fabric"), ("cotton",),
           ("navy", "blue", "black", "grey", "olive", "tan"), _denim),
    Family("leather", "surface", ("leather", "leather hide", "grained leather"), ("leather",),
           ("brown", "black", "tan", "maroon", "beige", "navy"), _leather),
    Family("wood_grain", "surface", ("wooden board", "wood plank", "timber panel"), ("wood",),
           ("brown", "tan", "beige", "orange", "maroon"), _wood),
    Family("brushed_metal", "surface", ("metal plate", "steel sheet", "aluminium panel"), ("brushed metal",),
           ("silver", "grey", "gold", "copper", "black"), _brushed),
    Family("ceramic_tiles", "surface", ("ceramic tiles", "tiled wall", "tile floor"), ("ceramic",),
           ("white", "beige", "blue", "teal", "grey", "green", "pink", "black"), _tiles),
    Family("plaster", "surface", ("plaster wall", "painted wall", "stucco surface"), ("plaster", "paint"),
           ("white", "beige", "grey", "pink", "yellow", "teal"), _plaster),
    Family("wire_mesh", "surface", ("wire mesh", "metal grid", "wire screen"), ("steel wire",),
           ("silver", "grey", "gold", "black", "copper"), _mesh),
    Family("plastic_sheet", "surface", ("plastic sheet", "plastic cover", "plastic panel"), ("plastic",),
           ("red", "blue", "yellow", "green", "white", "black", "orange", "purple", "grey"), _plastic),
    Family("circuit_board", "surface", ("circuit board", "printed board", "electronics board"), ("fibreglass",),
           ("green", "blue", "black", "red", "teal"), _board),
    Family("gear", "object", ("gear", "cog", "gear wheel"), ("metal", "plastic"),
           ("silver", "gold", "copper", "black", "white", "red", "blue"), _gear),
    Family("bolt", "object", ("bolt", "screw", "hex bolt"), ("steel", "brass"),
           ("silver", "gold", "grey", "black", "copper"), _bolt),
    Family("can_top", "object", ("can lid", "tin can", "drink can top"), ("aluminium",),
           ("silver", "gold", "grey", "red", "blue", "black"), _can),
    Family("tablet", "object", ("tablet", "pill", "medicine tablet"), ("pharmaceutical",),
           ("white", "pink", "yellow", "blue", "orange", "beige"), _tablets),
    Family("cable", "object", ("cable", "electric cable", "wire bundle"), ("rubber", "insulated copper"),
           ("red", "blue", "yellow", "green", "black", "white", "orange", "brown", "grey"), _cable),
    Family("bracket", "object", ("metal bracket", "mounting plate", "bracket"), ("steel", "aluminium"),
           ("silver", "grey", "black", "gold"), _bracket),
)}

#: Families never used for training: the pre-training's validation loss and zero-shot
#: accuracy curves are measured on them (transfer to unseen kinds of things).
HELD_OUT_FAMILIES: tuple[str, ...] = ("leather", "tablet", "cable")
TRAIN_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f not in HELD_OUT_FAMILIES)


# --------------------------------------------------------------------------- defects


def _sample_centres(gen: torch.Generator, region: torch.Tensor) -> torch.Tensor:
    """One random pixel of each image's ``region`` (``n x 1 x H x W``) in [-1, 1]: ``n x 2`` (y, x)."""
    n, _, h, w = region.shape
    small = F.adaptive_avg_pool2d(region, (48, 48)).flatten(1) + 1e-6
    idx = torch.multinomial(small, 1, generator=gen).squeeze(1)
    jitter = _rand(gen, n, 2)
    y = ((idx // 48).float() + jitter[:, 0]) / 48 * 2 - 1
    x = ((idx % 48).float() + jitter[:, 1]) / 48 * 2 - 1
    return torch.stack([y, x], dim=1)


def _blob(gen: torch.Generator, n: int, centre: torch.Tensor, radius: torch.Tensor, rough: float = 0.35
          ) -> torch.Tensor:
    """Irregular blob masks (soft edge), ``n x 1 x H x W`` in [0, 1]."""
    yy, xx = coords(n)
    dy, dx = yy - _col(centre[:, 0]), xx - _col(centre[:, 1])
    r = torch.sqrt(dy ** 2 + dx ** 2)
    theta = torch.atan2(dy, dx)
    wobble = torch.zeros_like(r)
    for harmonic in (2, 3, 5):
        phase = _col(_uniform(gen, n, 0, 2 * math.pi))
        wobble = wobble + _col(_uniform(gen, n, -rough, rough)) / harmonic * torch.cos(harmonic * theta + phase)
    edge = _col(radius) * (1 + wobble)
    return 1 - smoothstep(edge * 0.85, edge, r)


def _curve(gen: torch.Generator, n: int, centre: torch.Tensor, length: torch.Tensor, width_px: torch.Tensor,
           jagged: float = 0.0) -> torch.Tensor:
    """Soft masks of a curved stroke through ``centre``: ``n x 1 x H x W`` in [0, 1]."""
    yy, xx = coords(n)
    steps = 24
    ang = _uniform(gen, n, 0, 2 * math.pi)
    bend = _uniform(gen, n, -2.5, 2.5)
    t = torch.linspace(-0.5, 0.5, steps)
    heading = ang[:, None] + bend[:, None] * t[None]
    if jagged:
        heading = heading + jagged * (2 * _rand(gen, n, steps) - 1)
    seg = length[:, None] / steps
    py = torch.cumsum(seg * torch.sin(heading), 1)
    px = torch.cumsum(seg * torch.cos(heading), 1)
    py = py - py.mean(1, keepdim=True) + centre[:, :1]
    px = px - px.mean(1, keepdim=True) + centre[:, 1:]
    best = torch.full((n, 1, SIZE, SIZE), 1e9)
    for i in range(steps - 1):
        ay, ax, by, bx = (_col(v) for v in (py[:, i], px[:, i], py[:, i + 1], px[:, i + 1]))
        vy, vx = by - ay, bx - ax
        tt = (((yy - ay) * vy + (xx - ax) * vx) / (vy ** 2 + vx ** 2 + 1e-9)).clamp(0, 1)
        best = torch.minimum(best, (yy - ay - tt * vy) ** 2 + (xx - ax - tt * vx) ** 2)
    half = _col(width_px) / SIZE
    return 1 - smoothstep(half, half + 1.5 / SIZE, torch.sqrt(best))


def _d_scratch(gen, img, fg, back):
    n = img.shape[0]
    c = _sample_centres(gen, fg)
    m = _curve(gen, n, c, _uniform(gen, n, 0.25, 0.8), _uniform(gen, n, 0.4, 1.4)) * fg
    bright = (_rand(gen, n) < 0.6).float()
    target = _col(bright) * torch.ones_like(img) * 0.95 + _col(1 - bright) * img * 0.25
    amount = _col(_uniform(gen, n, 0.45, 0.8))
    return img + (target - img) * m * amount, m


def _d_crack(gen, img, fg, back):
    n = img.shape[0]
    c = _sample_centres(gen, fg)
    m = _curve(gen, n, c, _uniform(gen, n, 0.3, 0.8), _uniform(gen, n, 0.5, 1.5), jagged=1.2)
    if bool(_rand(gen, 1) < 0.5):
        m = torch.maximum(m, _curve(gen, n, c, _uniform(gen, n, 0.15, 0.35), _uniform(gen, n, 0.4, 1.0), jagged=1.2))
    m = m * fg
    return img * (1 - 0.8 * m), m


def _d_burn(gen, img, fg, back):
    n = img.shape[0]
    c = _sample_centres(gen, fg)
    radius = _uniform(gen, n, 0.05, 0.16)
    core = _blob(gen, n, c, radius * 0.55, 0.5)
    halo = _blob(gen, n, c, radius, 0.5)
    char = torch.tensor([0.08, 0.05, 0.03]).view(1, 3, 1, 1)
    scorch = torch.tensor([0.45, 0.28, 0.12]).view(1, 3, 1, 1)
    out = img * (1 - halo * 0.6) + scorch * halo * 0.6 * img.mean(1, keepdim=True).clamp(0.3, 1)
    out = out * (1 - core) + char * core
    return out, halo * fg


def _d_smudge(gen, img, fg, back):
    n = img.shape[0]
    c = _sample_centres(gen, fg)
    m = _blob(gen, n, c, _uniform(gen, n, 0.06, 0.2), 0.5)
    m = F.avg_pool2d(m, 7, 1, 3) * fg
    grime = torch.tensor([0.25, 0.23, 0.2]).view(1, 3, 1, 1)
    amount = _col(_uniform(gen, n, 0.35, 0.65))
    return img + (grime - img) * m * amount, m


def _d_dust(gen, img, fg, back):
    n = img.shape[0]
    c = _sample_centres(gen, fg)
    area = _blob(gen, n, c, _uniform(gen, n, 0.12, 0.3), 0.3)
    specks = (_rand(gen, n, 1, SIZE, SIZE) < _col(_uniform(gen, n, 0.01, 0.04))).float()
    specks = (F.max_pool2d(specks, 3, 1, 1) if bool(_rand(gen, 1) < 0.5) else specks) * area * fg
    light = (_rand(gen, n) < 0.5).float()
    target = _col(light) * 0.92 + _col(1 - light) * 0.12
    return img + (target - img) * specks * 0.85, specks


def _d_discolour(gen, img, fg, back):
    n = img.shape[0]
    c = _sample_centres(gen, fg)
    m = F.avg_pool2d(_blob(gen, n, c, _uniform(gen, n, 0.07, 0.22), 0.6), 5, 1, 2) * fg
    tint = colours(gen, _pick(gen, ("yellow", "brown", "orange", "green", "purple", "white"), n), 0.1)
    amount = _col(_uniform(gen, n, 0.35, 0.6))
    return img + (img * tint * 1.6 - img) * m * amount, m


def _d_bubble(gen, img, fg, back):
    n = img.shape[0]
    yy, xx = coords(n)
    out, mask = img, torch.zeros(n, 1, SIZE, SIZE)
    for _ in range(int(_randint(gen, 1, 4))):
        c = _sample_centres(gen, fg)
        r0 = _col(_uniform(gen, n, 0.02, 0.06))
        r = torch.sqrt((yy - _col(c[:, 0])) ** 2 + (xx - _col(c[:, 1])) ** 2) / r0
        disc = 1 - smoothstep(0.9, 1.0, r)
        ring = torch.exp(-((r - 0.8) / 0.15) ** 2) * disc
        spot = torch.exp(-(((yy - _col(c[:, 0]) + 0.35 * r0) ** 2 + (xx - _col(c[:, 1]) + 0.35 * r0) ** 2)
                           / (0.2 * r0) ** 2))
        out = out * (1 - 0.25 * disc) + (0.5 * ring + 0.6 * spot) * disc
        mask = torch.maximum(mask, disc)
    return out, mask * fg


def _d_dent(gen, img, fg, back):
    n = img.shape[0]
    yy, xx = coords(n)
    c = _sample_centres(gen, fg)
    r0 = _col(_uniform(gen, n, 0.05, 0.14))
    dy, dx = yy - _col(c[:, 0]), xx - _col(c[:, 1])
    bump = torch.exp(-(dy ** 2 + dx ** 2) / r0 ** 2)
    ang = _uniform(gen, n, 0, 2 * math.pi)
    shade = -2 * (dy * _col(torch.sin(ang)) + dx * _col(torch.cos(ang))) / r0 ** 2 * bump * r0
    m = (bump > 0.15).float() * fg
    return img * (1 + 0.9 * shade * m), m


def _d_tear(gen, img, fg, back):
    n = img.shape[0]
    c = _sample_centres(gen, fg)
    gap = _curve(gen, n, c, _uniform(gen, n, 0.2, 0.5), _uniform(gen, n, 1.2, 3.0), jagged=0.6)
    rim = (F.max_pool2d(gap, 5, 1, 2) - gap).clamp(0, 1)
    m = torch.maximum(gap, rim) * fg
    out = img * (1 - gap) + back * 0.4 * gap
    out = out + 0.25 * rim * fg
    return out, m


def _d_hole(gen, img, fg, back):
    n = img.shape[0]
    c = _sample_centres(gen, fg)
    hole = _blob(gen, n, c, _uniform(gen, n, 0.03, 0.09), 0.25)
    rim = (F.max_pool2d(hole, 5, 1, 2) - hole).clamp(0, 1)
    m = torch.maximum(hole, rim) * fg
    out = img * (1 - hole) + back * 0.5 * hole
    return out * (1 - 0.4 * rim * fg), m


def _d_missing(gen, img, fg, back):
    n = img.shape[0]
    edge = (F.max_pool2d(fg, 5, 1, 2) - fg).clamp(0, 1)  # just outside the part: where it could be missing
    has_edge = edge.flatten(1).sum(1) > 0
    region = torch.where(has_edge.view(-1, 1, 1, 1), edge, fg)
    c = _sample_centres(gen, region)
    chunk = (_blob(gen, n, c, _uniform(gen, n, 0.08, 0.2), 0.5) > 0.5).float() * fg
    return img * (1 - chunk) + back * chunk, chunk


DEFECTS: dict[str, Callable] = {
    "scratch": _d_scratch, "crack": _d_crack, "burn": _d_burn, "smudge": _d_smudge, "dust": _d_dust,
    "discolouration": _d_discolour, "bubble": _d_bubble, "dent": _d_dent, "tear": _d_tear, "hole": _d_hole,
    "missing_piece": _d_missing,
}


def apply_defect(kind: str, gen: torch.Generator, images: torch.Tensor, foreground: torch.Tensor,
                 background: torch.Tensor, min_change: float = 2.0 / 255.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one defect of ``kind`` on each image; returns the images and the exact masks.

    The mask is the set of pixels that the defect's region covers *and* whose value
    changed by at least ``min_change`` in some channel; every other pixel is the input's.
    """
    out, region = DEFECTS[kind](gen, images, foreground, background)
    out = out.clamp(0, 1)
    changed = (out - images).abs().amax(dim=1, keepdim=True) >= min_change
    mask = changed & (region > 0.05)
    return torch.where(mask, out, images), mask


# --------------------------------------------------------------------------- batches


@dataclass
class WorldBatch:
    """Images, exact defect masks and captions of one batch."""

    images: torch.Tensor        # B x 3 x 240 x 240 in [0, 1]
    masks: torch.Tensor         # B x 1 x 240 x 240 bool (union of the image's defects)
    captions: list[str]
    families: list[str]
    defects: list[list[str]]    # defect kinds per image (empty: defect-free)
    nouns: list[str]

    @property
    def damaged(self) -> torch.Tensor:
        """``B`` bool: whether each image carries at least one defect."""
        return torch.tensor([bool(d) for d in self.defects])


def batch_generator(seed: int, index: int) -> torch.Generator:
    """The generator of batch ``index`` of the stream ``seed`` (order-independent)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (2 ** 63 - 1))


def sample_batch(seed: int, index: int, batch_size: int = 64, families: tuple[str, ...] = TRAIN_FAMILIES,
                 defect_rate: float = 0.5, max_defects: int = 3, copies: int = 1,
                 zoom: float = 0.0) -> WorldBatch:
    """Batch ``index`` of the world stream ``seed``: deterministic, independent of other batches.

    Families are drawn uniformly from ``families``; each image is defect-free with
    probability ``1 - defect_rate``, else carries 1 to ``max_defects`` defects (weights
    6:3:1) of kinds drawn uniformly from :data:`DEFECTS`.

    ``copies > 1``: the batch holds ``batch_size / copies`` scenes, each ``copies`` times:
    the first copy defect-free, every other one with its own 1 to ``max_defects`` defects
    (``defect_rate`` is then ignored), and captioned with the same template and attribute
    words. Within such a group a caption can only be matched
    to its image by the state, the kinds and the places of the defects, which is what
    makes a contrastive model learn them (pre-training uses it).

    ``zoom``: this share of the scenes is shown as a close-up, a crop of 60 to 120 pixels
    around one of its defects (or a random one) resized to 240, the same crop for every
    copy of a scene. Close-ups put many defect patches into one image, so a CLIP whose
    image embedding averages its patch tokens learns what a damaged *patch* looks like.
    """
    gen = batch_generator(seed, index)
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown pocket-world families {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    if copies < 1 or batch_size % copies:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of copies ({copies})")
    scenes = batch_size // copies
    picks = _pick(gen, tuple(families), scenes)
    images = torch.zeros(scenes, 3, SIZE, SIZE)
    fg = torch.zeros(scenes, 1, SIZE, SIZE)
    back = torch.zeros(scenes, 3, SIZE, SIZE)
    attrs: list[tuple[str, str, str]] = [("", "", "")] * scenes
    for name in dict.fromkeys(picks):
        idx = [i for i, p in enumerate(picks) if p == name]
        drawn = FAMILIES[name].render(gen, len(idx))
        images[idx], fg[idx], back[idx] = drawn.images, drawn.foreground, drawn.background
        for j, i in enumerate(idx):
            attrs[i] = (drawn.colour[j], drawn.material[j], drawn.noun[j])
    images = (images + 0.012 * torch.randn(images.shape, generator=gen)).clamp(0, 1)  # sensor noise
    weights = torch.tensor([6.0, 3.0, 1.0][:max_defects])
    if copies > 1:
        images, fg, back = images.repeat(copies, 1, 1, 1), fg.repeat(copies, 1, 1, 1), back.repeat(copies, 1, 1, 1)
        picks, attrs = picks * copies, attrs * copies
        counts = torch.cat([torch.zeros(scenes, dtype=torch.long),
                            torch.multinomial(weights, scenes * (copies - 1), replacement=True, generator=gen) + 1])
    else:
        counts = torch.where(_rand(gen, batch_size) < defect_rate,
                             torch.multinomial(weights, batch_size, replacement=True, generator=gen) + 1,
                             torch.zeros(batch_size, dtype=torch.long))
    masks = torch.zeros(batch_size, 1, SIZE, SIZE, dtype=torch.bool)
    kinds_of: list[list[str]] = [[] for _ in range(batch_size)]
    defect_masks: list[list[torch.Tensor]] = [[] for _ in range(batch_size)]
    for round_ in range(max_defects):
        todo = [i for i in range(batch_size) if counts[i] > round_]
        if not todo:
            break
        kinds = _pick(gen, tuple(DEFECTS), len(todo))
        for kind in dict.fromkeys(kinds):
            idx = [i for i, k in zip(todo, kinds) if k == kind]
            out, m = apply_defect(kind, gen, images[idx], fg[idx], back[idx])
            images[idx] = out
            for j, i in enumerate(idx):
                if m[j].any():
                    kinds_of[i].append(kind)
                    defect_masks[i].append(m[j])
                    masks[i] |= m[j]
    if zoom > 0:
        images, masks = _close_ups(gen, images, masks, kinds_of, defect_masks, scenes, copies, zoom)
    # copies of a scene share their caption's template and attribute words (see caption)
    style_seeds = torch.randint(2 ** 62, (scenes,), generator=gen).tolist() if copies > 1 else None
    captions = [caption(gen, noun=a[2], colour=a[0], material=a[1], defects=kinds_of[i], masks=defect_masks[i],
                        style=None if style_seeds is None
                        else torch.Generator().manual_seed(style_seeds[i % scenes]))
                for i, a in enumerate(attrs)]
    return WorldBatch(images, masks, captions, picks, kinds_of, [a[2] for a in attrs])


def _close_ups(gen: torch.Generator, images: torch.Tensor, masks: torch.Tensor, kinds_of: list[list[str]],
               defect_masks: list[list[torch.Tensor]], scenes: int, copies: int, share: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a share of the scenes by close-up crops (see :func:`sample_batch`).

    ``kinds_of`` and ``defect_masks`` are updated in place: a defect the crop leaves out is
    dropped, so the caption only names what the close-up shows.
    """
    chosen = (_rand(gen, scenes) < share).nonzero().flatten().tolist()
    images, masks = images.clone(), masks.clone()
    for s in chosen:
        members = [s + c * scenes for c in range(copies)]
        guide = masks[members[1 if copies > 1 else 0], 0]
        side = int(_randint(gen, 60, 120))
        if guide.any():
            ys, xs = guide.nonzero(as_tuple=True)
            j = int(torch.randint(len(ys), (1,), generator=gen))
            cy, cx = int(ys[j]), int(xs[j])
        else:
            cy, cx = (int(v) for v in _randint(gen, side // 2, SIZE - side // 2, 2))
        top = min(max(0, cy - side // 2 + int(_randint(gen, -side // 4, side // 4))), SIZE - side)
        left = min(max(0, cx - side // 2 + int(_randint(gen, -side // 4, side // 4))), SIZE - side)
        for i in members:
            crop = images[i:i + 1, :, top:top + side, left:left + side]
            images[i] = F.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
            grow = lambda m: F.interpolate(m[None, None, top:top + side, left:left + side].float(),  # noqa: E731
                                           size=(SIZE, SIZE), mode="nearest")[0, 0] > 0.5
            kept = [(k, grown) for k, m in zip(kinds_of[i], defect_masks[i]) if (grown := grow(m[0])).any()]
            kinds_of[i][:] = [k for k, _ in kept]
            defect_masks[i][:] = [m[None] for _, m in kept]
            masks[i, 0] = grow(masks[i, 0])
    return images.clamp(0, 1), masks
