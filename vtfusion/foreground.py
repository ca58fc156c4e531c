"""Foreground masks for placing synthetic anomalies on objects (DESIGN §2, paper III-B).

The paper superimposes crack masks "onto the foreground of the original normal
images". Which pixels are foreground is not specified; this project's **[choice]**
is a per-category texture flag (``category_info(dataset, category).texture``: a
texture may be altered anywhere) and, for objects, Otsu's threshold on luminance or an
opponent-colour axis (whichever separates the image better) followed by a morphological opening
and closing. When the estimate is degenerate (an image with
no bimodal histogram, or a "foreground" that is almost nothing or almost
everything) the full image is used instead, so synthesis never gets stuck.

Thresholds and morphology are vectorised over a batch with torch ops (CPU and CUDA);
the connected-component clean-up and optional hole filling go through
``scipy.ndimage`` on the CPU. The trainer
computes the foreground once per shot image and passes it to
:func:`vtfusion.das.synthesize_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vtfusion.data.categories import category_info

FOREGROUND_METHODS = ("otsu", "none")


@dataclass(frozen=True)
class ForegroundConfig:
    """How the foreground of an object image is estimated **[choice]**.

    Sizes are in pixels of a ``reference_size`` image (the paper's 240) and scale with
    the shorter side of the actual image.

    Attributes:
        method: ``otsu`` (Otsu threshold + morphology, DESIGN §2) or ``none`` (every
            category is treated as a texture: anomalies anywhere). A **[choice]**.
        use_texture_flag: when True the category table's texture flag decides: textures
            get the full mask without looking at the image. A **[choice]**.
        open_size: side of the square opening kernel that removes isolated specks (px).
        close_size: side of the square closing kernel that bridges gaps in the object (px).
        min_component: connected pieces smaller than this share of the largest piece are
            dropped (background clutter that passed the threshold); 0 keeps everything.
            Objects made of several similar pieces (VisA capsules) keep all of them.
        fill_holes: fill enclosed background holes (``scipy.ndimage``, on the CPU). Off by
            default because some objects have real holes (a washer, a metal nut) and an
            anomaly painted inside a hole would sit on the background.
        border: width of the image frame, as a fraction of the shorter side, whose
            majority class is taken to be the background (decides the polarity: bright
            object on dark background or the reverse).
        min_fraction: estimates covering less than this share of the image are
            degenerate -> full mask.
        max_fraction: estimates covering more than this share are degenerate -> full mask.
        min_separability: Otsu's effectiveness ``eta = sigma_between^2 / sigma_total^2`` in
            [0, 1]; below it the histogram is not bimodal enough -> full mask. A single
            Gaussian mode scores 2/pi ~ 0.64; the toy washer ~0.95, the real tyre ~0.77.
        reference_size: image side at which the pixel sizes above hold.
    """

    method: str = "otsu"
    use_texture_flag: bool = True
    open_size: int = 3
    close_size: int = 9
    min_component: float = 0.1
    fill_holes: bool = False
    border: float = 0.04
    min_fraction: float = 0.05
    max_fraction: float = 0.97
    min_separability: float = 0.7
    reference_size: int = 240

    def __post_init__(self) -> None:
        if self.method not in FOREGROUND_METHODS:
            raise ValueError(
                f"ForegroundConfig.method={self.method!r}; choose one of {', '.join(FOREGROUND_METHODS)}"
            )
        if not 0.0 <= self.min_fraction < self.max_fraction <= 1.0:
            raise ValueError(
                "ForegroundConfig needs 0 <= min_fraction < max_fraction <= 1, got "
                f"min_fraction={self.min_fraction}, max_fraction={self.max_fraction}"
            )


def _scaled_odd(size_px: int, short_side: int, reference: int) -> int:
    k = max(1, int(round(size_px * short_side / reference)))
    return k if k % 2 == 1 else k + 1


def _dilate(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Binary dilation of ``B x 1 x H x W`` float {0,1} with a ``k x k`` square."""
    if k <= 1:
        return mask
    return F.max_pool2d(mask, k, stride=1, padding=k // 2)


def _erode(mask: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 1:
        return mask
    # Pad with ones so that the image border does not erode the object.
    padded = F.pad(mask, (k // 2,) * 4, value=1.0)
    return -F.max_pool2d(-padded, k, stride=1)


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """``B x C x H x W`` in [0, 1] -> ``B x H x W`` luminance (ITU-R 601 weights for C=3)."""
    if images.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
        return torch.einsum("bchw,c->bhw", images, w)
    return images.mean(dim=1)


def otsu_threshold(gray: torch.Tensor, bins: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Otsu's threshold per image, vectorised over the batch.

    Args:
        gray: ``B x H x W`` in [0, 1].

    Returns:
        ``(threshold, separability)``, each ``B``: pixels ``> threshold`` form the bright
        class; ``separability`` is Otsu's ``eta`` in [0, 1] (1: two perfectly separated
        modes, 0: one flat mode).
    """
    b = gray.shape[0]
    idx = (gray.clamp(0, 1) * (bins - 1)).round().long().flatten(1)
    hist = torch.zeros(b, bins, dtype=torch.float64, device=gray.device)
    hist.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    p = hist / hist.sum(1, keepdim=True)
    levels = torch.arange(bins, dtype=torch.float64, device=gray.device) / (bins - 1)
    omega = p.cumsum(1)
    mu = (p * levels).cumsum(1)
    mu_t = mu[:, -1:]
    denom = omega * (1 - omega)
    between = torch.where(denom > 1e-12, (mu_t * omega - mu) ** 2 / denom.clamp_min(1e-12),
                          torch.zeros_like(denom))
    best = between.argmax(1)
    total = (p * (levels - mu_t) ** 2).sum(1)
    sep = torch.where(total > 1e-12, between.gather(1, best[:, None])[:, 0] / total.clamp_min(1e-12),
                      torch.zeros_like(total))
    return levels[best].to(gray.dtype), sep.to(gray.dtype)


def _fill_holes(mask: torch.Tensor) -> torch.Tensor:
    from scipy import ndimage  # local: scipy is slow to import, and only some configs use it

    filled = np.stack([ndimage.binary_fill_holes(m) for m in mask[:, 0].bool().cpu().numpy()])
    return torch.from_numpy(filled)[:, None].to(mask.device, mask.dtype)


def _drop_small_components(mask: torch.Tensor, share: float) -> torch.Tensor:
    """Remove 8-connected components smaller than ``share`` of the largest (``scipy.ndimage``, CPU)."""
    from scipy import ndimage  # local: scipy is slow to import, and only some configs use it

    kept = []
    for m in mask[:, 0].bool().cpu().numpy():
        labels, count = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
        if count > 1:
            sizes = np.bincount(labels.ravel())[1:]
            m = np.isin(labels, 1 + np.flatnonzero(sizes >= share * sizes.max()))
        kept.append(m)
    return torch.from_numpy(np.stack(kept))[:, None].to(mask.device, mask.dtype)


def _as_batch(image: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, str]:
    """Any accepted image form -> float ``B x C x H x W`` in [0, 1] and a tag of the input form."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise ValueError(f"foreground_mask: numpy images must be H x W or H x W x C, got shape {image.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
        form = "numpy"
    elif isinstance(image, torch.Tensor):
        if image.ndim == 3:
            t, form = image[None], "single"
        elif image.ndim == 4:
            t, form = image, "batch"
        else:
            raise ValueError(
                f"foreground_mask: tensors must be C x H x W or B x C x H x W, got shape {tuple(image.shape)}"
            )
    else:
        raise TypeError(f"foreground_mask: expected a numpy array or torch tensor, got {type(image).__name__}")
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    return t, form


@torch.no_grad()
def foreground_mask(image: torch.Tensor | np.ndarray, texture: bool = False,
                    config: ForegroundConfig | None = None) -> torch.Tensor | np.ndarray:
    """Where synthetic anomalies may go: the object's foreground, or everywhere for textures.

    Otsu threshold on the luminance or an opponent-colour axis (red-green, blue-yellow),
    whichever has the larger Otsu separability for that image, polarity chosen so that the class that dominates the
    image frame is the background, then opening (removes specks) and closing (bridges
    gaps). Degenerate estimates fall back to the full mask (see :class:`ForegroundConfig`).

    Args:
        image: ``C x H x W`` or ``B x C x H x W`` tensor (float in [0, 1] or uint8), or a
            numpy ``H x W`` / ``H x W x C`` array (uint8 or float in [0, 1]).
        texture: True for a texture category: the full mask is returned when
            ``config.use_texture_flag`` is set (the default).
        config: estimation options; ``ForegroundConfig()`` when None.

    Returns:
        bool mask: ``H x W`` (numpy for numpy input, tensor for a ``C x H x W`` tensor) or
        ``B x 1 x H x W`` for a batch, on the image's device.
    """
    cfg = config or ForegroundConfig()
    x, form = _as_batch(image)
    b, _, h, w = x.shape
    if (texture and cfg.use_texture_flag) or cfg.method == "none":
        fg = torch.ones(b, 1, h, w, dtype=torch.bool, device=x.device)
    else:
        fg = _otsu_foreground(x, cfg)
    if form == "batch":
        return fg
    if form == "numpy":
        return fg[0, 0].cpu().numpy()
    return fg[0, 0]


def _stretch(feature: torch.Tensor) -> torch.Tensor:
    """Map each image's 1st..99th percentile to [0, 1] so Otsu's 256 bins resolve dark scenes."""
    flat = feature.flatten(1)
    q = torch.quantile(flat, torch.tensor([0.01, 0.99], dtype=flat.dtype, device=flat.device), dim=1)
    lo, hi = q[0][:, None, None], q[1][:, None, None]
    return ((feature - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def _otsu_foreground(x: torch.Tensor, cfg: ForegroundConfig) -> torch.Tensor:
    b, c, h, w = x.shape
    short = min(h, w)
    # Several cues, the best separated one wins per image: luminance (a bright part on a
    # dark table) and, for colour images, the two opponent-colour axes red-green and
    # blue-yellow (a black tyre on a blue cloth, where luminance finds only highlights).
    feats = [to_gray(x)]
    if c == 3:
        r, g, bl = x[:, 0], x[:, 1], x[:, 2]
        feats += [r - g, bl - 0.5 * (r + g)]
    # A light 3x3 mean removes sensor noise before thresholding (Otsu is histogram-based).
    feats = [_stretch(F.avg_pool2d(f[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0])
             for f in feats]
    results = [otsu_threshold(f) for f in feats]
    seps = torch.stack([s for _, s in results], 1)  # B x n_feats
    best = seps.argmax(1)
    sep = seps.gather(1, best[:, None])[:, 0]
    high = torch.stack([f > t[:, None, None] for f, (t, _) in zip(feats, results)], 1)
    high = high[torch.arange(b, device=x.device), best]
    frame = torch.zeros(h, w, dtype=torch.bool, device=x.device)
    bw = max(1, int(round(cfg.border * short)))
    frame[:bw], frame[-bw:], frame[:, :bw], frame[:, -bw:] = True, True, True, True
    border_high = (high & frame).flatten(1).sum(1).float() / frame.sum().float()
    fg = torch.where((border_high > 0.5)[:, None, None], ~high, high)[:, None].float()
    k_open = _scaled_odd(cfg.open_size, short, cfg.reference_size)
    k_close = _scaled_odd(cfg.close_size, short, cfg.reference_size)
    fg = _dilate(_erode(fg, k_open), k_open)  # opening
    fg = _erode(_dilate(fg, k_close), k_close)  # closing
    if cfg.min_component > 0:
        fg = _drop_small_components(fg, cfg.min_component)
    if cfg.fill_holes:
        fg = _fill_holes(fg)
    frac = fg.flatten(1).mean(1)
    degenerate = (frac < cfg.min_fraction) | (frac > cfg.max_fraction) | (sep < cfg.min_separability)
    fg = torch.where(degenerate[:, None, None, None], torch.ones_like(fg), fg)
    return fg > 0.5


def category_foreground(images: torch.Tensor, dataset: str, category: str,
                        config: ForegroundConfig | None = None) -> torch.Tensor:
    """:func:`foreground_mask` with the texture flag read from the category table.

    Args:
        images: ``B x C x H x W`` (or ``C x H x W``) tensor.
        dataset, category: looked up with :func:`vtfusion.data.categories.category_info`.
    """
    return foreground_mask(images, texture=category_info(dataset, category).texture, config=config)
