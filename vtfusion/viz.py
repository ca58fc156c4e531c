"""Figures for the book: image grids with mask outlines, and plain-text tables.

Functions take tensors as the data layer returns them (``3 x H x W`` in [0, 1],
masks ``1 x H x W``) and return the matplotlib figure so notebooks can save it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


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
    import matplotlib.pyplot as plt

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


def format_table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """A fixed-width text table (notebooks print it; no pandas needed)."""
    cells = [[str(h) for h in headers]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(cells[0]), line, *[fmt(r) for r in cells[1:]]])
