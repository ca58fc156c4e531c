"""Pre-training the pocket CLIP on the pocket world with open_clip's ``CLIP`` and ``ClipLoss``.

The recipe (:class:`PretrainConfig`): AdamW, linear warm-up then cosine decay, batches of
freshly drawn world images with their captions (batch ``i`` of the stream is a function
of the seed and ``i`` only, so a resumed run sees exactly the batches it would have seen).
The families of :data:`~vtfusion.pocket.world.HELD_OUT_FAMILIES` are never trained on:
every ``val_every`` steps the contrastive loss and the zero-shot "normal vs damaged"
accuracy and AUROC are measured on fixed batches of them (and, for comparison, of the
training families).

The architecture is :data:`vtfusion.pocket.model.POCKET_CLIP_CONFIG` (about 8.3 M
parameters, 17 MB in fp16; a forward pass costs about 1.5x the random ``tiny``
backbone's).

Command line: ``vtfusion pocket pretrain --out DIR [--steps N] [--device cpu|cuda]``.
Checkpoints are written atomically to ``DIR/checkpoint.pt`` every ``checkpoint_every``
steps; rerunning the same command resumes from the last one. On CPU the run is
deterministic for a given seed and thread count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vtfusion.backbone import CLIP_MEAN, CLIP_STD
from vtfusion.io import atomic_write, atomic_write_json
from vtfusion.metrics import auroc
from vtfusion.pocket.model import RELEASES, POCKET_CLIP_CONFIG, build_pocket_clip, load_released, pocket_tokenizer
from vtfusion.pocket.world import HELD_OUT_FAMILIES, TRAIN_FAMILIES, batch_generator, sample_batch

CHECKPOINT_FORMAT = "vtfusion-pocket-pretrain-1"
VAL_STREAM = 10_000_019  # the validation batches' stream: never drawn for training
JITTER_STREAM = 20_000_003  # the reference jitter's stream (match_weight > 0)
MASK_HEADS = ("linear", "text")


@dataclass(frozen=True)
class PretrainConfig:
    """The pre-training recipe.

    Attributes:
        steps: optimiser steps.
        batch_size: images (and captions) per step.
        lr: peak AdamW learning rate, reached after ``warmup`` steps, then cosine decay to 0.
        warmup: linear warm-up steps.
        weight_decay: AdamW weight decay (not on gains, biases, embeddings' positions or the
            logit scale).
        seed: initialisation and data stream.
        val_every: validation interval in steps (and at the end).
        val_batches: fixed validation batches per family group.
        checkpoint_every: checkpoint interval in steps (and at the end).
        threads: torch CPU threads (the result depends on it only through rounding).
        families: the training families.
        copies: each batch shows every scene this many times, once defect-free and with
            different defects otherwise (:func:`~vtfusion.pocket.world.sample_batch`), so
            the contrastive loss can only be lowered by learning the state and the
            defects **[choice]**: with independent images a 400-step pilot learnt families
            and colours and stayed at chance on "normal vs damaged" (validation AUROC 0.52
            on the held-out families); pairs (2 copies) reached 0.56 in 400 steps.
        zoom: share of the scenes shown as close-ups around a defect **[choice]**: with
            the image embedding an average of patch tokens, a small defect moves it little;
            close-ups teach what a damaged patch looks like.
        single_family_share: share of the steps whose batch is drawn from one training
            family only (the families in turn) **[choice]**: in a mixed batch the captions
            are told apart by object, colour and texture, which pocket-v1 learnt while its
            image tower stayed blind to damage (a linear probe near chance); in a batch of
            one family, state and defects are most of what tells its captions apart. 0
            (pocket-v1) leaves the recipe as it was.
        mask_loss_weight: weight of an auxiliary per-patch "damaged" loss added to
            ``ClipLoss`` (:func:`patch_damage_loss`) **[choice, a departure from CLIP]**:
            CLIP learnt from 400 M pairs what a few thousand steps here cannot teach through
            captions alone (pocket-v1's probe stayed near chance); a linear head on the patch
            tokens, read against the world's exact defect masks and dropped at release,
            makes the image tower see damage, which ``ClipLoss`` can then name. 0 (pocket-v1)
            leaves the recipe as it was.
        mask_head: what reads the patches for that loss: ``"linear"``, a head of its own
            (above); or ``"text"``, the text tower itself, each patch's logit being the
            temperature-scaled similarity to "a photo of a damaged <noun>." minus that to
            "a photo of a flawless <noun>." (:func:`text_patch_logits`) **[choice]**: with a
            head of its own the image tower learnt damaged patches (head AUROC 0.79 on the
            training families, 0.71 held out, after 1200 steps) while the text tower never
            named them (patch zero-shot 0.52 held out).
        recon_weight: weight of an auxiliary per-patch pixel reconstruction loss
            (:func:`patch_reconstruction_loss`) **[choice, a departure from CLIP]**: a linear
            decoder, dropped at release, reads each output patch token of the image tower and
            must give back that patch's normalised pixels, so the tokens cannot discard the
            local detail that nearest-neighbour matching needs (pocket-v1 and v2 lose it in
            their first block: ``bench/pocket_locality.py``). 0 leaves the recipe as it was.
        match_weight: weight of an auxiliary nearest-neighbour matching loss
            (:func:`patch_matching_loss`) **[choice, a departure from CLIP]**: each scene's
            defect-free copy is shifted, turned and re-lit a little
            (:func:`jitter_references`), and every patch of its damaged copies must lie near
            some patch of it when normal and far from all of them when damaged, read on the
            last block's tokens as patch-kNN reads them. It asks the tokens for what a
            nearest-neighbour detector needs from a backbone: indifference to pose and
            lighting, sensitivity to damage. Needs ``copies >= 2``; 0 leaves the recipe as
            it was.
        init: ``""`` for a seeded random initialisation, or the name of a released pocket
            CLIP (``pocket-v2``) whose weights the run continues from **[choice]**.
    """

    steps: int = 2600
    batch_size: int = 64
    lr: float = 1.5e-3
    warmup: int = 150
    weight_decay: float = 0.1
    seed: int = 0
    val_every: int = 200
    val_batches: int = 2
    checkpoint_every: int = 100
    threads: int = 2
    families: tuple[str, ...] = TRAIN_FAMILIES
    copies: int = 4
    zoom: float = 0.5
    single_family_share: float = 0.0
    mask_loss_weight: float = 0.0
    mask_head: str = "linear"
    recon_weight: float = 0.0
    match_weight: float = 0.0
    init: str = ""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("PretrainConfig needs steps >= 1 and batch_size >= 2 (a contrastive batch)")
        if not 0.0 <= self.single_family_share <= 1.0:
            raise ValueError(f"PretrainConfig.single_family_share={self.single_family_share} must lie in [0, 1]")
        if self.mask_loss_weight < 0:
            raise ValueError(f"PretrainConfig.mask_loss_weight={self.mask_loss_weight} must be >= 0")
        if self.recon_weight < 0:
            raise ValueError(f"PretrainConfig.recon_weight={self.recon_weight} must be >= 0")
        if self.match_weight < 0 or (self.match_weight > 0 and self.copies < 2):
            raise ValueError(f"PretrainConfig.match_weight={self.match_weight} must be >= 0, and needs copies >= 2 "
                             f"(a defect-free copy of each scene to match against; copies={self.copies})")
        if self.init and self.init not in RELEASES:
            raise ValueError(f"PretrainConfig.init={self.init!r}: use '' (random) or one of {', '.join(RELEASES)}")
        if self.mask_head not in MASK_HEADS:
            raise ValueError(f"PretrainConfig.mask_head={self.mask_head!r}: use one of {', '.join(MASK_HEADS)}")
        if set(self.families) & set(HELD_OUT_FAMILIES):
            raise ValueError(f"the held-out families {HELD_OUT_FAMILIES} cannot be trained on")

    def recipe(self) -> dict:
        """What determines the weights (everything but the intervals and threads)."""
        d = dataclasses.asdict(self)
        for k in ("val_every", "val_batches", "checkpoint_every", "threads"):
            d.pop(k)
        d["families"] = list(self.families)
        # fields added after a release: at their neutral values they keep the released
        # recipes (and checkpoints) as they were
        for key, neutral in (("single_family_share", 0.0), ("mask_loss_weight", 0.0),
                             ("recon_weight", 0.0), ("match_weight", 0.0), ("init", "")):
            if d[key] == neutral:
                d.pop(key)
        if self.mask_loss_weight == 0.0:
            d.pop("mask_head")
        return d

    def batch_families(self, step: int) -> tuple[str, ...]:
        """The families batch ``step`` is drawn from: one family (in turn) on a
        ``single_family_share`` of the steps, spread evenly, else all of :attr:`families`."""
        share = self.single_family_share
        if share > 0 and math.floor((step + 1) * share) > math.floor(step * share):
            return (self.families[math.floor(step * share) % len(self.families)],)
        return self.families


def normalise(images: torch.Tensor) -> torch.Tensor:
    """CLIP's input normalisation of ``B x 3 x H x W`` images in [0, 1]."""
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "positional" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Warm-up then cosine: the learning rate of optimiser step ``step`` (0-indexed)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def zero_shot(model, tokenizer, batch, device: torch.device | str = "cpu",
              features: torch.Tensor | None = None) -> dict[str, float]:
    """Image-level zero-shot "normal vs damaged" on a world batch.

    Each image is compared with "a photo of a flawless <noun>." and "a photo of a damaged
    <noun>." (its own noun); the softmax probability of "damaged" is its score.
    ``features``: the batch's :func:`image_embeddings`, when the caller has them already.

    Returns:
        ``accuracy`` (argmax against the truth) and ``auroc`` (of the scores).
    """
    model.eval()
    feats = (image_embeddings(model, batch.images, device) if features is None else features).to(device)
    rows = state_prompt_rows(model, tokenizer, batch.nouns, device)  # B x 2 x d
    logits = 100.0 * torch.einsum("bd,bkd->bk", feats, rows)
    p_damaged = logits.softmax(-1)[:, 1].cpu()
    labels = batch.damaged
    return {"accuracy": float(((p_damaged > 0.5) == labels).float().mean()),
            "auroc": auroc(p_damaged, labels.int()) if 0 < int(labels.sum()) < len(labels) else float("nan")}


@torch.no_grad()
def patch_zero_shot_auroc(model, tokenizer, batch, device: torch.device | str = "cpu") -> float:
    """Patch-level zero-shot: AUROC of each projected patch token's "damaged" probability
    (as in :func:`zero_shot`, against its image's noun) for the patches a defect touches.

    This is the map VTFusion's untrained text branch starts from, at the backbone's grid.
    """
    model.eval()
    _, tokens = pooled_and_patch_tokens(model, batch.images, device)
    tokens = torch.nn.functional.normalize(tokens, dim=-1)  # B x N x d
    rows = state_prompt_rows(model, tokenizer, batch.nouns, device)  # B x 2 x d
    p_damaged = (100.0 * torch.einsum("bnd,bkd->bnk", tokens, rows)).softmax(-1)[..., 1].flatten().cpu()
    labels = (patch_damage_target(batch.masks, math.isqrt(tokens.shape[1])) > 0).flatten()
    return auroc(p_damaged, labels.int()) if 0 < int(labels.sum()) < len(labels) else float("nan")


def pooled_and_patch_tokens(model, images: torch.Tensor, device,
                            projected: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The image tower's embedding ``B x d`` (not normalised) and its projected patch tokens
    ``B x N x d`` (the joint-space tokens the pooled embedding averages), for ``B x 3 x H x W``
    images in [0, 1]. ``projected=False``: the tokens before the projection, ``B x N x width``."""
    visual = model.visual
    visual.output_tokens = True  # open_clip returns the tokens only through this flag
    try:
        pooled, tokens = visual(normalise(images.to(device)))
    finally:
        visual.output_tokens = False
    return pooled, (tokens @ visual.proj if projected else tokens)


def state_prompt_rows(model, tokenizer, nouns: list[str], device) -> torch.Tensor:
    """Unit text embeddings ``B x 2 x d`` of "a photo of a flawless <noun>." and "a photo of a
    damaged <noun>." for each of ``nouns`` (one per image)."""
    distinct = sorted(set(nouns))
    prompts = [f"a photo of a {state} {noun}." for noun in distinct for state in ("flawless", "damaged")]
    text = model.encode_text(tokenizer(prompts).to(device), normalize=True).view(len(distinct), 2, -1)
    return text[[distinct.index(n) for n in nouns]]


def probe_auroc(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                test_y: torch.Tensor) -> float:
    """AUROC on ``test_x`` of a logistic regression fit on ``train_x`` (``N x d`` features, 0/1 labels).

    A linear probe asks whether the features *carry* "normal vs damaged" at all, whatever
    the text tower says: a zero-shot score at chance with a probe well above it is a
    failure of alignment; both at chance, a failure of the image tower.
    """
    from sklearn.linear_model import LogisticRegression  # local: scikit-learn is slow to import
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not (0 < int(train_y.sum()) < len(train_y)) or not (0 < int(test_y.sum()) < len(test_y)):
        return float("nan")
    # standardised, and C = 0.1: a few hundred images against up to ~500 dimensions would
    # otherwise be separated perfectly by noise
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    clf.fit(train_x.double().numpy(), train_y.int().numpy())
    scores = torch.from_numpy(clf.decision_function(test_x.double().numpy()))
    return auroc(scores, test_y.int())


@torch.no_grad()
def image_embeddings(model, images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Unit-norm image embeddings ``B x d`` of ``B x 3 x H x W`` images in [0, 1] (on the CPU)."""
    model.eval()
    return model.encode_image(normalise(images.to(device)), normalize=True).float().cpu()


@torch.no_grad()
def similarity(model, tokenizer, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Cosine similarities of every image with every caption: ``B x T`` (what ``ClipLoss`` scales and contrasts)."""
    model.eval()
    device = next(model.parameters()).device
    image = model.encode_image(normalise(images.to(device)), normalize=True)
    text = model.encode_text(tokenizer(captions).to(device), normalize=True)
    return (image @ text.t()).cpu()


def clip_loss_on(model, loss_fn, tokenizer, batch, device) -> torch.Tensor:
    out = model(normalise(batch.images.to(device)), tokenizer(batch.captions).to(device))
    image, text, scale = (out["image_features"], out["text_features"], out["logit_scale"]) if isinstance(out, dict) \
        else out[:3]
    return loss_fn(image, text, scale)


def build_damage_head(cfg: PretrainConfig) -> torch.nn.Linear:
    """The auxiliary head of :func:`patch_damage_loss`: one logit per projected patch token."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        head = torch.nn.Linear(POCKET_CLIP_CONFIG["embed_dim"], 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    return head


def build_recon_head(cfg: PretrainConfig) -> torch.nn.Linear:
    """The decoder of :func:`patch_reconstruction_loss`: one patch of pixels per output token."""
    vision = POCKET_CLIP_CONFIG["vision_cfg"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 2)
        return torch.nn.Linear(vision["width"], 3 * vision["patch_size"] ** 2)


def patch_reconstruction_loss(tokens: torch.Tensor, head: torch.nn.Linear, images: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``head``'s reading of each patch token against that patch's pixels.

    Args:
        tokens: ``B x N x width`` output patch tokens of the image tower (``N`` a square grid).
        images: ``B x 3 x H x W`` in [0, 1]; the targets are their CLIP-normalised pixels,
            one ``3 x p x p`` patch per token (``p = H / sqrt(N)``).
    """
    grid = math.isqrt(tokens.shape[1])
    patch = images.shape[-1] // grid
    target = torch.nn.functional.unfold(normalise(images.to(tokens.device)), patch, stride=patch).transpose(1, 2)
    return torch.nn.functional.mse_loss(head(tokens), target)


class MatchHead(torch.nn.Module):
    """Per-patch "damaged" logits from nearest-reference distances: ``scale * (d - offset)``.

    Two learnt scalars, dropped at release: the loss asks the *distances* to separate
    damaged from normal patches, wherever the threshold lies.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        self.offset = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        """``B x N`` squared distances -> ``B x N`` logits."""
        return self.log_scale.exp() * (distances - self.offset)


def jitter_references(images: torch.Tensor, gen: torch.Generator, shift: float = 20.0, turn: float = 8.0,
                      light: float = 0.15, tint: float = 0.08) -> torch.Tensor:
    """Each of ``B x 3 x H x W`` images (in [0, 1]) shifted by up to ``shift`` pixels, turned
    by up to ``turn`` degrees (reflected at the border), its brightness and contrast scaled
    by up to ``1 +- light`` and each channel by up to ``1 +- tint``: another view of a scene,
    as another normal sample of a category would show it (:func:`patch_matching_loss`)."""
    b, _, h, w = images.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    angle = uniform(-turn, turn) * math.pi / 180
    tx, ty = uniform(-shift, shift) * 2 / w, uniform(-shift, shift) * 2 / h
    theta = torch.stack([torch.stack([angle.cos(), -angle.sin(), tx], -1),
                         torch.stack([angle.sin(), angle.cos(), ty], -1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(images, grid.to(images.dtype), padding_mode="reflection",
                                          align_corners=False)
    mean = out.mean((1, 2, 3), keepdim=True)
    contrast, brightness = uniform(1 - light, 1 + light), uniform(1 - light, 1 + light)
    out = (out - mean) * contrast.view(b, 1, 1, 1) + mean * brightness.view(b, 1, 1, 1)
    gain = 1 + tint * (2 * torch.rand(b, 3, generator=gen) - 1)
    return (out * gain.view(b, 3, 1, 1)).clamp(0, 1)


def nearest_reference_distances(tokens: torch.Tensor, scenes: int) -> torch.Tensor:
    """Squared distance of each unit token of a scene's later copies to the nearest unit token
    of its first copy, as patch-kNN measures it (:mod:`vtfusion.patch_knn`).

    Args:
        tokens: ``B x N x D``, ``B = copies * scenes``, copy ``c`` of scene ``s`` at row
            ``c * scenes + s`` (:func:`~vtfusion.pocket.world.sample_batch`).

    Returns:
        ``(B - scenes) x N`` distances in ``[0, 4]``, rows in the batch's order.
    """
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    ref, later = unit[:scenes], unit[scenes:]
    cos = torch.einsum("csnd,smd->csnm", later.reshape(-1, scenes, *later.shape[1:]), ref).amax(-1)
    return (2 - 2 * cos).reshape(-1, tokens.shape[1])


def patch_matching_loss(tokens: torch.Tensor, head: MatchHead, masks: torch.Tensor, scenes: int) -> torch.Tensor:
    """Balanced cross-entropy of :class:`MatchHead`'s reading of
    :func:`nearest_reference_distances` against the defect share of each patch of the
    damaged copies (``masks``: the whole batch's ``B x 1 x H x W``)."""
    return balanced_patch_bce(head(nearest_reference_distances(tokens, scenes)), masks[scenes:])


def patch_damage_target(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Share of each patch's pixels that a defect covers: ``B x 1 x H x W`` bool -> ``B x grid*grid``."""
    return torch.nn.functional.adaptive_avg_pool2d(masks.float(), grid).flatten(1)


def patch_damage_loss(tokens: torch.Tensor, head: torch.nn.Linear, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``head``'s per-patch logits against the defect share of each patch.

    Args:
        tokens: ``B x N x d`` projected patch tokens (``N`` a square grid).
        masks: ``B x 1 x H x W`` defect masks of the batch.
    """
    return balanced_patch_bce(head(tokens).squeeze(-1), masks)


def text_patch_logits(model, tokenizer, tokens: torch.Tensor, nouns: list[str], device) -> torch.Tensor:
    """Per-patch "damaged" logits read by the text tower: ``B x N``.

    ``s * (cos(token, damaged) - cos(token, flawless))`` with CLIP's temperature ``s``: the
    two-prompt softmax of :func:`zero_shot`, per projected patch token (``B x N x d``).
    """
    rows = state_prompt_rows(model, tokenizer, nouns, device)  # B x 2 x d
    cos = torch.einsum("bnd,bkd->bnk", torch.nn.functional.normalize(tokens, dim=-1), rows)
    return model.logit_scale.exp() * (cos[..., 1] - cos[..., 0])


def balanced_patch_bce(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of per-patch logits (``B x N``, ``N`` a square grid) against the
    defect share of each patch, damaged patches weighted to balance the normal ones."""
    grid = math.isqrt(logits.shape[1])
    target = patch_damage_target(masks, grid).to(logits.device)
    # balanced: about 2 % of the patches are damaged, and an unweighted loss is lowest
    # (about 0.09) for a head that calls every patch normal
    share = float(target.mean())
    pos_weight = torch.tensor(min(100.0, max(1.0, (1 - share) / share)) if share > 0 else 1.0)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight.to(logits.device))


def training_losses(model, head, loss_fn, tokenizer, batch, device, mask_loss_weight: float = 0.0,
                    mask_head: str = "linear", recon_head: torch.nn.Linear | None = None,
                    recon_weight: float = 0.0, match_head: MatchHead | None = None,
                    match_weight: float = 0.0, scenes: int = 0) -> dict[str, torch.Tensor]:
    """``clip`` (``ClipLoss``), ``mask`` (when weighted: :func:`patch_damage_loss` with the
    linear ``head``, or :func:`balanced_patch_bce` of :func:`text_patch_logits`), ``recon``
    (when weighted: :func:`patch_reconstruction_loss` with ``recon_head``), ``match`` (when
    weighted: :func:`patch_matching_loss` with ``match_head`` on the last block's tokens, the
    batch holding ``scenes`` scenes) and their weighted sum ``total``, for one batch."""
    use_mask = mask_loss_weight > 0.0 and not (mask_head == "linear" and head is None)
    use_recon = recon_weight > 0.0 and recon_head is not None
    use_match = match_weight > 0.0 and match_head is not None and scenes > 0
    if not (use_mask or use_recon or use_match):
        clip = clip_loss_on(model, loss_fn, tokenizer, batch, device)
        return {"clip": clip, "total": clip}
    visual = model.visual
    last = len(visual.transformer.resblocks) - 1
    tower = visual.forward_intermediates(normalise(batch.images.to(device)), indices=[last], output_fmt="NLC")
    pooled, stream = tower["image_features"], tower["image_intermediates"][0]  # the last block's patch tokens
    raw = visual.ln_post(stream)  # what the tower pools (open_clip: ln_post, then the average)
    tokens = raw @ visual.proj
    image = torch.nn.functional.normalize(pooled, dim=-1)
    text = model.encode_text(tokenizer(batch.captions).to(device), normalize=True)
    out = {"clip": loss_fn(image, text, model.logit_scale.exp())}
    out["total"] = out["clip"]
    if use_mask:
        if mask_head == "text":
            out["mask"] = balanced_patch_bce(text_patch_logits(model, tokenizer, tokens, batch.nouns, device),
                                             batch.masks)
        else:
            out["mask"] = patch_damage_loss(tokens, head, batch.masks)
        out["total"] = out["total"] + mask_loss_weight * out["mask"]
    if use_recon:
        out["recon"] = patch_reconstruction_loss(raw, recon_head, batch.images)
        out["total"] = out["total"] + recon_weight * out["recon"]
    if use_match:
        out["match"] = patch_matching_loss(stream, match_head, batch.masks, scenes)
        out["total"] = out["total"] + match_weight * out["match"]
    return out


def validation_batches(cfg: PretrainConfig) -> dict[str, list]:
    """Fixed batches of the held-out families and of the training families."""
    return {group: [sample_batch(VAL_STREAM + g, i, cfg.batch_size, families=fams)
                    for i in range(cfg.val_batches)]
            for g, (group, fams) in enumerate((("held_out", HELD_OUT_FAMILIES), ("train_families", cfg.families)))}


@torch.no_grad()
def evaluate(model, loss_fn, tokenizer, batches: dict[str, list], device) -> dict[str, float]:
    """Validation loss, zero-shot, patch-level zero-shot and linear-probe numbers per group
    (``held_out_loss``, ``held_out_auroc``, ``held_out_patch_auroc``, ``held_out_probe_auroc``, ...).

    The probe (:func:`probe_auroc`) is fit on the image embeddings of the first half of a
    group's batches and scored on the rest (NaN with a single batch).
    """
    model.eval()
    out: dict[str, float] = {}
    for group, bs in batches.items():
        losses = [float(clip_loss_on(model, loss_fn, tokenizer, b, device)) for b in bs]
        x = [image_embeddings(model, b.images, device) for b in bs]  # once, for zero-shot and probe
        shots = [zero_shot(model, tokenizer, b, device, features=f) for b, f in zip(bs, x)]
        out[f"{group}_loss"] = sum(losses) / len(losses)
        out[f"{group}_accuracy"] = sum(s["accuracy"] for s in shots) / len(shots)
        out[f"{group}_auroc"] = sum(s["auroc"] for s in shots) / len(shots)
        out[f"{group}_patch_auroc"] = sum(patch_zero_shot_auroc(model, tokenizer, b, device) for b in bs) / len(bs)
        if len(bs) > 1:
            y = [b.damaged for b in bs]
            half = len(bs) // 2
            out[f"{group}_probe_auroc"] = probe_auroc(torch.cat(x[:half]), torch.cat(y[:half]),
                                                      torch.cat(x[half:]), torch.cat(y[half:]))
    model.train()
    return out


@dataclass
class PretrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _save(path: Path, model, optimiser, state: PretrainState, cfg: PretrainConfig,
          head: torch.nn.Module | None = None, recon: torch.nn.Module | None = None,
          match: torch.nn.Module | None = None) -> None:
    payload = {**({"head": head.state_dict()} if head is not None else {}),
               **({"recon_head": recon.state_dict()} if recon is not None else {}),
               **({"match_head": match.state_dict()} if match is not None else {}),
               "format": CHECKPOINT_FORMAT, "recipe": cfg.recipe(), "model": model.state_dict(),
               "optimiser": optimiser.state_dict(), "step": state.step, "history": state.history,
               "validation": state.validation, "seconds": state.seconds}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _load(path: Path, cfg: PretrainConfig) -> dict | None:
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pocket pre-training checkpoint")
    if payload["recipe"] != cfg.recipe():
        raise ValueError(f"{path} was written by another recipe ({payload['recipe']}); use another --out "
                         "folder, or delete it to start again")
    return payload


def pretrain(out_dir: str | Path, cfg: PretrainConfig = PretrainConfig(), device: str = "cpu",
             progress: bool = True) -> PretrainState:
    """Pre-train (or resume) the pocket CLIP in ``out_dir``; returns the run's state.

    Writes ``checkpoint.pt`` (model, optimiser, step, curves; atomic) and, at the end,
    ``curves.json`` with the per-step loss and the validation records.
    """
    import open_clip  # local: open_clip is slow to import; only when pre-training

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    torch.set_num_threads(cfg.threads)
    dev = torch.device(device)
    model = (load_released(cfg.init).train() if cfg.init else build_pocket_clip(cfg.seed)).to(dev)
    head = build_damage_head(cfg).to(dev) if cfg.mask_loss_weight > 0 and cfg.mask_head == "linear" else None
    recon = build_recon_head(cfg).to(dev) if cfg.recon_weight > 0 else None
    match = MatchHead().to(dev) if cfg.match_weight > 0 else None
    groups = _param_groups(model, cfg.weight_decay)
    for aux in (head, recon, match):
        if aux is not None:
            groups[1]["params"] += list(aux.parameters())  # no decay on the auxiliary heads
    optimiser = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    state = PretrainState()
    saved = _load(ckpt, cfg)
    if saved is not None:
        model.load_state_dict(saved["model"])
        if head is not None:
            head.load_state_dict(saved["head"])
        if recon is not None:
            recon.load_state_dict(saved["recon_head"])
        if match is not None:
            match.load_state_dict(saved["match_head"])
        optimiser.load_state_dict(saved["optimiser"])
        state = PretrainState(saved["step"], saved["history"], saved["validation"], saved["seconds"])
    tokenizer = pocket_tokenizer()
    loss_fn = open_clip.ClipLoss()
    val = validation_batches(cfg)
    bar = None
    if progress:
        bar = tqdm(total=cfg.steps, initial=state.step, desc="pocket CLIP pre-training")
    model.train()
    while state.step < cfg.steps:
        if state.step % cfg.val_every == 0 and not any(v["step"] == state.step for v in state.validation):
            state.validation.append({"step": state.step, **evaluate(model, loss_fn, tokenizer, val, dev)})
        start = time.perf_counter()
        for group in optimiser.param_groups:
            group["lr"] = lr_at(state.step, cfg)
        batch = sample_batch(cfg.seed, state.step, cfg.batch_size, families=cfg.batch_families(state.step),
                             copies=cfg.copies, zoom=cfg.zoom)
        scenes = cfg.batch_size // cfg.copies
        if match is not None:  # the defect-free copies, seen as another sample of the scene would be
            batch.images[:scenes] = jitter_references(batch.images[:scenes],
                                                      batch_generator(JITTER_STREAM + cfg.seed, state.step))
        losses = training_losses(model, head, loss_fn, tokenizer, batch, dev, cfg.mask_loss_weight, cfg.mask_head,
                                 recon, cfg.recon_weight, match, cfg.match_weight, scenes)
        loss = losses["clip"]
        optimiser.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimiser.step()
        with torch.no_grad():  # CLIP clamps its temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        state.history.append({"step": state.step, "loss": float(loss.detach()), "lr": lr_at(state.step, cfg),
                              "logit_scale": float(model.logit_scale.detach().exp()),
                              **({"mask_loss": float(losses["mask"].detach())} if "mask" in losses else {}),
                              **({"recon_loss": float(losses["recon"].detach())} if "recon" in losses else {}),
                              **({"match_loss": float(losses["match"].detach())} if "match" in losses else {})})
        state.step += 1
        state.seconds += time.perf_counter() - start
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            if state.step == cfg.steps:
                state.validation.append({"step": state.step, **evaluate(model, loss_fn, tokenizer, val, dev)})
            _save(ckpt, model, optimiser, state, cfg, head, recon, match)
    if bar is not None:
        bar.close()
    atomic_write_json(out / "curves.json", {"recipe": cfg.recipe(), "history": state.history,
                                            "validation": state.validation, "seconds": state.seconds,
                                            "device": str(dev), "threads": cfg.threads})
    return state


def load_trained(out_dir: str | Path):
    """The pre-trained model of a run folder (``checkpoint.pt``), in eval mode."""
    payload = torch.load(Path(out_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = build_pocket_clip()
    model.load_state_dict(payload["model"])
    return model.eval(), payload


def read_curves(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "curves.json").read_text())
