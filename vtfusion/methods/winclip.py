"""WinCLIP and WinCLIP+ (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and
Segmentation", CVPR 2023) as registered methods, written for open_clip 3.x.

Written from the paper, on this package's frozen backbone
(:meth:`vtfusion.backbone.FrozenCLIP.encode_windows`):

- **Window embeddings** (Sec. 4.2): every ``s x s`` window of patches (stride 1) at the
  small (``s = 2``) and mid (``s = 3``) scales is encoded by CLIP's image encoder on its
  own patches only, plus the whole image (the image scale).
- **Compositional prompt ensemble** (Sec. 4.1): the text embedding of a class is the mean
  of the normalised embeddings of its state phrases in every template. By default we reuse
  the package's ensemble (:mod:`vtfusion.prompts`, April-GAN's states and templates, a
  superset of WinCLIP's); ``prompts="winclip"`` takes WinCLIP's own states and templates
  (:data:`WINCLIP_TEMPLATES`). The score of an embedding is the softmax probability of
  "abnormal" over the two class embeddings (temperature :attr:`WinCLIPConfig.temperature`).
- **Harmonic aggregation** (Sec. 4.2): a patch's score at one scale is the harmonic mean
  of the scores of the windows that contain it (:func:`harmonic_aggregate`); the
  zero-shot map is the mean of the small, mid and image-scale maps (arithmetic by
  default; harmonic with ``scale_average="harmonic"``, as anomalib computes it).
- **WinCLIP+** (Sec. 4.3): a reference memory of the k shots' window embeddings at each
  scale and of their penultimate-level patch tokens; a test window's (patch's) few-shot
  score is ``min_r (1 - <f, r>) / 2`` over the memory of its scale; window scores are
  aggregated harmonically onto patches; the few-shot map is the mean over scales. The
  final map is the mean of the zero-shot and few-shot maps; the image score is the mean
  of the image-scale text score and the few-shot map's maximum.

Maps are computed on the ``h x w`` patch grid and upsampled bilinearly to the image size.

Cross-checked against anomalib 2.7.0's ``WinClipModel`` on identical weights and images by
``bench/bench_peer_winclip_parity.py``: with ``WinCLIPConfig.anomalib_compatible()`` the
window embeddings, text embeddings, maps and scores agree to float32 rounding. The options
that differ from anomalib by default (prompt ensemble, how prompt embeddings are averaged,
temperature, cross-scale mean, patch tokens of the memory) are documented on
:class:`WinCLIPConfig`.
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

WINCLIP_PROMPTS = "winclip"
PROMPT_AVERAGES = ("normalised", "raw")
SCALE_AVERAGES = ("arithmetic", "harmonic")
#: options added for the anomalib cross-check; left out of :meth:`WinCLIP.config` while at
#: their defaults, so results computed before they existed keep their keys
PARITY_OPTIONS = ("prompt_average", "scale_average", "patch_ln_post")

# WinCLIP's compositional prompt ensemble (Jeong et al., CVPR 2023, Sec. 4.1 and its
# supplement): state words of each class, and templates, in the form anomalib 2.7.0 ships
# them (anomalib/models/image/winclip/prompting.py), so that the cross-check with anomalib
# compares like with like. There, "a jpeg corrupted photo of the {}." is listed twice
# (probably for its "a" variant); kept twice here, weighting it double in the mean.
WINCLIP_NORMAL_STATES: tuple[str, ...] = (
    "{}", "flawless {}", "perfect {}", "unblemished {}",
    "{} without flaw", "{} without defect", "{} without damage",
)
WINCLIP_ABNORMAL_STATES: tuple[str, ...] = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
WINCLIP_TEMPLATES: tuple[str, ...] = tuple(
    [f"a {kind} photo of {det} {{}}." for kind, dets in (
        ("cropped", ("the",)), ("close-up", ("a", "the")), ("bright", ("a", "the")), ("dark", ("the", "a")),
        ("jpeg corrupted", ("the", "the")), ("blurry", ("the", "a"))) for det in dets]
    + ["a photo of a {}.", "a photo of the {}.", "a photo of a small {}.", "a photo of the small {}.",
       "a photo of a large {}.", "a photo of the large {}."]
    + [f"a photo of {det} {{}} for {use}." for use in ("visual inspection", "anomaly detection")
       for det in ("the", "a")]
)


@dataclass(frozen=True)
class WinCLIPConfig:
    """Options of WinCLIP / WinCLIP+.

    Attributes:
        scales: window sides in patches (the paper: 2 and 3 on ViT-B/16+'s 15 x 15 grid).
        stride: window stride in patches (the paper: 1).
        image_scale: add the whole image as a scale (the paper does).
        temperature: the softmax temperature of the text score (CLIP's trained logit scale, 100).
        prompts: which prompt ensemble: a :class:`vtfusion.prompts.PromptConfig` preset
            (``ensemble``, ``paper``) or ``winclip`` (:data:`WINCLIP_NORMAL_STATES`,
            :data:`WINCLIP_ABNORMAL_STATES` x :data:`WINCLIP_TEMPLATES`).
        patch_level: **[choice]** which of the backbone's configured levels gives the patch
            tokens of WinCLIP+'s memory (-2: the penultimate configured level, as the paper's
            penultimate block; the last level when the backbone has one).
        prompt_average: how a class's prompt embeddings become one: ``normalised`` (each
            prompt embedding L2-normalised, then averaged and renormalised: CLIP's zero-shot
            ensembling) or ``raw`` (the raw embeddings averaged, then normalised: anomalib).
        scale_average: how the zero-shot maps of the scales (with the image scale) become
            one: ``arithmetic`` mean or ``harmonic`` mean (anomalib).
        patch_ln_post: apply CLIP's ``ln_post`` to the memory's patch tokens (anomalib takes
            the last block's tokens after ``ln_post``: ``patch_level=-1`` on a backbone whose
            last configured block is the last block, with ``patch_ln_post=True``).

    The defaults are this package's choices; :meth:`anomalib_compatible` returns the
    options that reproduce anomalib 2.7.0's ``WinClipModel``. anomalib's ``TEMPERATURE =
    0.07`` divides the cosine (a logit scale of 1 / 0.07 = 14.3), where ours multiplies by
    CLIP's trained logit scale, 100; the WinCLIP paper's Eq. (1) names a temperature
    without, as far as we know, fixing its value.
    """

    scales: tuple[int, ...] = (2, 3)
    stride: int = 1
    image_scale: bool = True
    temperature: float = 100.0
    prompts: str = "ensemble"
    patch_level: int = -2
    prompt_average: str = "normalised"
    scale_average: str = "arithmetic"
    patch_ln_post: bool = False

    def __post_init__(self) -> None:
        if not self.scales or any(int(s) < 1 for s in self.scales):
            raise ValueError(f"WinCLIPConfig.scales must be window sides >= 1, got {self.scales!r}")
        if self.stride < 1:
            raise ValueError(f"WinCLIPConfig.stride must be >= 1, got {self.stride}")
        if self.temperature <= 0:
            raise ValueError(f"WinCLIPConfig.temperature must be > 0, got {self.temperature}")
        if self.prompts != WINCLIP_PROMPTS:
            PromptConfig(self.prompts)  # validates the preset name
        if self.prompt_average not in PROMPT_AVERAGES:
            raise ValueError(f"WinCLIPConfig.prompt_average must be one of {', '.join(PROMPT_AVERAGES)}, "
                             f"got {self.prompt_average!r}")
        if self.scale_average not in SCALE_AVERAGES:
            raise ValueError(f"WinCLIPConfig.scale_average must be one of {', '.join(SCALE_AVERAGES)}, "
                             f"got {self.scale_average!r}")

    @classmethod
    def anomalib_compatible(cls) -> "WinCLIPConfig":
        """The options under which this WinCLIP computes what anomalib 2.7.0's ``WinClipModel``
        computes (its defaults: scales 2 and 3, stride 1, temperature 0.07, WinCLIP's prompt
        ensemble averaged raw, harmonic cross-scale mean, last-block patch tokens after
        ``ln_post``); with a backbone whose last configured block is the last block."""
        return cls(temperature=1 / 0.07, prompts=WINCLIP_PROMPTS, patch_level=-1, prompt_average="raw",
                   scale_average="harmonic", patch_ln_post=True)

    def differing_from_default(self) -> dict[str, Any]:
        """The options added for the anomalib cross-check that differ from their defaults."""
        default = WinCLIPConfig()
        return {name: getattr(self, name) for name in PARITY_OPTIONS if getattr(self, name) != getattr(default, name)}


def winclip_prompts(object_name: str, preset: str) -> dict[str, list[str]]:
    """Every prompt of each class (``{"normal": [...], "abnormal": [...]}``) for a
    :attr:`WinCLIPConfig.prompts` preset: WinCLIP's own ensemble (Sec. 4.1, every state in
    every template) for ``winclip``, else :func:`vtfusion.prompts.build_prompts`."""
    if preset != WINCLIP_PROMPTS:
        return build_prompts(object_name, PromptConfig(preset))
    if not object_name or not object_name.strip():
        raise ValueError("object_name must be a non-empty word, e.g. 'bottle' (see vtfusion.data.categories)")
    states = {"normal": WINCLIP_NORMAL_STATES, "abnormal": WINCLIP_ABNORMAL_STATES}
    return {cls: [t.format(s.format(object_name)) for s in states[cls] for t in WINCLIP_TEMPLATES]
            for cls in ("normal", "abnormal")}


def class_embeddings(prompt_embeddings: list[torch.Tensor], average: str = "normalised") -> torch.Tensor:
    """WinCLIP's class text embeddings (Sec. 4.1): per class, the ``T_c x E`` embeddings of its
    prompts averaged (after L2-normalising each for ``normalised``, as they are for ``raw``),
    then normalised -> ``C x E``."""
    if average not in PROMPT_AVERAGES:
        raise ValueError(f"WinCLIPConfig.prompt_average must be one of {', '.join(PROMPT_AVERAGES)}, got {average!r}")
    rows = [(F.normalize(e, dim=-1) if average == "normalised" else e).mean(0) for e in prompt_embeddings]
    return F.normalize(torch.stack(rows), dim=-1)


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
    covers (a stride larger than 1) gets 0. Scores are clamped at ``eps`` first: the few-shot
    distances of a window identical to a reference are 0 up to float rounding, some negative,
    and the unclamped harmonic mean of such values can leave [0, 1] (anomalib 2.7.0 returns
    up to 4/3 there; ``bench/bench_peer_winclip_parity.py``).
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
        options = dataclasses.asdict(self.options)
        for name in PARITY_OPTIONS:  # at their defaults: the keys of results computed before them
            if name not in self.options.differing_from_default():
                options.pop(name)
        return {"method": self.name, "backbone": dataclasses.asdict(self.cfg.backbone),
                "image_size": self.cfg.data.image_size, "eval": dataclasses.asdict(self.cfg.eval),
                "options": options}

    def windows(self) -> list[torch.Tensor]:
        """Per scale, the ``W x n`` patch indices of its windows on the backbone's grid."""
        return [window_indices(self.backbone.grid_size, int(s), self.options.stride) for s in self.options.scales]

    def fit_shots(self, shots: Shots) -> None:
        self.text = self.text_embeddings(object_name_for(shots.dataset, shots.category))
        if self.uses_shots:
            self.memory = [F.normalize(m.flatten(0, -2), dim=-1) for m in self._embed(shots.images.to(self.device))]

    def text_embeddings(self, object_name: str) -> torch.Tensor:
        """``2 x E`` normalised class embeddings, normal then abnormal (Sec. 4.1)."""
        prompts = winclip_prompts(object_name, self.options.prompts)
        return class_embeddings([self.backbone.encode_text(prompts[c]) for c in ("normal", "abnormal")],
                                self.options.prompt_average)

    def _embed(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per scale ``B x W x E`` window embeddings, then (WinCLIP+) ``B x hw x D`` patch tokens."""
        out = self.backbone.encode_windows(images, self.windows())
        if self.uses_shots:
            tokens = self.backbone(images)  # B x L x h x w x D
            level = self.options.patch_level if -tokens.shape[1] <= self.options.patch_level < tokens.shape[1] else -1
            patches = tokens[:, level].flatten(1, 2)  # B x hw x D
            if self.options.patch_ln_post:
                with torch.no_grad():
                    patches = self.backbone.clip.visual.ln_post(patches)
            out.append(patches)
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
        stacked = torch.stack(maps)
        if self.options.scale_average == "harmonic":
            return len(maps) / (1 / stacked).sum(0), image
        return stacked.mean(0), image

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


__all__ = ["WINCLIP_ABNORMAL_STATES", "WINCLIP_NORMAL_STATES", "WINCLIP_TEMPLATES", "WinCLIP", "WinCLIPConfig",
           "WinCLIPPlus", "class_embeddings", "harmonic_aggregate", "window_indices", "winclip_prompts"]
