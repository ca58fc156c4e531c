"""Adaptive Image Encoder, AIE (paper Sec. III-C; DESIGN §3).

Per level ``l`` the frozen backbone's patch tokens go through

1. a trainable *linear map* into the joint image-text space: ``LayerNorm`` + ``Linear``
   (``D -> c``), initialised from CLIP's own ``ln_post`` and ``proj`` **[choice]**, so that
   before any training the patch features are exactly CLIP's projected tokens and the
   text prompts can already be compared with them (zero-shot, step 0);
2. the *feature adaptor*, "an additional convolutional layer placed at the end of the
   linear layer": a residual 3 x 3 conv **[choice]** whose weights start at zero, so
   that the adaptor is the identity at initialisation.

Output ``F^v = (F_1^v, ..., F_L^v)`` as one tensor ``B x L x c x h x w`` (``c = 640``,
``h = w = 15`` for ViT-B-16-plus-240).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

LINEAR_INITS = ("clip", "random")
ADAPTORS = ("conv", "none")
ADAPTOR_INITS = ("zero", "default")


@dataclass(frozen=True)
class AIEConfig:
    """Adaptive image encoder options (DESIGN §3).

    Attributes:
        linear_init: **[choice]** ``clip``: each level's linear map starts as CLIP's
            ``ln_post`` + ``proj`` (features live in CLIP's joint space from step 0);
            ``random``: default PyTorch init (ablation; zero-shot text alignment is lost).
        linear_bias: **[choice]** the linear map has a bias (zero-initialised, so the
            ``clip`` init is still exact). CLIP's ``proj`` has none.
        adaptor: **[choice]** ``conv``: residual conv feature adaptor (paper); ``none``:
            linear maps only (ablation).
        adaptor_kernel: **[choice]** kernel size of the adaptor conv (odd; 3 by default:
            the paper says "a convolutional layer" without size).
        adaptor_init: **[choice]** ``zero``: the conv's weight and bias start at zero, so
            the residual adaptor is the identity at initialisation; ``default``: PyTorch
            init (the adaptor perturbs CLIP's features from the start).
        share_adaptor: **[choice]** one adaptor for all levels instead of one per level.
    """

    linear_init: str = "clip"
    linear_bias: bool = True
    adaptor: str = "conv"
    adaptor_kernel: int = 3
    adaptor_init: str = "zero"
    share_adaptor: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("linear_init", LINEAR_INITS), ("adaptor", ADAPTORS), ("adaptor_init", ADAPTOR_INITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"AIEConfig.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.adaptor_kernel < 1 or self.adaptor_kernel % 2 == 0:
            raise ValueError(f"AIEConfig.adaptor_kernel must be a positive odd integer (same-size output), "
                             f"got {self.adaptor_kernel}")


class LinearMap(nn.Module):
    """One level's map from backbone tokens to the joint space: ``LayerNorm`` then ``Linear``.

    Shapes: ``... x D`` -> ``... x c``.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)

    @torch.no_grad()
    def init_from_clip(self, ln_post: nn.LayerNorm, proj: torch.Tensor) -> None:
        """Copy CLIP's ``ln_post`` and ``proj`` (``D x c``); zero the bias. Makes ``self(x) == ln_post(x) @ proj``."""
        if tuple(proj.shape) != (self.linear.in_features, self.linear.out_features):
            raise ValueError(f"CLIP proj has shape {tuple(proj.shape)}, this map is "
                             f"{self.linear.in_features} -> {self.linear.out_features}")
        self.norm.load_state_dict(ln_post.state_dict())
        self.norm.eps = ln_post.eps
        self.linear.weight.copy_(proj.t())
        if self.linear.bias is not None:
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


class ConvAdaptor(nn.Module):
    """Residual conv feature adaptor: ``x + conv(x)``.

    With ``zero_init`` the conv starts at zero, so the adaptor starts as the identity
    (its weight still receives gradient, since that gradient depends on ``x``, not on the
    weight). Shapes: ``B x c x h x w`` -> ``B x c x h x w``.
    """

    def __init__(self, channels: int, kernel_size: int = 3, zero_init: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        if zero_init:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class AdaptiveImageEncoder(nn.Module):
    """AIE: per-level linear maps, then the feature adaptor.

    ``forward(tokens)``: ``B x L x h x w x D`` backbone tokens -> ``B x L x c x h x w``
    features ``F^v``. :meth:`project` gives the linear maps' output alone (``B x L x c x h x w``),
    i.e. the features before adaptation.
    """

    def __init__(self, num_levels: int, in_dim: int, embed_dim: int, cfg: AIEConfig = AIEConfig()):
        super().__init__()
        self.cfg = cfg
        self.num_levels = num_levels
        self.in_dim = in_dim
        self.embed_dim = embed_dim
        self.maps = nn.ModuleList(LinearMap(in_dim, embed_dim, cfg.linear_bias) for _ in range(num_levels))
        if cfg.adaptor == "conv":
            n = 1 if cfg.share_adaptor else num_levels
            self.adaptors = nn.ModuleList(
                ConvAdaptor(embed_dim, cfg.adaptor_kernel, zero_init=cfg.adaptor_init == "zero") for _ in range(n))
        else:
            self.adaptors = nn.ModuleList()

    @classmethod
    def from_backbone(cls, backbone: nn.Module, cfg: AIEConfig = AIEConfig()) -> "AdaptiveImageEncoder":
        """AIE sized for a :class:`~vtfusion.backbone.FrozenCLIP`, linear maps from its ``ln_post`` + ``proj``."""
        aie = cls(backbone.num_levels, backbone.width, backbone.embed_dim, cfg)
        if cfg.linear_init == "clip":
            visual = backbone.clip.visual
            for m in aie.maps:
                m.init_from_clip(visual.ln_post, visual.proj)
        return aie

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Linear maps only: ``B x L x h x w x D`` -> ``B x L x c x h x w``."""
        if tokens.ndim != 5 or tokens.shape[1] != self.num_levels or tokens.shape[-1] != self.in_dim:
            raise ValueError(f"AIE expects backbone tokens B x {self.num_levels} x h x w x {self.in_dim}, "
                             f"got {tuple(tokens.shape)} (do the backbone layers and the AIE levels agree?)")
        return torch.stack([m(tokens[:, i]).permute(0, 3, 1, 2) for i, m in enumerate(self.maps)], dim=1)

    def adapt(self, projected: torch.Tensor) -> torch.Tensor:
        """Feature adaptor on projected features: ``B x L x c x h x w`` -> same shape."""
        if not len(self.adaptors):
            return projected
        levels = [self.adaptors[0 if self.cfg.share_adaptor else i](projected[:, i])
                  for i in range(self.num_levels)]
        return torch.stack(levels, dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.adapt(self.project(tokens))
