"""Adaptive Text Encoder, ATE, and the text-guided map (paper Sec. III-C, Eq. 6; DESIGN §4).

1. Prompts per class (normal, abnormal) from :mod:`vtfusion.prompts`; the frozen CLIP
   text encoder embeds them; embeddings are L2-normalised, averaged per class and
   renormalised: the *class embeddings*, ``2 x c``. They depend only on the object word,
   the prompt config and the backbone, so they are computed once per category and cached
   in the ATE (not per batch).
2. A trainable residual MLP adapter refines them ("a text adapter, i.e. an MLP layer");
   its last layer starts at zero, so an untrained ATE returns CLIP's ensemble embeddings.
   Output ``F^t`` (``2 x c``, L2-normalised rows; row 0 normal, row 1 abnormal).
3. Eq. 6: ``M^t = sum_l softmax(F_l^v F^t^T)[abnormal]`` with L2-normalised features and
   CLIP's logit scale 100, one ``h x w`` map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

import torch
import torch.nn.functional as F
from torch import nn

from vtfusion.prompts import CLASSES, PromptConfig, build_prompts

ADAPTERS = ("mlp", "none")
ADAPTER_INITS = ("zero", "default")
IMAGE_FEATURES = ("aie", "clip")
ABNORMAL = CLASSES.index("abnormal")


@dataclass(frozen=True)
class ATEConfig:
    """Adaptive text encoder options (DESIGN §4).

    Attributes:
        prompts: **[choice]** the prompt ensemble (:class:`vtfusion.prompts.PromptConfig`).
        adapter: **[choice]** ``mlp``: residual two-layer MLP on the class embeddings
            (paper: "an MLP layer"); ``none``: frozen CLIP text embeddings (ablation).
        adapter_hidden_ratio: **[choice]** hidden width of the adapter as a fraction of the
            embedding width (0.25, as in CLIP-Adapter).
        adapter_init: **[choice]** ``zero``: the adapter's last layer starts at zero, so the
            untrained ATE returns CLIP's ensemble embeddings exactly; ``default``: PyTorch init.
        logit_scale: **[choice]** the temperature of Eq. 6's softmax; 100 is the value
            CLIP's learned ``logit_scale.exp()`` is clamped to, i.e. CLIP's zero-shot scale.
        image_features: **[choice]** the image features Eq. 6 compares with ``F^t``.
            ``aie``: the AIE's output ``F^v`` (the paper); ``clip``, a departure: CLIP's own
            projection of the frozen tokens (``ln_post``, ``proj``), which training never
            moves. The AIE is shared with the vision branch, whose losses (Eqs. 2-4) pull
            its features away from CLIP's joint space; on a pocket CLIP whose untrained
            text map localises real defects, that inverts the text map within 100
            iterations while the ``ate`` variant (AIE untrained) keeps it (chapter 00b).
    """

    prompts: PromptConfig = field(default_factory=PromptConfig)
    adapter: str = "mlp"
    adapter_hidden_ratio: float = 0.25
    adapter_init: str = "zero"
    logit_scale: float = 100.0
    image_features: str = "aie"

    def __post_init__(self) -> None:
        if self.image_features not in IMAGE_FEATURES:
            raise ValueError(f"ATEConfig.image_features must be one of {', '.join(IMAGE_FEATURES)}, "
                             f"got {self.image_features!r}")
        if self.adapter not in ADAPTERS:
            raise ValueError(f"ATEConfig.adapter must be one of {', '.join(ADAPTERS)}, got {self.adapter!r}")
        if self.adapter_init not in ADAPTER_INITS:
            raise ValueError(f"ATEConfig.adapter_init must be one of {', '.join(ADAPTER_INITS)}, "
                             f"got {self.adapter_init!r}")
        if not self.adapter_hidden_ratio > 0:
            raise ValueError(f"ATEConfig.adapter_hidden_ratio must be > 0, got {self.adapter_hidden_ratio}")
        if not self.logit_scale > 0:
            raise ValueError(f"ATEConfig.logit_scale must be > 0, got {self.logit_scale}")


class TextAdapter(nn.Module):
    """Residual MLP: ``x + fc2(relu(fc1(x)))``; ``fc2`` zero-initialised -> identity at start.

    Shapes: ``... x c`` -> ``... x c``.
    """

    def __init__(self, dim: int, hidden: int, zero_init: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        if zero_init:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


def ensemble_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """One class embedding from its prompts': normalise each, average, renormalise. ``T x c`` -> ``c``."""
    return F.normalize(F.normalize(embeddings, dim=-1).mean(dim=0), dim=-1)


class AdaptiveTextEncoder(nn.Module):
    """ATE: cached CLIP class embeddings of the prompt ensemble, then the trainable adapter.

    ``forward(class_embeddings)``: ``2 x c`` (or ``B x 2 x c``) -> ``F^t`` of the same shape,
    rows L2-normalised. :meth:`text_features` does both steps for an object word.
    """

    def __init__(self, embed_dim: int, cfg: ATEConfig = ATEConfig()):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = embed_dim
        if cfg.adapter == "mlp":
            hidden = max(1, round(embed_dim * cfg.adapter_hidden_ratio))
            self.adapter: nn.Module = TextAdapter(embed_dim, hidden, zero_init=cfg.adapter_init == "zero")
        else:
            self.adapter = nn.Identity()
        # (object word, prompt config, backbone id) -> 2 x c class embeddings. A plain dict,
        # not a buffer: it is derived data, recomputed after loading a checkpoint.
        self._cache: dict[Hashable, torch.Tensor] = {}

    @classmethod
    def from_backbone(cls, backbone: nn.Module, cfg: ATEConfig = ATEConfig()) -> "AdaptiveTextEncoder":
        return cls(backbone.embed_dim, cfg)

    def class_embeddings(self, object_name: str, backbone: nn.Module) -> torch.Tensor:
        """CLIP's ensemble embedding per class, ``2 x c`` (row 0 normal, row 1 abnormal). Cached.

        Args:
            object_name: the prompt word ``[o]`` (:func:`vtfusion.prompts.object_name_for`).
            backbone: a :class:`~vtfusion.backbone.FrozenCLIP` (anything with
                ``encode_text(list[str]) -> T x c`` and a ``source`` string).
        """
        key = self._cache_key(object_name, backbone)
        if key not in self._cache:
            prompts = build_prompts(object_name, self.cfg.prompts)
            emb = torch.stack([ensemble_embedding(backbone.encode_text(prompts[c])) for c in CLASSES])
            if emb.shape[-1] != self.embed_dim:
                raise ValueError(f"text embeddings are {emb.shape[-1]}-wide but the ATE was built for "
                                 f"{self.embed_dim}: build it with AdaptiveTextEncoder.from_backbone(backbone)")
            self._cache[key] = emb.detach()
        return self._cache[key]

    def _cache_key(self, object_name: str, backbone: nn.Module) -> Hashable:
        return (object_name, self.cfg.prompts, getattr(backbone, "source", None) or id(backbone))

    def has_class_embeddings(self, object_name: str, backbone: nn.Module) -> bool:
        """Whether :meth:`class_embeddings` would return without running the text encoder."""
        return self._cache_key(object_name, backbone) in self._cache

    def set_class_embeddings(self, object_name: str, backbone: nn.Module, embeddings: torch.Tensor) -> None:
        """Prime the cache with embeddings computed earlier (:class:`vtfusion.cache.FeatureCache`
        keeps them on disk, keyed by the backbone's weights and the prompts)."""
        if tuple(embeddings.shape) != (len(CLASSES), self.embed_dim):
            raise ValueError(f"class embeddings must be {len(CLASSES)} x {self.embed_dim}, "
                             f"got {tuple(embeddings.shape)}")
        self._cache[self._cache_key(object_name, backbone)] = embeddings.detach()

    def clear_cache(self) -> None:
        self._cache.clear()

    def forward(self, class_embeddings: torch.Tensor) -> torch.Tensor:
        """``F^t``: adapter on the class embeddings, rows L2-normalised. ``... x 2 x c`` -> same."""
        x = class_embeddings.to(next(self.parameters(), class_embeddings).device)
        return F.normalize(self.adapter(x), dim=-1)

    def text_features(self, object_name: str, backbone: nn.Module) -> torch.Tensor:
        """``F^t`` (``2 x c``) for an object word: cached class embeddings + adapter."""
        return self(self.class_embeddings(object_name, backbone))


def text_probabilities(features: torch.Tensor, text_features: torch.Tensor,
                       logit_scale: float = 100.0) -> torch.Tensor:
    """Per-level abnormal probability, the summand of Eq. 6: ``softmax(s * F_l^v F^t^T)[abnormal]``.

    Args:
        features: ``B x L x c x h x w`` AIE features (normalised here over ``c``).
        text_features: ``2 x c`` or ``B x 2 x c`` (normalised here; row 1 abnormal).
        logit_scale: ``s``, 100 as in CLIP.

    Returns:
        ``B x L x h x w`` in (0, 1).
    """
    if features.ndim != 5:
        raise ValueError(f"expected AIE features B x L x c x h x w, got shape {tuple(features.shape)}")
    if text_features.shape[-2:] != (len(CLASSES), features.shape[2]):
        raise ValueError(f"text features must be [B x] 2 x {features.shape[2]}, got {tuple(text_features.shape)}")
    v = F.normalize(features, dim=2)
    t = F.normalize(text_features, dim=-1)
    if t.ndim == 2:
        logits = torch.einsum("blchw,kc->blhwk", v, t)
    else:
        logits = torch.einsum("blchw,bkc->blhwk", v, t)
    return (logit_scale * logits).softmax(dim=-1)[..., ABNORMAL]


def text_map(features: torch.Tensor, text_features: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """Eq. 6: ``M^t = sum_l softmax(F_l^v (F^t)^T)`` (abnormal channel): ``B x 1 x h x w``, in (0, L).

    The paper sums over the ``L`` levels (no mean), so values range up to ``L``.
    """
    return text_probabilities(features, text_features, logit_scale).sum(dim=1, keepdim=True)
