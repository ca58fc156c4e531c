"""Releasing pre-trained pocket-CLIP weights as package data, with a model card.

:func:`release` converts a finished run of :func:`vtfusion.pocket.pretrain.pretrain`
into ``vtfusion/pocket/weights/<stem>.safetensors`` (fp16) and the model card
``<stem>.json`` / ``<stem>.md``: the world, the recipe, steps, wall time and machine, the
validation curves, the zero-shot numbers, the file's SHA-256 and what the model does not
know. :func:`regression_check` recomputes the card's zero-shot numbers on its fixed
batch of held-out-family images (a test guards them).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from vtfusion import __version__
from vtfusion.io import atomic_write, atomic_write_json, atomic_write_text
from vtfusion.pocket.captions import caption_statistics
from vtfusion.pocket.model import (DESCRIPTION, POCKET_CLIP_CONFIG, build_pocket_clip, load_released,
                                   pocket_tokenizer, release_paths, sha256_of)
from vtfusion.pocket.pretrain import zero_shot
from vtfusion.pocket.world import DEFECTS, FAMILIES, HELD_OUT_FAMILIES, TRAIN_FAMILIES, sample_batch

GUARD_STREAM, GUARD_BATCH = 20_000_003, 64
"""The fixed, seeded batch of held-out-family images whose zero-shot numbers the card records."""

LIMITATIONS = (
    "It has only seen the generated pocket world: no real photograph, and none of the paper's datasets "
    "(MVTec AD, VisA) or the toy benchmark's categories (weave, granite, washer, chip).",
    "It is tiny (width 128, 6 blocks) and was trained for minutes, not weeks: its vocabulary is the "
    "world's caption grammar; words outside it (most object names of real benchmarks) have untrained embeddings.",
    "Its numbers are never the paper's: the paper uses OpenCLIP ViT-B-16-plus-240 (laion400m_e32).",
)


def guard_batch():
    return sample_batch(GUARD_STREAM, 0, GUARD_BATCH, families=HELD_OUT_FAMILIES)


def regression_check(model=None) -> dict[str, float]:
    """Zero-shot accuracy and AUROC of the released model on the card's fixed held-out batch."""
    model = model if model is not None else load_released()
    return zero_shot(model, pocket_tokenizer(), guard_batch())


MASK_LOSS_LIMITATION = (
    "Its pre-training added a per-patch damage loss read against the world's exact defect masks "
    "(`mask_loss_weight`), which CLIP never had: its patch tokens were told where damage is, which "
    "CLIP learns, if at all, only from captions. It is a stand-in for scale, not a model of CLIP's training.")


def _maybe(record: dict, key: str) -> str:
    value = record.get(key)
    return "-" if value is None else f"{value:.3f}"


def _card_markdown(card: dict) -> str:
    v = card["validation"][-1]
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"{DESCRIPTION}. A small open_clip `CLIP` trained with open_clip's `ClipLoss` on images and captions "
        f"drawn by `vtfusion.pocket.world`. {card.get('note', '')}".rstrip(),
        "",
        "## Numbers",
        f"- parameters: {card['parameters']:,}; file: {card['file']} ({card['bytes'] / 1e6:.1f} MB, fp16), "
        f"SHA-256 `{card['sha256']}`",
        f"- pre-training: {card['steps']} steps of {card['recipe']['batch_size']} images, "
        f"{card['wall_seconds'] / 60:.1f} min on {card['machine']} ({card['device']}, {card['threads']} threads)",
        f"- zero-shot normal vs damaged on held-out families ({', '.join(HELD_OUT_FAMILIES)}): "
        f"AUROC {v['held_out_auroc']:.3f}, accuracy {v['held_out_accuracy']:.3f} "
        f"(training families: AUROC {v['train_families_auroc']:.3f})",
        f"- regression guard (fixed batch of {GUARD_BATCH} held-out images): accuracy "
        f"{card['guard']['accuracy']:.4f}, AUROC {card['guard']['auroc']:.4f}",
        "",
        "## The world",
        f"- training families: {', '.join(TRAIN_FAMILIES)}",
        f"- held-out families (validation only): {', '.join(HELD_OUT_FAMILIES)}",
        f"- defect families: {', '.join(DEFECTS)}",
        f"- captions: {card['caption_statistics']['distinct_captions']} distinct of "
        f"{card['caption_statistics']['captions']} sampled, vocabulary {card['caption_statistics']['vocabulary']} words",
        "",
        "## Recipe",
        *[f"- {k}: {val}" for k, val in card["recipe"].items()],
        "",
        "## Validation curve (held-out families)",
        "Zero-shot: image-level normal vs damaged; patch: the same per patch token; probe: a linear "
        "probe on the image embedding (`vtfusion.pocket.pretrain.evaluate`; - where not recorded).",
        "",
        "| step | loss | zero-shot AUROC | accuracy | patch zero-shot AUROC | probe AUROC |",
        "|---|---|---|---|---|---|",
        *[f"| {r['step']} | {r['held_out_loss']:.3f} | {r['held_out_auroc']:.3f} | {r['held_out_accuracy']:.3f} | "
          f"{_maybe(r, 'held_out_patch_auroc')} | {_maybe(r, 'held_out_probe_auroc')} |" for r in card["validation"]],
        "",
        "## What it does not know",
        *[f"- {line}" for line in card["limitations"]],
        "",
    ]
    return "\n".join(lines)


def release(run_dir: str | Path, name: str = "pocket-v1", machine: str | None = None,
            note: str = "") -> tuple[Path, Path]:
    """Write the fp16 weights and the model card of a finished run into the package.

    ``note``: a sentence for the card's opening (how the release is used, and why).
    """
    payload = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    if payload["step"] < payload["recipe"]["steps"]:
        raise ValueError(f"{run_dir} stopped at step {payload['step']} of {payload['recipe']['steps']}; "
                         "finish it with `vtfusion pocket pretrain` first")
    weights, card_path = release_paths(name)
    state = {k: v.to(torch.float16).contiguous() for k, v in payload["model"].items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    model = build_pocket_clip()
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    captions = [c for i in range(4) for c in sample_batch(payload["recipe"]["seed"], i, 64).captions]
    card = {
        "name": name, "description": DESCRIPTION, "file": weights.name, "sha256": sha256_of(weights),
        "bytes": weights.stat().st_size, "parameters": sum(v.numel() for v in state.values()),
        "architecture": POCKET_CLIP_CONFIG, "recipe": payload["recipe"], "steps": payload["step"],
        "wall_seconds": payload["seconds"], "device": "cpu" if machine is None else machine,
        "machine": machine or f"{platform.machine()} CPU, {platform.system()}",
        "threads": torch.get_num_threads(), "released": time.strftime("%Y-%m-%d"),
        "vtfusion_version": __version__, "world": {"train_families": list(TRAIN_FAMILIES),
                                                   "held_out_families": list(HELD_OUT_FAMILIES),
                                                   "all_families": list(FAMILIES), "defects": list(DEFECTS)},
        "caption_statistics": caption_statistics(captions), "validation": payload["validation"],
        "loss_curve": payload["history"][::10], "guard": regression_check(model),
        "limitations": [*LIMITATIONS, *([MASK_LOSS_LIMITATION] if payload["recipe"].get("mask_loss_weight") else [])],
        **({"note": note} if note else {}),
    }
    atomic_write_json(card_path, card)
    atomic_write_text(card_path.with_suffix(".md"), _card_markdown(card))
    return weights, card_path
