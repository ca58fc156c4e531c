"""The full VTFusion network (paper Fig. 2): frozen CLIP, AIE, prototypes, ATE and MPF.

One module built from one config. ``forward(images)`` returns every map the book shows:

* ``vision``: ``M^v`` (Eq. 5), ``B x 1 x h x w``;
* ``text``: ``M^t`` (Eq. 6), ``B x 1 x h x w`` (a sum over ``L`` levels, in (0, L));
* ``fused``: ``M^vt`` (Eq. 7), ``B x 1 x h x w`` (``full`` variant with ``fusion="mpf"``);
* ``final``: ``M^f`` (Eq. 9), ``B x 1 x H x W`` in [0, 1], the pixel anomaly scores;
* ``score``: ``max(M^f)`` per image, ``B``, the image anomaly score (Sec. III-D), or
  **[choice, project]** the maximum of ``M^f`` after a Gaussian filter
  (``ModelConfig.image_score``).

Variants, the rows of the paper's Table II (all share this code):

* ``ate``: text branch only. The AIE's linear maps stay at CLIP's ``ln_post`` + ``proj``
  (frozen), only the ATE adapter trains, and ``M^f`` is ``M^t / L`` upsampled.
* ``ate_aie``: text branch and adaptive image encoder with the boundary losses, no MPF;
  ``M^f`` **[choice]** (``ModelConfig.ate_aie_fusion``) averages the two maps, either
  rescaled to [0, 1] by their ranges, ``(M^t / L + M^v / D_max) / 2`` (``range``;
  ``D_max = 4`` for unit-normalised squared distances, which the vision map rarely
  approaches, so it is compressed), or standardised by the mean and standard deviation
  each map has on the training normals (``standardised``, :meth:`VTFusion.calibrate`).
* ``full``: the paper's VTFusion, ``M^f`` from the MPF module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vtfusion.metrics import gaussian_smooth
from vtfusion.model.aie import AdaptiveImageEncoder, AIEConfig
from vtfusion.model.ate import AdaptiveTextEncoder, ATEConfig, text_map
from vtfusion.model.mpf import MPFConfig, MultimodalPredictionFusion
from vtfusion.model.prototypes import PrototypeBank, PrototypeConfig

VARIANTS = ("ate", "ate_aie", "full")
IMAGE_SCORES = ("max", "smoothed_max")
ATE_AIE_FUSIONS = ("range", "standardised")
FINAL_MAPS = ("mpf", "mpf_vision", "mpf_knn")


@dataclass(frozen=True)
class ModelConfig:
    """Everything trainable in VTFusion and how it is combined.

    Attributes:
        variant: ``full`` (paper), ``ate_aie`` or ``ate``: the rows of Table II.
        aie, prototypes, ate, mpf: the sub-modules' configs.
        seg_weight: ``lambda`` of Eq. 10 **[choice]**: the paper keeps "its default value"
            without stating it; 1.0.
        ate_aie_fusion: **[choice]** how the ``ate_aie`` row (Table II, no MPF) combines
            ``M^v`` and ``M^t``: ``range`` (each divided by its largest possible value) or
            ``standardised`` (each standardised by its statistics on the training normals).
        final_map: **[choice, project]** ``M^f`` of the ``full`` variant: ``mpf``, the
            segmentation network's output (Eq. 9, the paper), or ``mpf_vision``, its mean
            with the vision map squashed to [0, 1] by its statistics on the training
            normals, ``(M^f + sigmoid((M^v - mu_v) / sigma_v)) / 2``: a late fusion that
            keeps the localisation of ``M^v`` when the segmentation network, trained on
            synthetic anomalies only, ends below it (the training chapter measures this);
            or ``mpf_knn``, the same mean with the squashed nearest-neighbour distance of
            the *frozen backbone tokens* to every shot token (the training-free patch-kNN
            map, :mod:`vtfusion.patch_knn`), ``(M^f + sigmoid((M^knn - mu) / sigma)) / 2``:
            the projection into the joint space (``ln_post`` + ``proj``, the AIE's start)
            costs localisation that the raw tokens keep, so this term skips it.
        late_mean_weight: **[choice, project]** the weight ``w`` of the squashed map in
            the late mean of ``mpf_vision`` and ``mpf_knn``:
            ``(1 - w) M^f + w sigmoid(...)``; 0.5, the plain mean, by default. The
            segmentation loss sees the weighted mean, so ``w`` is a training choice; it
            must lie in (0, 1), as at ``w = 1`` the segmentation network gets no gradient.
        image_score: **[choice, project]** the image anomaly score: ``max``, the maximum
            of ``M^f`` (Sec. III-D, the paper), or ``smoothed_max``, the maximum of ``M^f``
            filtered by a Gaussian of ``image_score_sigma`` pixels, so that a single
            false-alarm pixel counts less than a blob. The pixel map is never smoothed
            by this option (``EvalConfig.smoothing_sigma`` does that, for both).
        image_score_sigma: the Gaussian's sigma in pixels for ``smoothed_max``.
    """

    variant: str = "full"
    aie: AIEConfig = field(default_factory=AIEConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    ate: ATEConfig = field(default_factory=ATEConfig)
    mpf: MPFConfig = field(default_factory=MPFConfig)
    seg_weight: float = 1.0
    ate_aie_fusion: str = "range"
    final_map: str = "mpf"
    late_mean_weight: float = 0.5
    image_score: str = "max"
    image_score_sigma: float = 4.0

    def __post_init__(self) -> None:
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"ModelConfig.image_score must be one of {', '.join(IMAGE_SCORES)}, "
                             f"got {self.image_score!r}")
        if self.image_score_sigma <= 0:
            raise ValueError(f"ModelConfig.image_score_sigma must be > 0, got {self.image_score_sigma}")
        if self.final_map not in FINAL_MAPS:
            raise ValueError(f"ModelConfig.final_map must be one of {', '.join(FINAL_MAPS)}, "
                             f"got {self.final_map!r}")
        if not 0.0 < self.late_mean_weight < 1.0:
            raise ValueError("ModelConfig.late_mean_weight (the squashed map's weight in the late mean) "
                             f"must lie strictly between 0 and 1, got {self.late_mean_weight}")
        if self.ate_aie_fusion not in ATE_AIE_FUSIONS:
            raise ValueError(f"ModelConfig.ate_aie_fusion must be one of {', '.join(ATE_AIE_FUSIONS)}, "
                             f"got {self.ate_aie_fusion!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"ModelConfig.variant must be one of {', '.join(VARIANTS)} (Table II rows), "
                             f"got {self.variant!r}")
        if self.seg_weight < 0:
            raise ValueError(f"ModelConfig.seg_weight (lambda of Eq. 10) must be >= 0, got {self.seg_weight}")


def tokens_as_features(tokens: torch.Tensor) -> torch.Tensor:
    """Backbone tokens in the AIE features' layout: ``B x L x h x w x D`` -> ``B x L x D x h x w``."""
    return tokens.permute(0, 1, 4, 2, 3)


def squash(grid_map: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
           out_size: tuple[int, int]) -> torch.Tensor:
    """``sigmoid((M - mean) / std)`` of a ``B x 1 x h x w`` map, upsampled to ``out_size``."""
    up = F.interpolate(grid_map, size=out_size, mode="bilinear", align_corners=False)
    return torch.sigmoid((up - mean) / std)


def distance_stats(distances: torch.Tensor, unseen: bool, max_distance: float) -> list[torch.Tensor]:
    """``[mean, std]`` of a distance map on the training normals, for :func:`squash`.

    ``unseen``: the images are not in the bank (left out, or augmented copies). Otherwise
    (the single shot, k = 1, with ``calibration="shots"``) the distances are the shots' own to a
    bank that holds them, too small; the std is then floored at 5% of ``max_distance``.
    """
    floor = 1e-6 if unseen else 0.05 * max_distance
    return [distances.mean(), distances.std(unbiased=False).clamp_min(floor)]


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
        grid = backbone.grid_size
        self.mpf = MultimodalPredictionFusion(cfg.mpf, grid[0] * grid[1]) if cfg.variant == "full" else None
        # mean and std of M^t / L and M^v on the training normals (calibrate()): ate_aie's
        # "standardised" fusion reads them.
        self.register_buffer("map_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        self.token_bank: PrototypeBank | None = None
        if cfg.final_map == "mpf_knn" and self.mpf is not None:
            # every shot token, per level L2-normalised: the patch-kNN map on raw tokens
            self.token_bank = PrototypeBank(backbone.num_levels, backbone.width, grid,
                                            PrototypeConfig(bank="memory"))
            # mean and std of that map on the training normals (calibrate())
            self.register_buffer("knn_stats", torch.tensor([0.0, 1.0]))
        if cfg.variant == "ate":
            self.aie.requires_grad_(False)  # Table II row 1: CLIP's own projection, no AIE training

    # -- parameter groups for Algorithm 1's optimiser ------------------------------------
    def parameter_groups(self, lr_aie: float, lr_ate: float, lr_mpf: float,
                         adaptor_lr_scale: float = 1.0) -> list[dict]:
        """Adam groups with the paper's per-module learning rates (Sec. IV-A).

        The AIE's feature adaptor is its own group at ``adaptor_lr_scale * lr_aie`` (equal
        to the paper's single AIE rate by default).
        """
        adaptor = [p for p in self.aie.adaptors.parameters() if p.requires_grad]
        adaptor_ids = {id(p) for p in adaptor}
        linear = [p for p in self.aie.parameters() if p.requires_grad and id(p) not in adaptor_ids]
        groups = [{"name": "aie", "params": linear, "lr": lr_aie},
                  {"name": "aie_adaptor", "params": adaptor, "lr": lr_aie * adaptor_lr_scale},
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
        if self.token_bank is not None:
            self.token_bank.build(tokens_as_features(shot_tokens))

    # -- forward ---------------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        """``F^t`` (``2 x c``): cached CLIP ensemble embeddings through the ATE adapter."""
        return self.ate.text_features(self.object_name, self.backbone)

    def maps_from_features(self, features: torch.Tensor, out_size: tuple[int, int],
                           exclude: torch.Tensor | None = None,
                           tokens: torch.Tensor | None = None,
                           text_features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All maps from AIE features ``B x L x c x h x w`` (see the module docstring).

        ``exclude``: optional ``B`` shot indices, for leave-one-out vision maps during
        training (:meth:`~vtfusion.model.prototypes.PrototypeBank.distances`).
        ``tokens``: the backbone tokens the features came from (``B x L x h x w x D``);
        needed by ``final_map="mpf_knn"``, which adds the map ``knn``.
        ``text_features``: ``F^t`` (``2 x c``) computed earlier, e.g. folded into an
        exported graph as a constant (:mod:`vtfusion.deploy`); default :meth:`text_features`.
        """
        levels = features.shape[1]
        if text_features is None:
            text_features = self.text_features()
        out = {"text": text_map(self.text_image_features(features, tokens), text_features,
                                self.cfg.ate.logit_scale)}
        if self.uses_vision:
            out["vision"] = self.bank(features, exclude)
        if self.mpf is not None:
            fused = self.mpf(out["vision"], out["text"], out_size)
            if "fused" in fused:
                out["fused"] = fused["fused"]
            out["final"] = fused["final"]
            if self.cfg.final_map == "mpf_vision":
                out["final"] = self.late_mean(out["final"], self.squashed_vision(out["vision"], out_size))
            elif self.token_bank is not None:
                if tokens is None:
                    raise ValueError("final_map='mpf_knn' needs the backbone tokens: "
                                     "call maps_from_features(..., tokens=tokens)")
                out["knn"] = self.token_bank(tokens_as_features(tokens), exclude)
                squashed = squash(out["knn"], self.knn_stats[0], self.knn_stats[1], out_size)
                out["final"] = self.late_mean(out["final"], squashed)
        else:
            grid_map = out["text"] / levels
            if self.uses_vision:
                grid_map = self._combine(grid_map, out["vision"])
            out["final"] = F.interpolate(grid_map, size=out_size, mode="bilinear", align_corners=False)
        out["score"] = self.image_scores(out["final"])
        return out

    def text_image_features(self, features: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """What Eq. 6 compares with ``F^t``, ``B x L x c x h x w``: the AIE ``features``, or with
        ``ATEConfig.image_features="clip"`` CLIP's own projection of the backbone ``tokens``."""
        if self.cfg.ate.image_features == "aie":
            return features
        if tokens is None:
            raise ValueError("ATEConfig.image_features='clip' needs the backbone tokens: "
                             "pass tokens=... (the cached B x L x h x w x D tokens)")
        return self.backbone.project_tokens(tokens).permute(0, 1, 4, 2, 3)

    def late_mean(self, fused: torch.Tensor, squashed: torch.Tensor) -> torch.Tensor:
        """``(1 - w) M^f + w squashed`` with ``w = ModelConfig.late_mean_weight`` (``final_map``)."""
        w = self.cfg.late_mean_weight
        return (1.0 - w) * fused + w * squashed

    def image_scores(self, final: torch.Tensor) -> torch.Tensor:
        """Image anomaly scores ``B`` from ``M^f`` (``B x 1 x H x W``): ``ModelConfig.image_score``."""
        if self.cfg.image_score == "smoothed_max":
            final = gaussian_smooth(final, self.cfg.image_score_sigma)
        return final.flatten(1).amax(dim=1)

    def _combine(self, text: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        """``ate_aie``'s ``M^f`` on the grid from ``M^t / L`` and ``M^v`` (``ModelConfig.ate_aie_fusion``)."""
        if self.cfg.ate_aie_fusion == "range":
            return 0.5 * (text + vision / self.max_distance)
        t_mean, t_std, v_mean, v_std = self.map_stats
        return 0.5 * ((text - t_mean) / t_std + (vision - v_mean) / v_std)

    def squashed_vision(self, vision: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """``sigmoid((M^v - mu_v) / sigma_v)`` upsampled to ``out_size`` (``final_map="mpf_vision"``)."""
        _, _, v_mean, v_std = self.map_stats
        return squash(vision, v_mean, v_std, out_size)

    @torch.no_grad()
    def calibrate(self, features: torch.Tensor, exclude: torch.Tensor | None = None,
                  tokens: torch.Tensor | None = None, unseen: bool | None = None) -> None:
        """Store the mean and std of ``M^t / L`` and ``M^v`` over normal images' AIE features.

        Called at the end of training (``TrainConfig.calibration``): on the shots, with
        leave-one-out vision maps (``exclude``) whenever k >= 2, as a shot's distance to a
        bank that holds it is not what a new normal image gets; or on augmented copies of
        the shots (``unseen=True``: their distances to the bank are taken as they are).
        ``ate_aie_fusion="standardised"`` and ``final_map="mpf_vision"`` read them. When
        the images are neither left out nor unseen (the single shot, k = 1), the vision
        statistics come from its own (too small) distances, with ``sigma_v`` at least 5%
        of ``D_max``. ``final_map="mpf_knn"`` also needs the features' backbone
        ``tokens``, for the same statistics of its raw-token map (``knn_stats``).
        """
        unseen = exclude is not None if unseen is None else unseen
        text = text_map(self.text_image_features(features, tokens), self.text_features(),
                        self.cfg.ate.logit_scale) / features.shape[1]
        stats = [text.mean(), text.std(unbiased=False).clamp_min(1e-6)]
        if self.uses_vision:
            stats += distance_stats(self.bank(features, exclude), unseen, self.max_distance)
        else:
            stats += [torch.tensor(0.0), torch.tensor(1.0)]
        self.map_stats.copy_(torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in stats]))
        if self.token_bank is not None:
            if tokens is None:
                raise ValueError("final_map='mpf_knn' needs the backbone tokens: calibrate(..., tokens=tokens)")
            knn = self.token_bank(tokens_as_features(tokens), exclude)
            # unit vectors, squared distances: D <= 4
            self.knn_stats.copy_(torch.stack(distance_stats(knn, unseen, 4.0)).float())

    @property
    def max_distance(self) -> float:
        """Upper bound of ``D`` with unit-normalised features (4 squared, 2 plain); 1 otherwise."""
        if self.cfg.prototypes.feature_norm != "level_l2":
            return 1.0
        return 4.0 if self.cfg.prototypes.distance == "squared" else 2.0

    def forward_tokens(self, tokens: torch.Tensor, out_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Maps from precomputed backbone tokens (``B x L x h x w x D``): the cacheable path."""
        return self.maps_from_features(self.aie(tokens), out_size, tokens=tokens)

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
