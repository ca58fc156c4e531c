"""Multi-level fine-grained captions of normal images (FineGrainedAD's MFSC, written by hand here).

FineGrainedAD (Fan et al., "Towards Fine-Grained Vision-Language Alignment for Few-Shot
Anomaly Detection") describes every category at three levels and builds its prompts from
those descriptions (its Multi-Level Fine-Grained Semantic Caption, MFSC). The paper
builds the captions **automatically, with a multimodal large language model**. This
project's captions are **hand-written for the project** (our own words, from the
category names, the toy generator's description and a look at normal training images),
one reviewed JSON file per dataset in ``vtfusion/resources/captions/``:

* level 1, **object**: the object phrase (``object``), its ``background`` (``null`` for a
  texture filling the whole image) and an image-level ``caption`` containing the object
  phrase;
* level 2, **component**: ``components``, each a ``name`` and a ``caption`` containing it;
* level 3, **region**: each component's ``color``, ``texture`` and ``shape`` words, the
  vocabulary of its token-level (region) prompt.

``defects`` lists abnormal state phrases with one ``{}`` (the replacement mechanism puts
an object, component or background phrase into it). :func:`validate_captions` is the
schema; ``tests/test_finegrainedad.py`` checks every file against it and against the
dataset registry's categories.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtfusion.paths import resources_dir

CAPTION_FORMAT = "vtfusion-captions/1"
#: the caption file of each dataset (``vtfusion/resources/captions/<name>.json``)
CAPTION_DATASETS = ("mvtec", "visa", "toy", "real_ad")
ATTRIBUTES = ("color", "texture", "shape")


@dataclass(frozen=True)
class Component:
    """One level-2 part of a category and its level-3 words."""

    name: str
    caption: str
    color: tuple[str, ...]
    texture: tuple[str, ...]
    shape: tuple[str, ...]

    def region_phrase(self) -> str:
        """The level-3 (region) description: ``"<color> <texture> <shape> <name>"`` with the
        first word of each attribute, e.g. ``"brown glossy ring rim"``."""
        return " ".join([self.color[0], self.texture[0], self.shape[0], self.name])


@dataclass(frozen=True)
class CategoryCaptions:
    """The three levels of one category's normal appearance, and its defect states."""

    dataset: str
    category: str
    object: str
    background: str | None
    caption: str
    components: tuple[Component, ...]
    defects: tuple[str, ...]

    @property
    def background_phrase(self) -> str | None:
        """``"<background> background"`` (None for a texture without background)."""
        return None if self.background is None else f"{self.background} background"

    def describe(self) -> str:
        """The three levels as indented text."""
        lines = [f"level 1, object:    {self.caption}  (object phrase: '{self.object}')",
                 f"          background: {self.background_phrase or 'none (a texture fills the image)'}"]
        for c in self.components:
            lines.append(f"level 2, component '{c.name}': {c.caption}")
            lines.append(f"level 3, region:    colour {', '.join(c.color)}; texture {', '.join(c.texture)}; "
                         f"shape {', '.join(c.shape)}")
        lines.append(f"defect states: {'; '.join(self.defects)}")
        return "\n".join(lines)


def captions_dir() -> Path:
    """``vtfusion/resources/captions`` (package data)."""
    return resources_dir() / "captions"


def caption_file(dataset: str) -> Path:
    """The caption file of a dataset; ``ValueError`` naming the known ones otherwise."""
    if dataset not in CAPTION_DATASETS:
        raise ValueError(f"no captions for dataset {dataset!r}: FineGrainedAD's captions exist for "
                         f"{', '.join(CAPTION_DATASETS)} (add vtfusion/resources/captions/{dataset}.json)")
    return captions_dir() / f"{dataset}.json"


def validate_captions(data: Any) -> list[str]:
    """Every schema error of a parsed caption file (empty list: valid).

    The schema: ``format`` == :data:`CAPTION_FORMAT`, ``dataset``, ``written_by`` (how the
    captions were made), ``categories`` mapping each category to ``object``, ``background``
    (a word or null), ``caption`` (containing ``object``), 1-6 ``components`` (``name``,
    ``caption`` containing the name, non-empty ``color``/``texture``/``shape`` word lists)
    and 1+ ``defects`` each with exactly one ``{}``.
    """
    errors: list[str] = []
    if not isinstance(data, dict):
        return ["the file must hold a JSON object"]
    if data.get("format") != CAPTION_FORMAT:
        errors.append(f"format must be {CAPTION_FORMAT!r}")
    for key in ("dataset", "written_by"):
        if not isinstance(data.get(key), str) or not data.get(key):
            errors.append(f"{key} must be a non-empty string")
    cats = data.get("categories")
    if not isinstance(cats, dict) or not cats:
        return errors + ["categories must be a non-empty object"]
    for name, entry in cats.items():
        errors.extend(f"{name}: {e}" for e in _category_errors(entry))
    return errors


def _words(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and value == value.strip()


def _category_errors(entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return ["must be an object"]
    out = [f"{k} must be a non-empty string" for k in ("object", "caption") if not _words(entry.get(k))]
    if not out and entry["object"] not in entry["caption"]:
        out.append("caption must contain the object phrase (the replacement mechanism swaps it)")
    if entry.get("background") is not None and not _words(entry.get("background")):
        out.append("background must be a word or null")
    comps = entry.get("components")
    if not isinstance(comps, list) or not 1 <= len(comps) <= 6:
        out.append("components must be a list of 1 to 6 parts")
        comps = []
    for i, comp in enumerate(comps):
        if not isinstance(comp, dict) or not _words(comp.get("name")) or not _words(comp.get("caption")):
            out.append(f"component {i} needs a name and a caption")
            continue
        if comp["name"] not in comp["caption"]:
            out.append(f"component {comp['name']!r}: its caption must contain its name")
        for attr in ATTRIBUTES:
            words = comp.get(attr)
            if not isinstance(words, list) or not words or not all(_words(w) for w in words):
                out.append(f"component {comp['name']!r}: {attr} must be a non-empty list of words")
    defects = entry.get("defects")
    if not isinstance(defects, list) or not defects:
        out.append("defects must be a non-empty list")
    elif any(not isinstance(d, str) or d.count("{}") != 1 for d in defects):
        out.append("every defect state needs exactly one {} (where the phrase goes)")
    return out


@functools.lru_cache(maxsize=None)
def _load_file(dataset: str) -> dict:
    path = caption_file(dataset)
    data = json.loads(path.read_text(encoding="utf-8"))
    errors = validate_captions(data)
    if errors:
        raise ValueError(f"{path}: invalid captions: {'; '.join(errors[:5])}")
    return data


def load_captions(dataset: str, category: str) -> CategoryCaptions:
    """The validated captions of one category (``ValueError`` naming the file when absent)."""
    data = _load_file(dataset)
    entry = data["categories"].get(category)
    if entry is None:
        raise ValueError(f"{caption_file(dataset)} has no captions for category {category!r}; "
                         f"it has {', '.join(data['categories'])}")
    comps = tuple(Component(c["name"], c["caption"], *(tuple(c[a]) for a in ATTRIBUTES))
                  for c in entry["components"])
    return CategoryCaptions(dataset, category, entry["object"], entry.get("background"), entry["caption"],
                            comps, tuple(entry["defects"]))


def caption_categories(dataset: str) -> tuple[str, ...]:
    """The categories a dataset's caption file describes."""
    return tuple(_load_file(dataset)["categories"])


__all__ = ["ATTRIBUTES", "CAPTION_DATASETS", "CAPTION_FORMAT", "CategoryCaptions", "Component", "caption_categories",
           "caption_file", "captions_dir", "load_captions", "validate_captions"]
