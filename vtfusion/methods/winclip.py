"""WinCLIP and WinCLIP+ (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and
Segmentation", CVPR 2023) as registered methods, written for open_clip 3.x.

Written from the paper, on this package's frozen backbone
(:meth:`vtfusion.backbone.FrozenCLIP.encode_windows`):

- **Window embeddings** (Sec. 4.2): every ``s x s`` window of patches (stride 1) at the
  small (``s = 2``) and mid (``s = 3``) scales is encoded by CLIP's image encoder on its
  own patches only, plus the whole image (the image scale).
- **Compositional prompt ensemble** (Sec. 4.1): the text embedding of a class is the mean
  of the normalised embeddings of its state phrases in every template. We reuse the
  package's ensemble (:mod:`vtfusion.prompts`, April-GAN's states and templates, a
  superset of WinCLIP's); the score of an embedding is the softmax probability of
  "abnormal" over the two class embeddings (temperature :attr:`WinCLIPConfig.temperature`).
- **Harmonic aggregation** (Sec. 4.2): a patch's score at one scale is the harmonic mean
  of the scores of the windows that contain it (:func:`harmonic_aggregate`); the
  zero-shot map is the mean of the small, mid and image-scale maps.
- **WinCLIP+** (Sec. 4.3): a reference memory of the k shots' window embeddings at each
  scale and of their penultimate-level patch tokens; a test window's (patch's) few-shot
  score is ``min_r (1 - <f, r>) / 2`` over the memory of its scale; window scores are
  aggregated harmonically onto patches; the few-shot map is the mean over scales. The
  final map is the mean of the zero-shot and few-shot maps; the image score is the mean
  of the image-scale text score and the few-shot map's maximum.

Maps are computed on the ``h x w`` patch grid and upsampled bilinearly to the image size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vtfusion.config import ExperimentConfig
from vtfusion.methods.base import AnomalyMethod, Prediction, Shots, _device_of
from vtfusion.methods.registry import register_method
from vtfusion.prompts import PromptConfig, build_prompts, object_name_for


@dataclass(frozen=True)
class WinCLIPConfig:
    """Options of WinCLIP / WinCLIP+.

    Attributes:
        scales: window sides in patches (the paper: 2 and 3 on ViT-B/16+'s 15 x 15 grid).
        stride: window stride in patches (the paper: 1).
        image_scale: add the whole image as a scale (the paper does).
        temperature: the softmax temperature of the text score (CLIP's trained logit scale, 100).
        prompts: which prompt ensemble (:class:`vtfusion.prompts.PromptConfig` preset).
        patch_level: **[choice]** which of the backbone's configured levels gives the patch
            tokens of WinCLIP+'s memory (-2: the penultimate configured level, as the paper's
            penultimate block; the last level when the backbone has one).
    """

    scales: tuple[int, ...] = (2, 3)
    stride: int = 1
    image_scale: bool = True
    temperature: float = 100.0
    prompts: str = "ensemble"
    patch_level: int = -2

    def __post_init__(self) -> None:
        if not self.scales or any(int(s) < 1 for s in self.scales):
            raise ValueError(f"WinCLIPConfig.scales must be window sides >= 1, got {self.scales!r}")
        if self.stride < 1:
            raise ValueError(f"WinCLIPConfig.stride must be >= 1, got {self.stride}")
        if self.temperature <= 0:
            raise ValueError(f"WinCLIPConfig.temperature must be > 0, got {self.temperature}")
        PromptConfig(self.prompts)  # validates the preset name


def window_indices(grid: tuple[int, int], size: int, stride: int = 1) -> torch.Tensor:
    """Row-major patch indices of every ``size x size`` window of an ``h x w`` grid.

    Returns ``W x size^2`` long, ``W = (floor((h - size) / stride) + 1) * (floor((w - size) / stride) + 1)``,
    windows in row-major order of their top-left patch. ``ValueError`` if the window is larger than the grid.
    """
    h, w = grid
    if not 1 <= size <= min(h, w):
        raise ValueError(f"WinCLIPConfig.scales: a window of {size} patches does not fit the {h} x {w} grid")
    rows = torch.arange(0, h - size + 1, stride)
    cols = torch.arange(0, w - size + 1, stride)
    offs = (torch.arange(size)[:, None] * w + torch.arange(size)[None, :]).flatten()  # size^2
    tops = (rows[:, None] * w + cols[None, :]).flatten()  # W
    return tops[:, None] + offs[None, :]


def harmonic_aggregate(scores: torch.Tensor, windows: torch.Tensor, grid: tuple[int, int],
                       eps: float = 1e-6) -> torch.Tensor:
    """Harmonic mean, per patch, of the scores of the windows containing it (WinCLIP Sec. 4.2).

    ``scores``: ``B x W``; ``windows``: ``W x n`` patch indices -> ``B x h x w``. A patch no window
    covers (a stride larger than 1) gets 0.
    """
    h, w = grid
    b = scores.shape[0]
    idx = windows.to(scores.device).flatten()  # (W n)
    inv = (1.0 / scores.clamp_min(eps)).repeat_interleave(windows.shape[1], dim=1)  # B x (W n)
    total = scores.new_zeros(b, h * w).index_add_(1, idx, inv)
    count = scores.new_zeros(h * w).index_add_(0, idx, torch.ones_like(idx, dtype=scores.dtype))
    out = torch.where(count > 0, count / total.clamp_min(eps), torch.zeros_like(total))
    return out.reshape(b, h, w)


@register_method("winclip")
class WinCLIP(AnomalyMethod):
    """WinCLIP (Jeong et al., CVPR 2023): zero-shot window-text scores, harmonically aggregated."""

    uses_shots = False
    reads_tokens = False  # it encodes windows of the images, not the cached tokens
    options_type = WinCLIPConfig

    def __init__(self, cfg: ExperimentConfig, backbone: nn.Module | None = None, options: Any = None) -> None:
        super().__init__(cfg, backbone, options)
        self.text: torch.Tensor | None = None
        self.memory: list[torch.Tensor] = []

    @property
    def device(self) -> torch.device:
        return _device_of(self.backbone)

    def config(self) -> dict[str, Any]:
        """The backbone, the image size, the evaluation options and the :class:`WinCLIPConfig`."""
        return {"method": self.name, "backbone": dataclasses.asdict(self.cfg.backbone),
                "image_size": self.cfg.data.image_size, "eval": dataclasses.asdict(self.cfg.eval),
                "options": dataclasses.asdict(self.options)}

    def windows(self) -> list[torch.Tensor]:
        """Per scale, the ``W x n`` patch indices of its windows on the backbone's grid."""
        return [window_indices(self.backbone.grid_size, int(s), self.options.stride) for s in self.options.scales]

    def fit_shots(self, shots: Shots) -> None:
        prompts = build_prompts(object_name_for(shots.dataset, shots.category), PromptConfig(self.options.prompts))
        rows = [F.normalize(self.backbone.encode_text(prompts[c]), dim=-1).mean(0) for c in ("normal", "abnormal")]
        self.text = F.normalize(torch.stack(rows), dim=-1)  # 2 x E: normal, abnormal (Sec. 4.1)
        if self.uses_shots:
            self.memory = [F.normalize(m.flatten(0, -2), dim=-1) for m in self._embed(shots.images.to(self.device))]

    def _embed(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per scale ``B x W x E`` window embeddings, then (WinCLIP+) ``B x hw x D`` patch tokens."""
        out = self.backbone.encode_windows(images, self.windows())
        if self.uses_shots:
            tokens = self.backbone(images)  # B x L x h x w x D
            level = self.options.patch_level if -tokens.shape[1] <= self.options.patch_level < tokens.shape[1] else -1
            out.append(tokens[:, level].flatten(1, 2))
        return out

    def text_score(self, emb: torch.Tensor) -> torch.Tensor:
        """``... x E`` embeddings -> ``...`` probability of "abnormal" (Sec. 4.1)."""
        logits = self.options.temperature * F.normalize(emb, dim=-1) @ self.text.T
        return logits.softmax(-1)[..., 1]

    def zero_shot(self, images: torch.Tensor, window_emb: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-shot ``B x h x w`` map (mean of the scales' harmonic maps) and ``B`` image scores."""
        grid = self.backbone.grid_size
        maps = [harmonic_aggregate(self.text_score(e), idx, grid) for e, idx in zip(window_emb, self.windows())]
        image = self.text_score(self.backbone.encode_image(images))  # B
        if self.options.image_scale:
            maps.append(image[:, None, None].expand(-1, *grid))
        return torch.stack(maps).mean(0), image

    def predict_batch(self, images: torch.Tensor | None, tokens: torch.Tensor | None,
                      size: tuple[int, int]) -> Prediction:
        if self.text is None:
            raise RuntimeError(f"{self.name} has no text embeddings yet: fit it first")
        emb = self._embed(images)
        n_scales = len(self.options.scales)
        zero, image = self.zero_shot(images, emb[:n_scales])
        if not self.uses_shots:
            return Prediction(_upsample(zero, size), image)
        few = self.few_shot(emb)
        score = (image + few.flatten(1).amax(1)) / 2
        return Prediction(_upsample((zero + few) / 2, size), score,
                          {"text": _upsample(zero, size), "memory": _upsample(few, size)})

    def few_shot(self, emb: list[torch.Tensor]) -> torch.Tensor:
        """WinCLIP+'s few-shot ``B x h x w`` map (Sec. 4.3): per scale, ``min_r (1 - <f, r>) / 2``
        over the memory, window scores aggregated harmonically; mean over scales."""
        grid = self.backbone.grid_size
        windows = self.windows() + [None]
        maps = []
        for e, mem, idx in zip(emb, self.memory, windows):
            e = F.normalize(e, dim=-1)
            dist = ((1 - e @ mem.T) / 2).amin(-1)  # B x W (or B x hw)
            maps.append(dist.reshape(-1, *grid) if idx is None else harmonic_aggregate(dist, idx, grid))
        return torch.stack(maps).mean(0)


@register_method("winclip_plus")
class WinCLIPPlus(WinCLIP):
    """WinCLIP+ (Jeong et al., CVPR 2023): WinCLIP fused with a few-shot memory of the shots' windows and patches."""

    uses_shots = True
    #: scored beside the fused map: the zero-shot (``text``) and the few-shot (``memory``) maps
    map_names = ("text", "memory")
    paper_key = "winclip_plus"  # Table I's WinCLIP+ row, the paper's quoted values


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``B x h x w`` -> ``B x H x W``, bilinear."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


__all__ = ["WinCLIP", "WinCLIPConfig", "WinCLIPPlus", "harmonic_aggregate", "window_indices"]
