"""Captions of pocket-world images, from a small grammar.

A caption names the object (with, sometimes, its colour and material), its state, and
for damaged images often the defects and where they are::

    a photo of a flawless red knit fabric.
    a close-up photo of the damaged steel bolt with a scratch at the top left.
    there is a gear with a hole and dust in the scene.

State words come in several synonyms for each class, and the templates include the
plain "a photo of a ..." forms web captions (and CLIP's prompt ensembles) use, so that
the prompts of the adaptive text encoder are in the language the model was trained on.
:func:`caption_statistics` summarises a set of captions (the pre-training chapter
prints it).
"""

from __future__ import annotations

from collections import Counter

import torch

NORMAL_WORDS: tuple[str, ...] = ("flawless", "perfect", "normal", "intact", "clean", "good", "unblemished",
                                 "pristine", "undamaged")
DAMAGED_WORDS: tuple[str, ...] = ("damaged", "defective", "broken", "flawed", "faulty", "imperfect")
NORMAL_PHRASES: tuple[str, ...] = ("{obj} without flaw", "{obj} without defect", "{obj} without damage",
                                   "{obj} in good condition")
DAMAGED_PHRASES: tuple[str, ...] = ("{obj} with flaw", "{obj} with defect", "{obj} with damage")
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bad photo of a {}.", "a good photo of the {}.", "a cropped photo of a {}.", "a bright photo of the {}.",
    "a dark photo of a {}.", "a blurry photo of the {}.", "a photo of one {}.", "there is a {} in the scene.",
    "this is the {} in the scene.", "an image of a {}.", "{}.",
)
DEFECT_WORDS: dict[str, tuple[str, ...]] = {
    "scratch": ("scratch", "scuff"), "crack": ("crack", "fracture"), "burn": ("burn mark", "scorch mark"),
    "smudge": ("smudge", "grease stain", "dirt mark"), "dust": ("dust", "specks of dust"),
    "discolouration": ("discolouration", "colour stain"), "bubble": ("bubble", "blister"),
    "dent": ("dent", "depression"), "tear": ("tear", "cut"), "hole": ("hole", "puncture"),
    "missing_piece": ("missing piece", "broken part"),
}
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")


def _pick(gen: torch.Generator, options):
    return options[int(torch.randint(len(options), (1,), generator=gen))]


def _chance(gen: torch.Generator, p: float) -> bool:
    return bool(torch.rand(1, generator=gen) < p)


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def location(mask: torch.Tensor) -> str:
    """Coarse place of a mask's centre of mass: "top left", "centre", "bottom", ..."""
    m = mask.float().squeeze()
    total = m.sum()
    if total == 0:
        return "centre"
    h, w = m.shape
    y = float((m.sum(1) * torch.arange(h)).sum() / total) / h
    x = float((m.sum(0) * torch.arange(w)).sum() / total) / w
    row, col = ROWS[min(2, int(y * 3))], COLUMNS[min(2, int(x * 3))]
    if row == "middle":
        return "centre" if col == "centre" else col
    return row if col == "centre" else f"{row} {col}"


def _with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def _defect_phrase(gen: torch.Generator, defects: list[str], masks: list[torch.Tensor]) -> str:
    words = [_pick(gen, DEFECT_WORDS[d]) for d in dict.fromkeys(defects)]
    if len(words) == 1:
        phrase = _with_article(words[0]) if words[0] not in ("dust", "specks of dust") else words[0]
        if masks and _chance(gen, 0.5):
            where = location(masks[0])
            phrase += " in the centre" if where == "centre" else f" at the {where}"
        return phrase
    parts = [w if w in ("dust", "specks of dust") else _with_article(w) for w in words]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(gen: torch.Generator, noun: str, colour: str = "", material: str = "", defects: list[str] | None = None,
            masks: list[torch.Tensor] | None = None, style: torch.Generator | None = None) -> str:
    """One caption of an image (deterministic for the generators' states).

    ``style``, when given, draws the template and whether colour and material are named,
    and ``gen`` only the state and defect words: copies of one scene captioned with
    equally seeded ``style`` generators differ only where their images differ.
    """
    defects = defects or []
    style = gen if style is None else style
    words = []
    if colour and _chance(style, 0.6):
        words.append(colour)
    if material and material not in noun and _chance(style, 0.4):
        words.append(material)
    obj = " ".join(words + [noun])
    damaged = bool(defects)
    if damaged:
        form = float(torch.rand(1, generator=gen))
        if form < 0.25:
            body = f"{_pick(gen, DAMAGED_WORDS)} {obj}"
        elif form < 0.4:
            body = _pick(gen, DAMAGED_PHRASES).format(obj=obj)
        elif form < 0.8:
            body = f"{obj} with {_defect_phrase(gen, defects, masks or [])}"
        else:
            body = f"{_pick(gen, DAMAGED_WORDS)} {obj} with {_defect_phrase(gen, defects, masks or [])}"
    else:
        form = float(torch.rand(1, generator=gen))
        if form < 0.55:
            body = f"{_pick(gen, NORMAL_WORDS)} {obj}"
        elif form < 0.8:
            body = _pick(gen, NORMAL_PHRASES).format(obj=obj)
        else:
            body = obj
    template = _pick(style, TEMPLATES)
    text = template.format(body)
    text = text.replace(" a a", " an a").replace(" a e", " an e").replace(" a i", " an i") \
        .replace(" a o", " an o").replace(" a u", " an u")
    return text[0].upper() + text[1:] if template == "{}." else text


def caption_statistics(captions: list[str]) -> dict:
    """Counts that describe a set of captions: size, vocabulary, lengths and state words."""
    tokens = [c.lower().rstrip(".").replace(",", "").split() for c in captions]
    vocab = Counter(w for t in tokens for w in t)
    lengths = [len(t) for t in tokens]
    normal = sum(any(w in NORMAL_WORDS for w in t) or " without " in c or "good condition" in c
                 for t, c in zip(tokens, captions))
    damaged = sum(any(w in DAMAGED_WORDS for w in t) or " with " in c.replace(" without ", " ")
                  for t, c in zip(tokens, captions))
    return {
        "captions": len(captions), "distinct_captions": len(set(captions)), "vocabulary": len(vocab),
        "mean_words": sum(lengths) / max(1, len(lengths)), "max_words": max(lengths, default=0),
        "with_normal_state_words": normal, "with_damage_words": damaged,
        "with_location": sum(" at the " in c or " in the centre" in c for c in captions),
        "most_common": vocab.most_common(12),
    }
