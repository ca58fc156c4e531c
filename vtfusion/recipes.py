"""Training recipes: the paper read literally, and the project's recipe chosen on validation.

The config dataclasses default to the paper's reading of every option (faithful first).
A *recipe* is a named set of overrides of those defaults, as dotted paths into an
:class:`~vtfusion.config.ExperimentConfig`:

``paper``
    the literal reading: Eq. 1's mean prototypes, the shots themselves as the normal
    batch, Eq. 4's margin ``(r + alpha)^2``, the MPF's segmentation network alone.
``project``
    the options chosen by a greedy forward selection on the toy dataset's validation
    split (``bench/recipe_selection.py``; its committed record is
    ``vtfusion/resources/recipe_selection.json``, which the recipe chapter prints):
    every shot patch as a prototype (``PrototypeConfig.bank="memory"``) instead of
    Eq. 1's per-location mean; ``M^f`` averaged with the squashed nearest-neighbour map
    of the frozen backbone tokens (``ModelConfig.final_map="mpf_knn"``); and Eq. 4's
    margin set relative to the normal distances and averaged over the 3 nearest
    prototypes (``PrototypeConfig.afs_margin="relative"``, ``afs_neighbours=3``, as
    PCSNet). Each departure from the paper is a switch of the config, documented where
    it is defined.

The profiles use ``project`` (:func:`vtfusion.config.get_profile`), and every run can be
redone with ``paper`` (``--recipe paper`` on the command line). This module imports no
other part of the package, so that :mod:`vtfusion.config` can use it.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from typing import Any

RECIPES = ("paper", "project")
SELECTION_RESOURCE = "recipe_selection.json"

#: The project's departures from the paper's defaults, ``{dotted.path: value}``; chosen on
#: the toy validation split by ``bench/recipe_selection.py`` (see :func:`recipe_selection`).
PROJECT_OVERRIDES: dict[str, Any] = {
    "model.prototypes.bank": "memory",  # every shot patch, not Eq. 1's per-location mean
    "model.final_map": "mpf_knn",       # M^f averaged with the squashed raw-token kNN map
    "model.prototypes.afs_margin": "relative",  # Eq. 4's margin from the normal distances
    "model.prototypes.afs_neighbours": 3,       # ... over the 3 nearest prototypes
    "train.calibration": "augmented_single",    # k = 1: the late mean's statistics from augmented copies
    "model.image_score": "smoothed_max",        # image score: max of M^f after a Gaussian (sigma 4)
}


def set_path(cfg: Any, path: str, value: Any) -> Any:
    """Copy of a (nested) config dataclass with the field at a dotted ``path`` replaced."""
    head, _, rest = path.partition(".")
    if not rest:
        if head not in {f.name for f in dataclasses.fields(cfg)}:
            raise ValueError(f"{type(cfg).__name__} has no field {head!r} (from {path!r})")
        return dataclasses.replace(cfg, **{head: value})
    child = getattr(cfg, head, None)
    if child is None or not dataclasses.is_dataclass(child):
        raise ValueError(f"{type(cfg).__name__} has no section {head!r} (from {path!r})")
    return dataclasses.replace(cfg, **{head: set_path(child, rest, value)})


def get_path(cfg: Any, path: str) -> Any:
    """The value at a dotted ``path`` of a (nested) config dataclass."""
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def with_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """``cfg`` with every dotted-path override applied (a dict value rebuilds a flat sub-config)."""
    for path, value in overrides.items():
        current = get_path(cfg, path)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = type(current)(**value)
        elif isinstance(value, list):
            value = tuple(value)
        cfg = set_path(cfg, path, value)
    return cfg


def recipe_overrides(recipe: str, config_type: type) -> dict[str, Any]:
    """The dotted-path overrides that give a recipe from any config of ``config_type``.

    ``paper`` sets every path the project changes back to its default (the paper's
    reading), read from a default ``config_type()``.
    """
    if recipe == "project":
        return dict(PROJECT_OVERRIDES)
    if recipe == "paper":
        defaults = config_type()
        return {path: get_path(defaults, path) for path in PROJECT_OVERRIDES}
    raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)} (option --recipe)")


def apply_recipe(cfg: Any, recipe: str) -> Any:
    """``cfg`` with a named recipe's options (``paper`` or ``project``); everything else kept."""
    return with_overrides(cfg, recipe_overrides(recipe, type(cfg)))


def recipe_of(cfg: Any) -> str:
    """``project`` or ``paper`` when ``cfg`` holds that recipe's options, else ``custom``.

    While the project recipe changes nothing, every config reads as ``project``.
    """
    for recipe in ("project", "paper"):
        if all(get_path(cfg, p) == (tuple(v) if isinstance(v, list) else v)
               for p, v in recipe_overrides(recipe, type(cfg)).items()):
            return recipe
    return "custom"


def recipe_selection() -> dict:
    """The committed record of the validation study that chose the ``project`` recipe."""
    text = resources.files("vtfusion").joinpath("resources", SELECTION_RESOURCE).read_text()
    return json.loads(text)
