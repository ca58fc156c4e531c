"""Reading images and masks from disk into tensors, with errors that name the file.

Every image is returned as RGB ``float32`` in [0, 1], shape ``3 x S x S`` (resized
without centre crop, DESIGN §7); every mask as ``float32`` in {0, 1}, ``1 x S x S``,
resized with nearest neighbour so it stays binary.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# The torch-free reading and resizing live in vtfusion.image_io (shared with the ONNX
# runner); they are re-exported here, where the data layer has always had them.
from vtfusion.image_io import (  # noqa: F401
    IMAGE_EXTENSIONS,
    ImageReadError,
    load_image_array,
    open_image,
    read_rgb,
    resize_rgb,
    to_rgb_array,
    to_unit_float,
)

MASK_THRESHOLD = 128
"""Gray value from which a mask pixel is defect: masks are 0/255 (MVTec AD) and 128 splits them."""

LABEL_MASK_THRESHOLD = 1
"""For label masks (VisA: 0 background, 1, 2, ... defect regions) every nonzero value is defect."""


class MaskWarning(UserWarning):
    """A mask is not binary, so the threshold decides which of its pixels are defect."""


def mask_gray(img: Image.Image) -> np.ndarray:
    """``H x W`` uint8 gray values of a mask of any mode (16-bit scaled to 8 bits, mode 1 as 0/255)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return to_rgb_array(img)[..., 0]
    return np.asarray(img.convert("L"), dtype=np.uint8)


def warn_unless_binary(gray: np.ndarray, path: str | Path) -> None:
    """Warn, naming the file, when a mask holds gray values other than 0 and 255."""
    other = (gray != 0) & (gray != 255)
    if other.any():
        values = np.unique(gray[other])
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        warnings.warn(f"mask {path} is not binary (gray values {shown} besides 0 and 255); pixels >= "
                      f"{MASK_THRESHOLD} count as defect, as in MVTec AD. Save masks as 0 and 255 only.",
                      MaskWarning, stacklevel=3)


def read_mask(path: str | Path, threshold: int = MASK_THRESHOLD) -> np.ndarray:
    """Read a mask as ``H x W`` bool: pixels whose gray value is at least ``threshold``.

    The default 128 reads 0/255 masks (MVTec AD) and warns when a mask is not binary
    (:class:`MaskWarning`): JPEG artefacts or anti-aliased edges would otherwise all count as
    defect. Label masks (VisA: 0/1 or region ids) are read with :data:`LABEL_MASK_THRESHOLD`.
    """
    gray = mask_gray(open_image(Path(path)))
    if threshold == MASK_THRESHOLD:
        warn_unless_binary(gray, path)
    return gray >= threshold


def resize_mask(mask: np.ndarray, size: int | None) -> np.ndarray:
    """bool ``H x W`` -> bool ``S x S`` (nearest neighbour, so it stays binary)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.NEAREST)
    return np.asarray(img) > 127


def image_to_tensor(rgb: np.ndarray, size: int | None) -> torch.Tensor:
    """uint8 ``H x W x 3`` -> float32 ``3 x S x S`` in [0, 1] (bicubic, as OpenCLIP resizes)."""
    return torch.from_numpy(to_unit_float(resize_rgb(rgb, size))).permute(2, 0, 1).contiguous()


def mask_to_tensor(mask: np.ndarray, size: int | None) -> torch.Tensor:
    """bool ``H x W`` -> float32 ``1 x S x S`` in {0, 1} (nearest neighbour)."""
    return torch.from_numpy(resize_mask(mask, size).astype(np.float32))[None]


def load_image(path: str | Path, image_size: int | None = 240) -> torch.Tensor:
    """Read any image file as a ``3 x S x S`` float RGB tensor in [0, 1].

    The pixels of :func:`vtfusion.image_io.load_image_array`, divided by 255.
    """
    return torch.from_numpy(to_unit_float(load_image_array(path, image_size))).permute(2, 0, 1).contiguous()


def load_image_and_mask(
    image_path: str | Path,
    mask_path: str | Path | None,
    image_size: int | None = 240,
    mask_threshold: int = MASK_THRESHOLD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and its mask (all zeros when ``mask_path`` is None), checked to have the same size."""
    rgb, mask = read_image_and_mask(image_path, mask_path, mask_threshold)
    return image_to_tensor(rgb, image_size), mask_to_tensor(mask, image_size)


def read_image_and_mask(
    image_path: str | Path,
    mask_path: str | Path | None,
    mask_threshold: int = MASK_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``H x W x 3`` RGB and bool ``H x W`` mask at the original size, checked to match."""
    rgb = read_rgb(image_path)
    if mask_path is None:
        mask = np.zeros(rgb.shape[:2], dtype=bool)
    else:
        mask = read_mask(mask_path, mask_threshold)
        if mask.shape != rgb.shape[:2]:
            raise ImageReadError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{image_path} is {rgb.shape[1]}x{rgb.shape[0]}; masks must have the size of their "
                "image (fix or regenerate the mask)."
            )
    return rgb, mask
