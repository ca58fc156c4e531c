"""The full VTFusion network (paper Fig. 2): frozen CLIP, AIE, prototypes, ATE and MPF.

One module built from one config. ``forward(images)`` returns every map the book shows:

* ``vision``: ``M^v`` (Eq. 5), ``B x 1 x h x w``;
* ``text``: ``M^t`` (Eq. 6), ``B x 1 x h x w`` (a sum over ``L`` levels, in (0, L));
* ``fused``: ``M^vt`` (Eq. 7), ``B x 1 x h x w`` (``full`` variant with ``fusion="mpf"``);
* ``final``: ``M^f`` (Eq. 9), ``B x 1 x H x W`` in [0, 1], the pixel anomaly scores;
* ``score``: ``max(M^f)`` per image, ``B``, the image anomaly score (Sec. III-D).

Variants, the rows of the paper's Table II (all share this code):

* ``ate``: text branch only. The AIE's linear maps stay at CLIP's ``ln_post`` + ``proj``
  (frozen), only the ATE adapter trains, and ``M^f`` is ``M^t / L`` upsampled.
* ``ate_aie``: text branch and adaptive image encoder with the boundary losses, no MPF;
  ``M^f`` **[choice]** averages the two maps rescaled to [0, 1] by their ranges:
  ``(M^t / L + M^v / D_max) / 2`` upsampled, ``D_max = 4`` for unit-normalised features.
* ``full``: the paper's VTFusion, ``M^f`` from the MPF module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vtfusion.model.aie import AdaptiveImageEncoder, AIEConfig
from vtfusion.model.ate import AdaptiveTextEncoder, ATEConfig, text_map
from vtfusion.model.mpf import MPFConfig, MultimodalPredictionFusion
from vtfusion.model.prototypes import PrototypeBank, PrototypeConfig

VARIANTS = ("ate", "ate_aie", "full")


@dataclass(frozen=True)
class ModelConfig:
    """Everything trainable in VTFusion and how it is combined.

    Attributes:
        variant: ``full`` (paper), ``ate_aie`` or ``ate``: the rows of Table II.
        aie, prototypes, ate, mpf: the sub-modules' configs.
        seg_weight: ``lambda`` of Eq. 10 **[choice]**: the paper keeps "its default value"
            without stating it; 1.0.
    """

    variant: str = "full"
    aie: AIEConfig = field(default_factory=AIEConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    ate: ATEConfig = field(default_factory=ATEConfig)
    mpf: MPFConfig = field(default_factory=MPFConfig)
    seg_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"ModelConfig.variant must be one of {', '.join(VARIANTS)} (Table II rows), "
                             f"got {self.variant!r}")
        if self.seg_weight < 0:
            raise ValueError(f"ModelConfig.seg_weight (lambda of Eq. 10) must be >= 0, got {self.seg_weight}")


class VTFusion(nn.Module):
    """VTFusion on a frozen backbone.

    Args:
        backbone: a :class:`~vtfusion.backbone.FrozenCLIP` (never trained, never saved
            in checkpoints).
        cfg: the :class:`ModelConfig`.
        object_name: the word ``[o]`` of the prompts ("a photo of a damaged [o]").
    """

    def __init__(self, backbone: nn.Module, cfg: ModelConfig = ModelConfig(), object_name: str = "object"):
        super().__init__()
        self.cfg = cfg
        self.object_name = object_name
        self.backbone = backbone
        self.aie = AdaptiveImageEncoder.from_backbone(backbone, cfg.aie)
        self.bank = PrototypeBank(backbone.num_levels, backbone.embed_dim, backbone.grid_size, cfg.prototypes)
        self.ate = AdaptiveTextEncoder.from_backbone(backbone, cfg.ate)
        self.mpf = MultimodalPredictionFusion(cfg.mpf) if cfg.variant == "full" else None
        if cfg.variant == "ate":
            self.aie.requires_grad_(False)  # Table II row 1: CLIP's own projection, no AIE training

    # -- parameter groups for Algorithm 1's optimiser ------------------------------------
    def parameter_groups(self, lr_aie: float, lr_ate: float, lr_mpf: float) -> list[dict]:
        """Adam groups with the paper's per-module learning rates (Sec. IV-A)."""
        groups = [{"name": "aie", "params": [p for p in self.aie.parameters() if p.requires_grad], "lr": lr_aie},
                  {"name": "ate", "params": [p for p in self.ate.parameters() if p.requires_grad], "lr": lr_ate}]
        if self.mpf is not None:
            groups.append({"name": "mpf", "params": list(self.mpf.parameters()), "lr": lr_mpf})
        return [g for g in groups if g["params"]]

    @property
    def uses_vision(self) -> bool:
        return self.cfg.variant != "ate"

    # -- prototypes ------------------------------------------------------------------------
    @torch.no_grad()
    def build_prototypes(self, shot_tokens: torch.Tensor) -> None:
        """Eq. 1 from the k shots' backbone tokens (``k x L x h x w x D``); frozen afterwards."""
        was_training = self.aie.training
        self.aie.eval()
        self.bank.build(self.aie(shot_tokens))
        self.aie.train(was_training)

    # -- forward ---------------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        """``F^t`` (``2 x c``): cached CLIP ensemble embeddings through the ATE adapter."""
        return self.ate.text_features(self.object_name, self.backbone)

    def maps_from_features(self, features: torch.Tensor, out_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """All maps from AIE features ``B x L x c x h x w`` (see the module docstring)."""
        levels = features.shape[1]
        out = {"text": text_map(features, self.text_features(), self.cfg.ate.logit_scale)}
        if self.uses_vision:
            out["vision"] = self.bank(features)
        if self.mpf is not None:
            fused = self.mpf(out["vision"], out["text"], out_size)
            if "fused" in fused:
                out["fused"] = fused["fused"]
            out["final"] = fused["final"]
        else:
            grid_map = out["text"] / levels
            if self.uses_vision:
                grid_map = 0.5 * (grid_map + out["vision"] / self.max_distance)
            out["final"] = F.interpolate(grid_map, size=out_size, mode="bilinear", align_corners=False)
        out["score"] = out["final"].flatten(1).amax(dim=1)
        return out

    @property
    def max_distance(self) -> float:
        """Upper bound of ``D`` with unit-normalised features (4); 1 otherwise."""
        return 4.0 if self.cfg.prototypes.feature_norm == "level_l2" else 1.0

    def forward_tokens(self, tokens: torch.Tensor, out_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Maps from precomputed backbone tokens (``B x L x h x w x D``): the cacheable path."""
        return self.maps_from_features(self.aie(tokens), out_size)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``B x 3 x S x S`` images in [0, 1] -> maps and scores (module docstring)."""
        return self.forward_tokens(self.backbone(images), tuple(images.shape[-2:]))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 32) -> dict[str, torch.Tensor]:
        """Inference in eval mode and batches; returns CPU tensors of all maps and scores."""
        was_training = self.training
        self.eval()
        device = next(self.aie.parameters()).device
        parts: dict[str, list[torch.Tensor]] = {}
        for i in range(0, len(images), batch_size):
            out = self(images[i:i + batch_size].to(device))
            for k, v in out.items():
                parts.setdefault(k, []).append(v.float().cpu())
        self.train(was_training)
        return {k: torch.cat(v) for k, v in parts.items()}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint needs: trainable parameters, BN statistics, prototypes.

        The frozen backbone is excluded (it is rebuilt from the config).
        """
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}
