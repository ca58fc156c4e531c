"""k-shot lists as data: which normal images a k-shot run may train on.

A shot list is ``<base>/<key>/<category>/k<k>_seed<s>.json``. The lists of the named
datasets (MVTec AD, VisA, toy, real samples; ``<key>`` is the dataset name) are generated
once by ``vtfusion data shots``, committed as package data under
``vtfusion/resources/shots/`` and read by every method so that all methods see the same
images. A user's own MVTec-layout folder (``folder``) is user data: its lists live under
``$VTFUSION_DATA_DIR/shots/folder-<hash of the resolved root>/``, so two folders with a
category of the same name never share a list.

Rule: for each (dataset, category, seed) the sorted pool of normal training images
is shuffled by a generator seeded from a SHA-256 of ``dataset/category/seed``; the
k-shot list is the first k images of that permutation. Lists are therefore nested
(the 2-shot images are among the 4-shot ones of the same seed), which keeps the
comparison across k free of extra sampling noise, and never repeat an image.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from vtfusion import paths
from vtfusion.data.registry import committed_shot_lists, get_dataset, storage_name
from vtfusion.io import atomic_write_text

SHOT_KS = (1, 2, 4, 8)
SHOT_SEEDS = (0, 1, 2)
RULE = "sha256(dataset/category/seed)->numpy PCG64 permutation of the sorted pool; first k (nested)"


@dataclass(frozen=True)
class ShotList:
    """The k normal images of one (dataset, category, k, seed) cell."""

    dataset: str
    category: str
    k: int
    seed: int
    files: tuple[str, ...]  # relative to the category folder, e.g. "train/good/007.png"
    pool_size: int
    rule: str = RULE

    def to_json(self) -> str:
        d = asdict(self)
        d["files"] = list(self.files)
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_file(cls, path: str | Path) -> "ShotList":
        d = json.loads(Path(path).read_text())
        d["files"] = tuple(d["files"])
        return cls(**d)


def _stable_seed(dataset: str, category: str, seed: int) -> int:
    digest = hashlib.sha256(f"{dataset}/{category}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_shot_list(dataset: str, category: str, pool: Sequence[str], k: int, seed: int) -> ShotList:
    """Draw the k-shot list of ``seed`` from ``pool`` (the category's normal training images)."""
    unique = sorted(set(pool))
    if len(unique) != len(pool):
        raise ValueError(f"{dataset}/{category}: the training pool lists an image twice")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > len(unique):
        raise ValueError(
            f"{dataset}/{category}: k={k} shots requested but only {len(unique)} normal training "
            f"images exist; choose k <= {len(unique)}"
        )
    order = np.random.default_rng(_stable_seed(dataset, category, seed)).permutation(len(unique))
    files = tuple(unique[i] for i in order[:k])
    return ShotList(dataset, category, k, seed, files, len(unique))


def shots_base(dataset: str, stored_as: str | None = None) -> Path:
    """Committed lists of the named datasets are package data; a user folder's lists, and those
    of a toy root drawn with another train split (``stored_as``, its
    :func:`~vtfusion.data.registry.storage_name`, is not the dataset's name), are user data."""
    committed = committed_shot_lists(dataset) and (stored_as or dataset) == dataset
    return paths.committed_shots_dir() if committed else paths.shots_dir()


def shot_path(dataset: str, category: str, k: int, seed: int, base: str | Path | None = None,
              root: str | Path | None = None) -> Path:
    """``<base>/<storage name>/<category>/k<k>_seed<s>.json`` (``root``: needed for a ``folder`` dataset;
    :func:`~vtfusion.data.registry.storage_name`)."""
    stored_as = storage_name(dataset, root, "train")
    return Path(base or shots_base(dataset, stored_as)) / stored_as / category / f"k{k}_seed{seed}.json"


def save_shot_list(shot_list: ShotList, base: str | Path | None = None, root: str | Path | None = None) -> Path:
    path = shot_path(shot_list.dataset, shot_list.category, shot_list.k, shot_list.seed, base, root)
    atomic_write_text(path, shot_list.to_json())
    return path


def load_shots(dataset: str, category: str, k: int, seed: int, base: str | Path | None = None,
               root: str | Path | None = None) -> ShotList:
    """Read a committed shot list; the error says how to generate a missing one."""
    path = shot_path(dataset, category, k, seed, base, root)
    if not path.is_file():
        raise FileNotFoundError(
            f"no shot list {path}; generate it with `vtfusion data shots --dataset {dataset}` "
            f"(k in {SHOT_KS}, seeds {SHOT_SEEDS} are committed for the known datasets)"
        )
    return ShotList.from_file(path)


class ShotSource(Protocol):
    """What a shot list needs of a dataset split (an :class:`~vtfusion.data.datasets.AnomalyDataset`)."""

    dataset_name: str
    category: str
    split: str
    category_dir: Path

    def train_pool(self) -> list[str]: ...

    def with_split(self, split: str) -> "ShotSource": ...


def shot_list_for(ds: ShotSource, k: int, seed: int, base: str | Path | None = None) -> ShotList:
    """The shot list a dataset split uses: the committed one, else drawn from the folder.

    A committed list is checked against the folder (every file must exist).
    """
    path = shot_path(ds.dataset_name, ds.category, k, seed, base, getattr(ds, "root", None))
    if path.is_file():
        shot_list = ShotList.from_file(path)
        validate_shot_list(shot_list, ds.category_dir)
        return shot_list
    pool = (ds if ds.split == "train" else ds.with_split("train")).train_pool()
    return make_shot_list(ds.dataset_name, ds.category, pool, k, seed)


def validate_shot_list(shot_list: ShotList, category_dir: str | Path) -> None:
    """Raise if a listed image is missing from a real category folder."""
    missing = [f for f in shot_list.files if not (Path(category_dir) / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"shot list {shot_list.dataset}/{shot_list.category} k={shot_list.k} seed={shot_list.seed} "
            f"names {missing[0]} (and {len(missing) - 1} more) not found under {category_dir}; "
            "is this the right dataset root?"
        )


# --- training pools without the archives -------------------------------------------------

def mvtec_pools(layout_json: str | Path | None = None) -> dict[str, list[str]]:
    """MVTec AD train/good pools from the layout facts (counts; files 000.png ...)."""
    path = Path(layout_json or paths.shared_datasets_dir() / "mvtec_ad_layout.json")
    if not path.is_file():
        raise FileNotFoundError(f"MVTec AD layout file {path} not found (it lives in ../shared/datasets)")
    counts = json.loads(path.read_text())["train_good"]
    return {cat: [f"train/good/{i:03d}.png" for i in range(n)] for cat, n in counts.items()}


def visa_pools(split_csv: str | Path | None = None) -> dict[str, list[str]]:
    """VisA normal training pools from the official one-class split CSV."""
    path = Path(split_csv or paths.shared_datasets_dir() / "visa_split" / "1cls.csv")
    if not path.is_file():
        raise FileNotFoundError(f"VisA split file {path} not found (../shared/datasets/visa_split/1cls.csv)")
    pools: dict[str, list[str]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "train" and row["label"] == "normal":
                prefix = row["object"] + "/"
                image = row["image"]
                pools.setdefault(row["object"], []).append(image[len(prefix):] if image.startswith(prefix) else image)
    return pools


def toy_pools(root: str | Path | None = None) -> dict[str, list[str]]:
    """Toy pools from the generator's default config (no need to render the images)."""
    from vtfusion.data.toy import ToyConfig  # local: the generator (scipy, 1,900 lines) only for its sizes

    cfg = ToyConfig()
    return {cat: [f"train/good/{i:03d}.png" for i in range(cfg.n_train)] for cat in cfg.categories}


def pools_for(dataset: str, root: str | Path | None = None) -> dict[str, list[str]]:
    """Every category's pool of normal training images, from the dataset's registered
    ``training_pools`` (:class:`~vtfusion.data.registry.DatasetSpec`)."""
    spec = get_dataset(dataset)
    if spec.training_pools is None:
        raise ValueError(f"dataset {dataset!r} registers no training pools; shot lists are drawn from "
                         "its folder when a split is opened")
    return spec.training_pools(None if root is None else Path(root))


def generate_shot_lists(dataset: str, root: str | Path | None = None, ks: Iterable[int] = SHOT_KS,
                        seeds: Iterable[int] = SHOT_SEEDS, base: str | Path | None = None,
                        validate_root: str | Path | None = None) -> list[Path]:
    """Write every (category, k, seed) shot list of ``dataset``; returns the paths written.

    ``validate_root``: a real extracted copy of the dataset to check the lists against.
    k larger than a category's pool is skipped for that category with no file written.
    """
    written = []
    for category, pool in pools_for(dataset, root).items():
        for k in ks:
            if k > len(pool):
                continue
            for seed in seeds:
                shot_list = make_shot_list(dataset, category, pool, k, seed)
                if validate_root is not None:
                    validate_shot_list(shot_list, Path(validate_root) / category)
                written.append(save_shot_list(shot_list, base, root))
    return written
