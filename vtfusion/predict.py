"""Applying a trained model to images: score maps, overlays and a scores table on disk."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vtfusion.data.images import load_image
from vtfusion.io import atomic_write


def heat_overlay(image: torch.Tensor, score_map: torch.Tensor, vmax: float = 1.0, alpha: float = 0.5) -> np.ndarray:
    """``H x W x 3`` uint8: the image with the score map in a jet colour map blended on top."""
    import matplotlib

    img = image.permute(1, 2, 0).clamp(0, 1).numpy()
    heat = matplotlib.colormaps["jet"]((score_map.squeeze().numpy() / max(vmax, 1e-12)).clip(0, 1))[..., :3]
    return ((1 - alpha) * img + alpha * heat).clip(0, 1).__mul__(255).round().astype(np.uint8)


def predict_files(model, paths: Sequence[str | Path], out_dir: str | Path, image_size: int = 240,
                  batch_size: int = 16) -> Path:
    """Score every image file; write ``maps/<stem>.npy`` (``H x W`` float32 ``M^f``),
    ``overlays/<stem>.png`` and ``scores.csv`` (path, image score) into ``out_dir``.

    Returns the path of ``scores.csv``.
    """
    from PIL import Image

    out = Path(out_dir)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    rows = []
    paths = [Path(p) for p in paths]
    stems = _unique_stems(paths)
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        images = torch.stack([load_image(p, image_size) for p in chunk])
        pred = model.predict(images, batch_size=batch_size)
        for j, p in enumerate(chunk):
            stem = stems[i + j]
            score_map = pred["final"][j, 0]
            np.save(out / "maps" / f"{stem}.npy", score_map.numpy().astype(np.float32))
            Image.fromarray(heat_overlay(images[j], score_map)).save(out / "overlays" / f"{stem}.png")
            rows.append((str(p), float(pred["score"][j])))
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "image_score"])
            writer.writerows(rows)

    return atomic_write(out / "scores.csv", write_csv)


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, prefixed by their parent folder where two files share a stem (000.png ...)."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{p.parent.name}_{p.stem}" for p in paths]
