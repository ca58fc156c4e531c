"""Text prompts for the two states, normal and abnormal (paper Sec. III-C; DESIGN §4).

The paper's prompts are "a photo of a normal [o]" and "a photo of a damaged [o]", ``[o]``
being the object word of the category (one table for every dataset:
:mod:`vtfusion.data.categories`). Following April-GAN (the paper's ref. [10]), this
project extends them with an ensemble **[choice]**: every *state* phrase of a class is
put into every *template*; their CLIP embeddings are L2-normalised, averaged and
renormalised into one embedding per class (:meth:`vtfusion.model.ate.AdaptiveTextEncoder.class_embeddings`).

Presets (``PromptConfig.preset``):

``ensemble`` (default)
    April-GAN's 7 normal and 5 abnormal state phrases plus the paper's own ``normal {}``
    state (``damaged {}`` is already in April-GAN's list), times April-GAN's 35 templates:
    8 x 35 = 280 normal and 5 x 35 = 175 abnormal prompts.
``paper``
    exactly the paper's two sentences, one per class.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtfusion.data.categories import category_info

# April-GAN (Chen et al., 2023, "APRIL-GAN", VAND challenge) state phrases and templates.
NORMAL_STATES: tuple[str, ...] = (
    "{}", "flawless {}", "perfect {}", "unblemished {}",
    "{} without flaw", "{} without defect", "{} without damage",
)
ABNORMAL_STATES: tuple[str, ...] = (
    "damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage",
)
TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.",
    "a photo of my {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a photo of one {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "a low resolution photo of a {}.", "a photo of a large {}.",
    "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a photo of the small {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "a dark photo of a {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene.",
)
# The paper's own wording (Sec. III-C).
PAPER_NORMAL_STATE = "normal {}"
PAPER_ABNORMAL_STATE = "damaged {}"
PAPER_TEMPLATE = "a photo of a {}"

PRESETS = ("ensemble", "paper")
CLASSES = ("normal", "abnormal")  # the order of the rows of F^t: index 1 is "abnormal"


@dataclass(frozen=True)
class PromptConfig:
    """Which prompts describe the normal and abnormal class (DESIGN §4).

    Attributes:
        preset: **[choice]** ``ensemble``: the paper's prompts extended with April-GAN's
            state phrases and 35 templates (default); ``paper``: only "a photo of a normal
            [o]" / "a photo of a damaged [o]".
    """

    preset: str = "ensemble"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"PromptConfig.preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")

    def states(self) -> dict[str, tuple[str, ...]]:
        """State phrases per class (each with one ``{}`` for the object word)."""
        if self.preset == "paper":
            return {"normal": (PAPER_NORMAL_STATE,), "abnormal": (PAPER_ABNORMAL_STATE,)}
        return {"normal": NORMAL_STATES + (PAPER_NORMAL_STATE,), "abnormal": ABNORMAL_STATES}

    def templates(self) -> tuple[str, ...]:
        return (PAPER_TEMPLATE,) if self.preset == "paper" else TEMPLATES


def build_prompts(object_name: str, cfg: PromptConfig = PromptConfig()) -> dict[str, list[str]]:
    """Every prompt of each class for one object word: ``{"normal": [...], "abnormal": [...]}``.

    >>> build_prompts("bottle", PromptConfig("paper"))
    {'normal': ['a photo of a normal bottle'], 'abnormal': ['a photo of a damaged bottle']}
    """
    if not object_name or not object_name.strip():
        raise ValueError("object_name must be a non-empty word, e.g. 'bottle' (see vtfusion.data.categories)")
    states = cfg.states()
    return {cls: [t.format(s.format(object_name)) for s in states[cls] for t in cfg.templates()]
            for cls in CLASSES}


def object_name_for(dataset: str, category: str) -> str:
    """The prompt word ``[o]`` of a category (e.g. ``metal_nut`` -> ``metal nut``)."""
    return category_info(dataset, category).object_name
