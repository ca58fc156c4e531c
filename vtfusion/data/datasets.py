"""Anomaly-detection datasets behind one interface.

:class:`MVTecDataset` reads any folder in MVTec AD layout (MVTec AD itself, the toy
data, the real samples in ``../shared``, a user's own data)::

    root/<category>/train/good/*.png
    root/<category>/test/<good | defect type>/*.png
    root/<category>/ground_truth/<defect type>/<stem>_mask.png

:class:`VisADataset` reads VisA in its released layout through the official
one-class split CSV. Both yield the same sample dictionary (see
:meth:`AnomalyDataset.__getitem__`); :func:`load_dataset` opens a split of any
registered dataset by name (:mod:`vtfusion.data.registry`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vtfusion import paths
from vtfusion.data.images import (
    IMAGE_EXTENSIONS,
    LABEL_MASK_THRESHOLD,
    MASK_THRESHOLD,
    load_image,
    load_image_and_mask,
)
from vtfusion.data.layout import GOOD, MASK_FOLDERS, SPLITS
from vtfusion.data.registry import DATASETS, categories, category_info, get_dataset
from vtfusion.data.shots import shot_list_for



@dataclass(frozen=True)
class Record:
    """One image of a split: where it is and what it is."""

    image: Path
    mask: Path | None
    label: int  # 0 normal, 1 defective
    defect_type: str

    def relative_to(self, base: Path) -> str:
        return self.image.relative_to(base).as_posix()


class AnomalyDataset(Dataset):
    """Common behaviour: records -> sample dictionaries, shots, summaries.

    Subclasses fill ``self.records`` (sorted, deterministic) and set ``category_dir``.
    """

    dataset_name: str
    category: str
    split: str
    image_size: int | None
    records: list[Record]
    category_dir: Path
    mask_threshold: int = MASK_THRESHOLD

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        """Sample ``index`` as a dictionary.

        Returns:
            ``image``: float32 ``3 x S x S`` RGB in [0, 1]; ``mask``: float32 ``1 x S x S``
            in {0, 1} (zeros for normal images); ``label``: 0 normal / 1 defective;
            ``defect_type``: ``good`` or the defect folder name; ``path``: image path.
        """
        rec = self.records[index]
        image, mask = load_image_and_mask(rec.image, rec.mask, self.image_size, self.mask_threshold)
        return {"image": image, "mask": mask, "label": rec.label,
                "defect_type": rec.defect_type, "path": str(rec.image)}

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def pixel_metrics_unavailable(self) -> str | None:
        """Why pixel metrics cannot be computed on this split, or None when every defective
        image has a mask. Without masks (image labels only) the split is scored on image metrics."""
        missing = [r.image for r in self.records if r.label == 1 and r.mask is None]
        if not missing:
            return None
        n_bad = sum(self.labels)
        which = "no defective image has" if len(missing) == n_bad else f"{len(missing)} of {n_bad} defective images have no"
        return f"image labels only: {which} a ground-truth mask (e.g. {missing[0]})"

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect types present in this split (``good`` excluded)."""
        return sorted({r.defect_type for r in self.records if r.label == 1})

    def counts(self) -> dict[str, int]:
        """Number of images per defect type (``good`` included)."""
        out: dict[str, int] = {}
        for r in self.records:
            out[r.defect_type] = out.get(r.defect_type, 0) + 1
        return dict(sorted(out.items()))

    def train_pool(self) -> list[str]:
        """Normal training images, as paths relative to the category folder (shot-list keys)."""
        return [r.relative_to(self.category_dir) for r in self.records if r.label == 0]

    def load_shots(self, k: int, seed: int, shots_dir: str | Path | None = None) -> torch.Tensor:
        """The k-shot normal images of ``seed`` as a ``k x 3 x S x S`` tensor.

        Uses the committed shot list (``vtfusion/resources/shots/<dataset>/<category>/k<k>_seed<s>.json``,
        or the folder's own under ``$VTFUSION_DATA_DIR/shots/folder-<hash>/``); without one,
        the list is drawn from this folder with the same rule (see :mod:`vtfusion.data.shots`).
        """
        shot_list = shot_list_for(self, k, seed, shots_dir)
        return torch.stack([load_image(self.category_dir / f, self.image_size) for f in shot_list.files])

    def with_split(self, split: str) -> "AnomalyDataset":
        """The same dataset, category and image size, another split (e.g. ``train`` for its shot pool)."""
        return load_dataset(self.dataset_name, self.category, split, getattr(self, "root", None), self.image_size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.dataset_name}/{self.category}, split={self.split}, "
                f"n={len(self)}, counts={self.counts()})")


REQUIRE_MASKS_ENV = "VTFUSION_REQUIRE_MASKS"


def masks_required() -> bool:
    """Whether a defective image without a mask is an error: ``$VTFUSION_REQUIRE_MASKS`` set to
    anything but ``0`` (``--require-masks`` sets it). Default: no, evaluate image metrics only."""
    return os.environ.get(REQUIRE_MASKS_ENV, "0") not in ("", "0")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _missing_root_message(dataset: str, root: Path) -> str:
    hint = (get_dataset(dataset).root_hint if dataset in DATASETS
            else "point --root at a folder in MVTec layout (root/<category>/train/good/...)")
    return f"dataset root {root} does not exist; {hint.format(root=root)}."


class MVTecDataset(AnomalyDataset):
    """A category of any dataset in MVTec AD folder layout.

    Args:
        root: dataset root (holding one folder per category).
        category: category folder name.
        split: ``train`` (normal images only), ``test``, or ``val`` (a validation split in
            ``<category>/val/`` with masks in ``<category>/val_ground_truth/``, as the toy
            dataset has; choices are made on it, never on ``test``).
        image_size: side of the square the images are resized to (None: keep size).
        dataset_name: which shot lists and category facts apply (``mvtec``, ``toy``,
            ``real_ad``, or ``folder`` for custom data).
        mask_threshold: mask pixels with at least this gray value are anomalous (128: 0/255
            masks; a mask with other values is warned about).
        require_masks: defective images without a mask file are an error. Otherwise
            (the default, unless ``$VTFUSION_REQUIRE_MASKS`` is set, as ``--require-masks``
            does) they get an empty mask and :attr:`pixel_metrics_unavailable` says why
            the split is evaluated on image metrics only.
    """

    def __init__(self, root: str | Path, category: str, split: str = "test", image_size: int | None = 240,
                 dataset_name: str = "folder", mask_threshold: int = MASK_THRESHOLD,
                 require_masks: bool | None = None):
        _check_split(split)
        self.root = Path(root)
        self.category, self.split, self.image_size = category, split, image_size
        self.dataset_name, self.mask_threshold = dataset_name, mask_threshold
        if not self.root.is_dir():
            raise FileNotFoundError(_missing_root_message(dataset_name, self.root))
        self.category_dir = self.root / category
        if not self.category_dir.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())
            table = get_dataset(dataset_name).categories if dataset_name in DATASETS else None
            known = list(table or ())
            valid = present or known
            raise ValueError(
                f"unknown category {category!r}: no folder {self.category_dir}. "
                f"Valid categories here: {', '.join(valid) if valid else '(none found under ' + str(self.root) + ')'}"
            )
        self.records = self._scan(masks_required() if require_masks is None else require_masks)
        if not self.records:
            raise FileNotFoundError(f"no images found in {self.category_dir / split}; expected "
                                    f"{split}/<good|defect>/*.png in MVTec layout")

    def with_split(self, split: str) -> "MVTecDataset":
        """The same folder, category and image size, another split."""
        return MVTecDataset(self.root, self.category, split, self.image_size, self.dataset_name, self.mask_threshold)

    def _scan(self, require_masks: bool) -> list[Record]:
        split_dir = self.category_dir / self.split
        if not split_dir.is_dir():
            return []
        records: list[Record] = []
        missing: list[Path] = []
        for type_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            defect = type_dir.name
            for img in sorted(p for p in type_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
                if defect == GOOD:
                    records.append(Record(img, None, 0, GOOD))
                    continue
                mask = self._find_mask(defect, img.stem)
                if mask is None:
                    missing.append(img)
                records.append(Record(img, mask, 1, defect))
        if missing and require_masks:
            expected = self.category_dir / MASK_FOLDERS[self.split] / missing[0].parent.name / f"{missing[0].stem}_mask.png"
            raise FileNotFoundError(
                f"{len(missing)} defective image(s) of {self.category_dir} have no mask, e.g. {missing[0]}; "
                f"expected {expected}. Add the masks, or drop --require-masks ($VTFUSION_REQUIRE_MASKS) "
                "to evaluate image-level metrics only."
            )
        return records

    def _find_mask(self, defect: str, stem: str) -> Path | None:
        gt = self.category_dir / MASK_FOLDERS[self.split] / defect
        for name in (f"{stem}_mask.png", f"{stem}.png"):
            if (gt / name).is_file():
                return gt / name
        return None


def default_visa_split_csv(root: Path) -> Path:
    """``<root>/split_csv/1cls.csv`` (where the download puts it), else the copy in ../shared."""
    local = root / "split_csv" / "1cls.csv"
    if local.is_file():
        return local
    shared = paths.shared_datasets_dir() / "visa_split" / "1cls.csv"
    return shared if shared.is_file() else local


class VisADataset(AnomalyDataset):
    """A VisA category in its released layout, split by the official one-class CSV.

    The CSV (columns ``object, split, label, image, mask``; paths relative to the
    root) decides which images are train/test. VisA has no per-defect folders, so
    the defect type of an anomalous image is ``anomaly``.
    """

    def __init__(self, root: str | Path, category: str, split: str = "test", image_size: int | None = 240,
                 split_csv: str | Path | None = None, dataset_name: str = "visa"):
        _check_split(split)
        if split == "val":
            raise ValueError("VisA has no validation split (only train/test in the official 1cls.csv); "
                             "choose settings on the toy dataset's val split")
        self.root = Path(root)
        self.category, self.split, self.image_size = category, split, image_size
        self.dataset_name, self.mask_threshold = dataset_name, LABEL_MASK_THRESHOLD
        if category not in categories("visa"):
            raise ValueError(f"unknown VisA category {category!r}; valid categories: {', '.join(categories('visa'))}")
        if not self.root.is_dir():
            raise FileNotFoundError(_missing_root_message("visa", self.root))
        csv_path = Path(split_csv) if split_csv else default_visa_split_csv(self.root)
        if not csv_path.is_file():
            raise FileNotFoundError(f"VisA split file {csv_path} not found; `vtfusion data download visa "
                                    f"--root {self.root}` fetches it, or pass split_csv=")
        self.category_dir = self.root / category
        self.records = self.read_split(csv_path, self.root, category, split)

    @staticmethod
    def read_split(csv_path: Path, root: Path, category: str, split: str) -> list[Record]:
        """Records of ``category``/``split`` from the one-class split CSV."""
        records = []
        with open(csv_path, newline="") as fh:
            for row in csv.DictReader(fh):
                if row["object"] != category or row["split"] != split:
                    continue
                label = 1 if row["label"] == "anomaly" else 0
                mask = root / row["mask"] if row.get("mask") else None
                records.append(Record(root / row["image"], mask, label, "anomaly" if label else GOOD))
        return sorted(records, key=lambda r: r.image.as_posix())


def dataset_root(dataset: str, root: str | Path | None = None) -> Path:
    """The root folder used for ``dataset`` when none is given (its registered default)."""
    if root is not None:
        return Path(root)
    spec = get_dataset(dataset)
    if spec.default_root is None:
        raise ValueError(f"dataset {dataset!r} needs an explicit root (an MVTec-layout folder)")
    return spec.default_root()


def load_dataset(dataset: str, category: str, split: str = "test", root: str | Path | None = None,
                 image_size: int | None = 240) -> AnomalyDataset:
    """The one way to open a dataset split by name.

    ``dataset`` is any registered name (:func:`~vtfusion.data.registry.list_datasets`:
    ``toy``, ``mvtec``, ``visa``, ``real_ad``, ``folder``, ...); ``root`` defaults to the
    dataset's own (a ``folder`` needs one). The toy dataset is generated on first use.
    """
    _check_split(split)
    spec = get_dataset(dataset)
    if root is None and spec.prepare_root is not None:
        root = spec.prepare_root()
    if spec.categories is not None:
        category_info(dataset, category)  # raises for an unknown category, listing the valid ones
    opener = spec.opener or MVTecDataset
    return opener(dataset_root(dataset, root), category, split, image_size, dataset_name=dataset)


def folder_pools(root: str | Path, dataset_name: str) -> dict[str, list[str]]:
    """Training pools read from an MVTec-layout folder (every category folder with ``train/good``)."""
    root = Path(root)
    return {p.name: MVTecDataset(root, p.name, "train", None, dataset_name).train_pool()
            for p in sorted(root.iterdir()) if (p / "train" / "good").is_dir()}


def summarize(dataset: str, root: str | Path | None = None,
              category_names: tuple[str, ...] | None = None) -> list[tuple]:
    """One row per category: ``(category, train good, test good, test defective, defect types)``."""
    rows = []
    for category in category_names or categories(dataset):
        train = load_dataset(dataset, category, "train", root, image_size=None)
        test = load_dataset(dataset, category, "test", root, image_size=None)
        n_bad = sum(test.labels)
        rows.append((category, len(train), len(test) - n_bad, n_bad, ", ".join(test.defect_types)))
    return rows


SUMMARY_HEADERS = ("category", "train good", "test good", "test defective", "defect types")
