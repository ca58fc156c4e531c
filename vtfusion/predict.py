"""Applying a trained model to images: score maps, overlays and a scores table on disk.

The writing is torch-free (numpy, PIL, matplotlib for the colour map), so the PyTorch
path (:func:`predict_files`) and the ONNX Runtime path
(:func:`vtfusion.deploy.onnx_predict.predict_files_onnx`) write the same files through
the same functions: :func:`save_prediction` and :func:`write_scores`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from vtfusion.image_io import load_image_array, to_unit_float
from vtfusion.io import atomic_write

SCORES_HEADER = ("path", "name", "image_score")
"""The columns of ``scores.csv``."""


def overlay_rgb(image: np.ndarray, score_map: np.ndarray, vmax: float = 1.0, alpha: float = 0.5) -> np.ndarray:
    """``H x W x 3`` uint8: an ``H x W x 3`` float image in [0, 1] with the ``H x W`` score map
    in a jet colour map blended on top."""
    import matplotlib  # local: matplotlib is slow to import; only for overlays

    img = np.clip(image, 0, 1)
    heat = matplotlib.colormaps["jet"]((np.squeeze(score_map) / max(vmax, 1e-12)).clip(0, 1))[..., :3]
    return ((1 - alpha) * img + alpha * heat).clip(0, 1).__mul__(255).round().astype(np.uint8)


def heat_overlay(image, score_map, vmax: float = 1.0, alpha: float = 0.5) -> np.ndarray:
    """:func:`overlay_rgb` of a ``3 x H x W`` image tensor and a score-map tensor."""
    return overlay_rgb(image.permute(1, 2, 0).numpy(), score_map.numpy(), vmax, alpha)


def prepare_output(out_dir: str | Path) -> Path:
    """Create ``out_dir/maps`` and ``out_dir/overlays``; returns ``out_dir`` as a path."""
    out = Path(out_dir)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    return out


def save_prediction(out: Path, name: str, image: np.ndarray, score_map: np.ndarray) -> None:
    """Write ``maps/<name>.npy`` (``H x W`` float32 ``M^f``) and ``overlays/<name>.png``.

    ``image``: the ``H x W x 3`` float image in [0, 1] the model saw.
    """
    np.save(out / "maps" / f"{name}.npy", np.asarray(score_map, dtype=np.float32))
    Image.fromarray(overlay_rgb(image, score_map)).save(out / "overlays" / f"{name}.png")


def write_scores(out: Path, rows: Sequence[tuple[str, str, float]]) -> Path:
    """Write ``scores.csv`` (:data:`SCORES_HEADER`, one row per image) atomically; returns its path."""
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(SCORES_HEADER)
            writer.writerows(rows)

    return atomic_write(out / "scores.csv", write_csv)


def predict_files(model, paths: Sequence[str | Path], out_dir: str | Path, image_size: int = 240,
                  batch_size: int = 16) -> Path:
    """Score every image file; write ``maps/<name>.npy`` (``H x W`` float32 ``M^f``),
    ``overlays/<name>.png`` and ``scores.csv`` (path, output name, image score) into ``out_dir``.

    ``<name>`` is the file stem, made unique among ``paths`` by :func:`output_names`, so two
    inputs never write the same map or overlay. Returns the path of ``scores.csv``.
    """
    import torch  # local: the ONNX runner imports this module and must not import torch

    out = prepare_output(out_dir)
    rows = []
    paths = [Path(p) for p in paths]
    names = output_names(paths)
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        images = np.stack([to_unit_float(load_image_array(p, image_size)) for p in chunk])  # B x S x S x 3
        pred = model.predict(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), batch_size=batch_size)
        for j, p in enumerate(chunk):
            save_prediction(out, names[i + j], images[j], pred["final"][j, 0].numpy())
            rows.append((str(p), names[i + j], float(pred["score"][j])))
    return write_scores(out, rows)


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
