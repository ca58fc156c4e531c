"""Run an exported VTFusion graph with ONNX Runtime: numpy, PIL and onnxruntime, no torch.

:func:`predict_files_onnx` writes what ``vtfusion predict`` writes
(:func:`vtfusion.predict.predict_files`: ``maps/<name>.npy``, ``overlays/<name>.png``,
``scores.csv``), through the same writing functions, from images read by the same
function (:func:`vtfusion.image_io.load_image_array`). ``vtfusion predict --onnx`` runs
it; nothing on that path imports torch (``tests/test_deploy.py`` checks it in a fresh
interpreter).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vtfusion.deploy import FORMAT, INPUT_KINDS, INPUT_NAME, OUTPUT_NAMES
from vtfusion.image_io import load_image_array, to_unit_float
from vtfusion.predict import output_names, prepare_output, save_prediction, write_scores


@dataclass
class OnnxModel:
    """An exported graph loaded in ONNX Runtime, with what its metadata says.

    Attributes:
        session: the ``onnxruntime.InferenceSession`` (CPU).
        metadata: the graph's ``metadata_props`` (:func:`vtfusion.deploy.export.deploy_metadata`).
        image_size: ``S`` of the ``B x 3 x S x S`` input.
        input_kind: ``uint8`` (pixels in [0, 255]) or ``float`` (in [0, 1]).
    """

    session: object
    metadata: dict[str, str]
    image_size: int
    input_kind: str

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``B x S x S x 3`` uint8 RGB -> ``(M^f B x 1 x S x S, score B)``, float32.

        Raises ``ValueError`` naming the expected shape when the images do not fit.
        """
        s = self.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
            raise ValueError(f"the ONNX model takes uint8 RGB images {s} x {s} x 3 (its metadata image_size), "
                             f"got {images.dtype} {tuple(images.shape[1:])}; read them with "
                             "vtfusion.image_io.load_image_array(path, image_size)")
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        if self.input_kind == "float":
            x = to_unit_float(x)
        final, score = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return final, score

    def run_batched(self, images: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`run` over ``N`` images in batches of ``batch_size``; outputs concatenated."""
        parts = [self.run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxModel:
    """Open an exported graph on the CPU; ``ValueError`` (one line, naming the file) when it
    is not one ``vtfusion export`` wrote.

    ``threads``: ONNX Runtime's intra-op threads (default: its own choice, all cores).
    """
    try:
        import onnxruntime as ort  # local: the deploy extra is optional
    except ImportError:
        raise ValueError("onnxruntime is not installed; pip install 'vtfusion[deploy]'") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} not found; write one with `vtfusion export`")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for a bad file
        raise ValueError(f"{path} is not a readable ONNX model: {str(err).splitlines()[0]}") from err
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a model written by `vtfusion export` (metadata format "
                         f"{meta.get('format')!r}, expected {FORMAT!r}); export the checkpoint again")
    if meta.get("input_kind") not in INPUT_KINDS or not meta.get("image_size", "").isdigit():
        raise ValueError(f"{path}: its metadata lacks input_kind or image_size; export the checkpoint again")
    return OnnxModel(session, meta, int(meta["image_size"]), meta["input_kind"])


def predict_files_onnx(model: OnnxModel, paths: Sequence[str | Path], out_dir: str | Path,
                       batch_size: int = 16) -> Path:
    """Score every image file with an exported graph; write ``maps/<name>.npy``,
    ``overlays/<name>.png`` and ``scores.csv`` into ``out_dir``, as
    :func:`vtfusion.predict.predict_files` does. Returns the path of ``scores.csv``."""
    out = prepare_output(out_dir)
    paths = [Path(p) for p in paths]
    names = output_names(paths)
    rows = []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        images = np.stack([load_image_array(p, model.image_size) for p in chunk])  # B x S x S x 3
        final, score = model.run(images)
        for j, p in enumerate(chunk):
            save_prediction(out, names[i + j], to_unit_float(images[j]), final[j, 0])
            rows.append((str(p), names[i + j], float(score[j])))
    return write_scores(out, rows)
