"""Applying a trained model to images: score maps, overlays and a scores table on disk."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from vtfusion.data.images import load_image
from vtfusion.io import atomic_write


def heat_overlay(image: torch.Tensor, score_map: torch.Tensor, vmax: float = 1.0, alpha: float = 0.5) -> np.ndarray:
    """``H x W x 3`` uint8: the image with the score map in a jet colour map blended on top."""
    import matplotlib  # local: matplotlib is slow to import; only for overlays

    img = image.permute(1, 2, 0).clamp(0, 1).numpy()
    heat = matplotlib.colormaps["jet"]((score_map.squeeze().numpy() / max(vmax, 1e-12)).clip(0, 1))[..., :3]
    return ((1 - alpha) * img + alpha * heat).clip(0, 1).__mul__(255).round().astype(np.uint8)


def predict_files(model, paths: Sequence[str | Path], out_dir: str | Path, image_size: int = 240,
                  batch_size: int = 16) -> Path:
    """Score every image file; write ``maps/<name>.npy`` (``H x W`` float32 ``M^f``),
    ``overlays/<name>.png`` and ``scores.csv`` (path, output name, image score) into ``out_dir``.

    ``<name>`` is the file stem, made unique among ``paths`` by :func:`output_names`, so two
    inputs never write the same map or overlay. Returns the path of ``scores.csv``.
    """
    out = Path(out_dir)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    rows = []
    paths = [Path(p) for p in paths]
    names = output_names(paths)
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        images = torch.stack([load_image(p, image_size) for p in chunk])
        pred = model.predict(images, batch_size=batch_size)
        for j, p in enumerate(chunk):
            name = names[i + j]
            score_map = pred["final"][j, 0]
            np.save(out / "maps" / f"{name}.npy", score_map.numpy().astype(np.float32))
            Image.fromarray(heat_overlay(images[j], score_map)).save(out / "overlays" / f"{name}.png")
            rows.append((str(p), name, float(pred["score"][j])))
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "name", "image_score"])
            writer.writerows(rows)

    return atomic_write(out / "scores.csv", write_csv)


def output_names(paths: Sequence[str | Path]) -> list[str]:
    """One output name per input path, unique even on a case-insensitive file system.

    The stem alone where the stems differ (``000``); else the stem prefixed by as many
    parent folders as tell the files apart (``good_000``, ``crack_000``). Names that stay
    equal (the same file given twice) get ``-2``, ``-3``, ... appended, so no input's map
    or overlay ever replaces another's.
    """
    parts = [Path(p).resolve().with_suffix("").parts[1:] for p in paths]  # [1:]: without "/" or "C:\\"

    def distinct(depth: int) -> int:
        """How many inputs the last ``depth`` path parts tell apart."""
        return len({tuple(part.casefold() for part in q[-depth:]) for q in parts})

    depth, deepest = 1, max((len(q) for q in parts), default=1)
    while depth < deepest and distinct(depth) < distinct(deepest):
        depth += 1
    names, taken = [], set()
    for q in parts:
        base = name = "_".join(q[-depth:]) or "image"
        copy = 1
        while name.casefold() in taken:
            copy += 1
            name = f"{base}-{copy}"
        taken.add(name.casefold())
        names.append(name)
    return names

