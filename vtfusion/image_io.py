"""Image files to uint8 arrays, with numpy and PIL only (no torch).

The one place where an image file becomes the pixels a model sees: read as RGB, resized
to ``S x S`` with PIL's bicubic filter (as OpenCLIP resizes; no centre crop, DESIGN §7).
:mod:`vtfusion.data.images` builds its tensors from these arrays, and the exported ONNX
model's runner (:mod:`vtfusion.deploy.onnx_predict`) feeds them as they are, so both
paths read an image the same way, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(OSError):
    """An image or mask file could not be read or does not fit its partner."""


def open_image(path: Path) -> Image.Image:
    """Open and decode an image file; :class:`ImageReadError` naming the file if that fails."""
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(
            f"image file {path} is too large to decode safely ({err}); shrink the image, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file."
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(
            f"cannot read image file {path}: {err}. The file may be truncated or not an image; "
            "re-download the dataset or remove the file."
        ) from err
    return img


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """``H x W x 3`` uint8 RGB from any PIL mode (grayscale, RGBA, palette, 16-bit, float).

    16-bit and 32-bit integer images are scaled to 8 bits by their type range
    (``I;16``: /257); float images are taken to be in [0, 1]. Alpha is dropped.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr8 = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read ``path`` as ``H x W x 3`` uint8 RGB at its original size."""
    return to_rgb_array(open_image(Path(path)))


def resize_rgb(rgb: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 ``H x W x 3`` -> uint8 ``S x S x 3`` (bicubic, as OpenCLIP resizes; no crop).

    The one resize of the package: tensors (:func:`vtfusion.data.images.image_to_tensor`),
    the decoded-image cache (:mod:`vtfusion.cache`) and the ONNX runner all call it, so
    cached, freshly decoded and deployed images are equal.
    """
    img = Image.fromarray(rgb)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def load_image_array(path: str | Path, image_size: int | None = 240) -> np.ndarray:
    """Read any image file as the ``S x S x 3`` uint8 RGB array a model is given."""
    return resize_rgb(read_rgb(path), image_size)


def to_unit_float(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``... x 3`` -> float32 in [0, 1] (``x / 255``), the scale every model reads."""
    return rgb.astype(np.float32) / 255.0
