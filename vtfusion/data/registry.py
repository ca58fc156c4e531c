"""The datasets the package opens by name, and the facts about their categories.

A dataset is a :class:`DatasetSpec` registered under its name: its category table (names,
texture or object, the prompt word), where its data lives by default, how a split is
opened, how its shot lists are drawn. Everything that takes a dataset name (the loader,
shot lists, DAS placement, prompts, the command line) reads it from here, so a new
dataset is one new file that calls :func:`register_dataset` (imported by
:mod:`vtfusion.data`, or by the user's own code before use). The built-in ones are in
:mod:`vtfusion.data.builtin`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from vtfusion.registry import Registry


@dataclass(frozen=True)
class CategoryInfo:
    """Facts about one category.

    Attributes:
        name: folder name of the category.
        texture: True for texture categories (a defect may appear anywhere),
            False for objects (synthetic anomalies go on the foreground).
        object_name: the noun inserted into the text prompts ("a photo of a normal [o]").
    """

    name: str
    texture: bool
    object_name: str


#: ``(root, category, split, image_size, dataset_name) -> AnomalyDataset``
Opener = Callable[..., Any]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset that can be opened by name.

    Attributes:
        name: the registered name (``--dataset NAME``; also the folder of its runs,
            results and committed shot lists).
        description: one line for ``vtfusion list datasets``.
        categories: the category table in the paper's order; ``None`` for a folder whose
            categories are whatever it holds (then each is an object named after its folder).
        default_root: where the data lives when no root is given; ``None``: a root is required.
        prepare_root: makes the data on first use and returns its root (the generated toy
            data); called instead of ``default_root`` when no root is given.
        opener: opens one split, ``opener(root, category, split, image_size, dataset_name)``;
            ``None``: :class:`~vtfusion.data.datasets.MVTecDataset` (MVTec layout).
        root_hint: how to get the data when its root is missing (``{root}`` is replaced).
        training_pools: ``training_pools(root)`` -> ``{category: [normal training images,
            relative to the category folder]}`` for ``vtfusion data shots``.
        committed_shots: its shot lists ship with the package (``vtfusion/resources/shots/<name>``);
            otherwise they are drawn per root under ``$VTFUSION_DATA_DIR/shots``.
        keyed_by_root: runs, results and shot lists are kept per root (``<name>-<8 hex of the
            root>``), so two folders with a category of the same name never share them.
        split_variant: ``split_variant(root, split)`` -> ``None`` when ``split`` at ``root``
            holds the same images as at the default root, else a short tag that keys its
            runs, results and shot lists apart (``<name>-<tag>``): the generated toy data
            drawn with other counts. ``None``: the data is the same wherever it lives.
        paper_tables: the paper reports numbers on it (``vtfusion reproduce`` compares with them).
    """

    name: str
    description: str
    categories: Mapping[str, CategoryInfo] | None = None
    default_root: Callable[[], Path] | None = None
    prepare_root: Callable[[], Path] | None = None
    opener: Opener | None = None
    root_hint: str = "point --root at a folder in MVTec layout (root/<category>/train/good/...)"
    training_pools: Callable[[Path | None], dict[str, list[str]]] | None = None
    committed_shots: bool = False
    keyed_by_root: bool = False
    split_variant: Callable[[Path, str | None], str | None] | None = None
    paper_tables: bool = False


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec, replace: bool = False) -> DatasetSpec:
    """Make ``spec`` available under ``spec.name`` to every function that takes a dataset name."""
    return DATASETS.register(spec.name, spec, replace=replace)


def list_datasets() -> tuple[str, ...]:
    """Names of the registered datasets, in registration order."""
    return DATASETS.names()


def get_dataset(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered as ``name`` (``ValueError`` naming the known ones)."""
    return DATASETS.get(name)


def categories(dataset: str) -> tuple[str, ...]:
    """Category names of a dataset with a category table, in the canonical (paper table) order."""
    spec = get_dataset(dataset)
    if spec.categories is None:
        raise ValueError(f"dataset {dataset!r} has no fixed list of categories; name the category folders "
                         "to use (--categories)")
    return tuple(spec.categories)


def category_info(dataset: str, category: str) -> CategoryInfo:
    """Facts about ``category`` of ``dataset``.

    For a dataset without a category table (``folder``) or an unregistered name, the
    category is treated as an object whose prompt word is its folder name with ``_`` as
    spaces. Raises ``ValueError`` listing the valid names when a table lacks it.
    """
    table = get_dataset(dataset).categories if dataset in DATASETS else None
    if table is None:
        return CategoryInfo(category, False, category.replace("_", " "))
    if category not in table:
        raise ValueError(f"unknown category {category!r} for dataset {dataset!r}; "
                         f"valid categories: {', '.join(table)}")
    return table[category]


def committed_shot_lists(dataset: str) -> bool:
    """Whether ``dataset``'s shot lists are package data (False for an unregistered name)."""
    return dataset in DATASETS and get_dataset(dataset).committed_shots


def keyed_by_root(dataset: str) -> bool:
    """Whether ``dataset``'s runs, results and shot lists are kept per root (True for an unregistered name)."""
    return dataset not in DATASETS or get_dataset(dataset).keyed_by_root


def root_digest(root: str | Path) -> str:
    """8 hex digits of the resolved dataset root: what keys a user folder's runs, results and shots."""
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]


def storage_name(dataset: str, root: str | Path | None = None, split: str | None = None) -> str:
    """The folder name under which runs, results and shot lists of ``dataset`` are stored.

    Named datasets keep their name. A dataset kept per root (a custom ``folder``) gets
    ``<name>-<8 hex>`` from its absolute path, so two different folders with a category
    of the same name never share a trained model, a result file or a shot list. A named
    dataset with a :attr:`DatasetSpec.split_variant` gets ``<name>-<tag>`` where ``split``
    (the one read: ``train`` for runs and shot lists, the evaluated one for results;
    ``None``: every split) differs from its default root's: a toy root drawn with a larger
    validation split shares the trained models of ``data/toy`` but never its validation
    results.
    """
    if not keyed_by_root(dataset):
        variant = get_dataset(dataset).split_variant  # registered: an unregistered name is kept per root
        tag = None if root is None or variant is None else variant(Path(root), split)
        return dataset if tag is None else f"{dataset}-{tag}"
    if root is None:
        raise ValueError(f"dataset {dataset!r} is kept per root folder; pass root=<the MVTec-layout folder>")
    return f"{dataset}-{root_digest(root)}"


__all__ = ["CategoryInfo", "DATASETS", "DatasetSpec", "categories", "category_info", "committed_shot_lists",
           "get_dataset", "keyed_by_root", "list_datasets", "register_dataset", "root_digest", "storage_name"]
