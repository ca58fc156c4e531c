"""The pocket CLIP's architecture and its released weights.

:data:`POCKET_CLIP_CONFIG` is an open_clip ``CLIP``: a ViT with patch 16 at 240 px (the
same 15 x 15 grid as the paper's ViT-B-16-plus-240, so nothing downstream changes),
width 128, 6 blocks, the image embedding the **average of the patch tokens** after
``ln_post`` and ``proj`` (``pool_type="avg"``), so that every patch token lives in the
joint image-text space, which is how VTFusion's text branch reads them; a 3-block text
tower of width 128 with open_clip's tokenizer and a 32-token context.

Released weights (:data:`RELEASES`) are package data: ``weights/<name>.safetensors`` in
fp16 with ``weights/<name>.json``, the model card, which records their SHA-256.
:func:`load_released` checks it before loading.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

#: open_clip ``CLIP`` keyword arguments of the pocket CLIP.
POCKET_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 240, "patch_size": 16, "width": 128, "layers": 6, "head_width": 32,
                   "pool_type": "avg", "final_ln_after_pool": False},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 3},
}
CONTEXT_LENGTH: int = POCKET_CLIP_CONFIG["text_cfg"]["context_length"]
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Released weights, by the name ``BackboneConfig.weights`` uses.
RELEASES: dict[str, str] = {"pocket-v1": "pocket_clip_v1", "pocket-v2": "pocket_clip_v2"}
#: How VTFusion reads each release, chosen on the toy validation split by
#: ``bench/choose_layers.py``: the blocks whose tokens it takes, and the text branch's
#: prompt preset and softmax temperature (:class:`vtfusion.model.ate.ATEConfig`). pocket-v2
#: learnt a temperature of 13.6 on "a photo of a {flawless, damaged} <noun>.", and only its
#: last blocks were trained to meet the text, so CLIP's 100, April-GAN's prompt ensemble and
#: early blocks all blunt its text map. :func:`vtfusion.config.with_pocket_backbone` applies it.
READING: dict[str, dict[str, Any]] = {
    "pocket-v1": {"layers": (1, 2, 3, 4), "prompts": "ensemble", "logit_scale": 100.0},
    "pocket-v2": {"layers": (6,), "prompts": "paper", "logit_scale": 14.0},
}
DESCRIPTION = "pocket CLIP, pre-trained by this project on generated images (not the paper's CLIP)"


class PocketWeightsError(RuntimeError):
    """Released pocket-CLIP weights are missing, or do not match their model card."""


def build_pocket_clip(seed: int = 0):
    """A freshly initialised open_clip ``CLIP`` of :data:`POCKET_CLIP_CONFIG` (global RNG untouched)."""
    import open_clip  # local: open_clip is slow to import; only when a model is built

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.CLIP(**POCKET_CLIP_CONFIG)


def pocket_tokenizer():
    """open_clip's BPE tokenizer with the pocket CLIP's context length."""
    import open_clip  # local: open_clip is slow to import; only when a model is built

    return open_clip.SimpleTokenizer(context_length=CONTEXT_LENGTH)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def release_paths(name: str) -> tuple[Path, Path]:
    """``(weights, model card)`` of a released name such as ``pocket-v1``."""
    if name not in RELEASES:
        raise PocketWeightsError(f"unknown pocket CLIP weights {name!r}; released: {', '.join(RELEASES)}")
    stem = WEIGHTS_DIR / RELEASES[name]
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def model_card(name: str = "pocket-v1") -> dict:
    """The model card (JSON) of released weights."""
    _, card = release_paths(name)
    if not card.is_file():
        raise PocketWeightsError(f"the model card {card} is missing; reinstall vtfusion or run "
                                 "`vtfusion pocket release` from a pre-training run")
    return json.loads(card.read_text())


def load_released(name: str = "pocket-v1", dtype: torch.dtype = torch.float32):
    """The released pocket CLIP (open_clip ``CLIP``, eval mode) after checking its SHA-256."""
    weights, _ = release_paths(name)
    card = model_card(name)
    if not weights.is_file():
        raise PocketWeightsError(f"the pocket CLIP weights {weights} are missing; reinstall vtfusion")
    actual = sha256_of(weights)
    if actual != card["sha256"]:
        raise PocketWeightsError(f"{weights} has SHA-256 {actual[:16]}..., but its model card says "
                                 f"{card['sha256'][:16]}...: the file is corrupt or was replaced; reinstall vtfusion")
    model = build_pocket_clip()
    state = {k: v.to(dtype) for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state)
    return model.eval()
