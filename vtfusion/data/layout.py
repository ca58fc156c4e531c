"""MVTec folder-layout names shared by the loaders and the toy generator.

::

    <category>/train/good/*.png
    <category>/test/<good | defect type>/*.png
    <category>/ground_truth/<defect type>/<stem>_mask.png
    <category>/val/<good | defect type>/*.png                 (this project's extension)
    <category>/val_ground_truth/<defect type>/<stem>_mask.png

``val`` is the validation split the toy dataset carries: every default the project
chooses is chosen on it, never on ``test`` (:mod:`vtfusion.validation`).
"""

from __future__ import annotations

SPLITS = ("train", "val", "test")
GOOD = "good"
MASK_FOLDERS = {"test": "ground_truth", "val": "val_ground_truth"}
"""Where the masks of each evaluated split live."""
