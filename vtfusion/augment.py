"""Light, label-preserving augmentation of the k normal shots during training.

The paper names no augmentation (DESIGN §6 allows "light augmentation" as a
**[choice]**). Its use here is a remedy: without it, the normal training images are the
very shots the prototypes are built from, so their vision map is (near) zero, exactly
zero for ``k = 1``, while unseen test normals score higher. Small shifts and intensity
changes make the training normals look like new normal images of the same category.

What is changed (:class:`AugmentConfig`), per image and per iteration:

* an integer shift of up to ``max_shift`` pixels in each direction, with reflected
  borders (sub-patch misalignment is the commonest difference between two normal images
  of a part);
* brightness and contrast scaled by up to ``+-brightness`` and ``+-contrast``;
* textures only (category-aware): random horizontal and vertical flips, which keep the
  orientation of a weave's or a grid's axes. Objects are never flipped: a mirrored part
  may be a defect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

AUGMENT_KINDS = ("none", "light")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of the normal shots in each training iteration **[choice]**.

    Attributes:
        kind: ``none`` (the paper: the shots as they are) or ``light`` (module docstring).
        max_shift: largest shift in pixels at the training resolution.
        brightness: largest relative change of brightness (multiplicative).
        contrast: largest relative change of contrast around each image's mean.
        flip_textures: random horizontal and vertical flips for texture categories.
    """

    kind: str = "none"
    max_shift: int = 8
    brightness: float = 0.05
    contrast: float = 0.05
    flip_textures: bool = True

    def __post_init__(self) -> None:
        if self.kind not in AUGMENT_KINDS:
            raise ValueError(f"AugmentConfig.kind must be one of {', '.join(AUGMENT_KINDS)}, got {self.kind!r}")
        if self.max_shift < 0 or self.brightness < 0 or self.contrast < 0:
            raise ValueError("AugmentConfig.max_shift, brightness and contrast must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=generator, device=generator.device)).to(device)


def shift_images(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift each image by integer ``(dy, dx)`` pixels with reflected borders: ``B x C x H x W`` -> same.

    A positive ``dy`` moves the content down, a positive ``dx`` to the right.
    """
    pad = int(max(dy.abs().max(), dx.abs().max())) if len(dy) else 0
    if pad == 0:
        return images
    h, w = images.shape[-2:]
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    return torch.stack([padded[i, :, pad - int(y):pad - int(y) + h, pad - int(x):pad - int(x) + w]
                        for i, (y, x) in enumerate(zip(dy.tolist(), dx.tolist()))])


def augment_shots(images: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig,
                  texture: bool = False) -> torch.Tensor:
    """A freshly augmented copy of the shots (``B x 3 x H x W`` in [0, 1]); see the module docstring.

    Deterministic for a given generator state; returns ``images`` itself when ``cfg.kind``
    is ``none``.
    """
    if not cfg.enabled:
        return images
    b, device = images.shape[0], images.device
    out = images
    if texture and cfg.flip_textures:
        flip_h = torch.rand(b, generator=generator, device=generator.device).to(device) < 0.5
        flip_v = torch.rand(b, generator=generator, device=generator.device).to(device) < 0.5
        out = torch.where(flip_h[:, None, None, None], out.flip(-1), out)
        out = torch.where(flip_v[:, None, None, None], out.flip(-2), out)
    if cfg.max_shift > 0:
        shifts = torch.randint(-cfg.max_shift, cfg.max_shift + 1, (2, b), generator=generator,
                               device=generator.device).cpu()
        out = shift_images(out, shifts[0], shifts[1])
    gain = _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, generator, device)[:, None, None, None]
    contrast = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, generator, device)[:, None, None, None]
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean).mul(gain).clamp(0.0, 1.0)
