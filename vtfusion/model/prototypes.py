"""Prototypes and separating boundaries (paper Sec. III-C, Eqs. 1-5; DESIGN §3).

Notation: the AIE gives features ``B x L x c x h x w``; a location's *stacked* feature is
its ``L`` level vectors concatenated (``L*c``); ``N = h*w``.

* Eq. 1, :func:`build_prototypes`: the prototype of location ``n`` is the average over
  the k normal shots of their stacked features at ``n``; the bank of ``N`` prototypes is
  computed once and then frozen ("frozen anchors").
* Eq. 2, :func:`nearest_prototype`: each location is compared with *all* ``N``
  prototypes, not only the one at its own position, so a shifted or rotated object still
  finds its match.
* Distance ``D`` **[choice]**: squared Euclidean distance on features normalised so that
  ``D`` lies in [0, 4]: each level is L2-normalised, the levels are concatenated and the
  result is divided by ``sqrt(L)`` (a unit vector). Prototypes are averages of such unit
  vectors (norm <= 1) and are not renormalised.
* Eq. 3, :func:`nfc_loss`: normal features inside the hypersphere of radius ``r``.
* Eq. 4, :func:`afs_loss`: abnormal features outside radius ``r + alpha``.
* Eq. 5, :func:`vision_map`: ``M^v`` is ``D`` to the nearest prototype, per location.

The radii: ``D`` is a *squared* distance, so the hinges compare it with ``r**2`` and
``(r + alpha)**2`` exactly as Eqs. 3-4 write them. With the paper's ``r = 1e-5`` the NFC
hinge is practically ``mean(D)``, and the AFS margin is ``(0.1 + 1e-5)**2 ~= 0.0100``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

AFS_REGIONS = ("mask", "all")
FEATURE_NORMS = ("level_l2", "none")


@dataclass(frozen=True)
class PrototypeConfig:
    """Prototype bank and the NFC/AFS boundary losses (paper Eqs. 1-5, Sec. IV-A; DESIGN §3).

    Attributes:
        radius: ``r`` of Eqs. 3-4 (paper: 1e-5).
        alpha: radius relaxation ``alpha`` of Eq. 4 (paper: 0.1).
        afs_region: **[choice]** where Eq. 4 is averaged on an abnormal image. ``mask``:
            over the anomalous locations only, each grid cell weighted by the fraction of
            its pixels inside the synthetic mask (the literal Eq. 4 would also push the
            *normal* parts of an abnormal image away, contradicting Eq. 3); ``all``: over
            all ``N`` locations, the literal Eq. 4 (ablation).
        feature_norm: **[choice]** ``level_l2``: L2-normalise each level, concatenate,
            divide by ``sqrt(L)``, so ``D`` lies in [0, 4] and ``r``/``alpha`` have a fixed
            meaning; ``none``: raw features (the paper's plain Euclidean distance, whose
            scale depends on the backbone).
        refresh: **[choice]** ``False``: the prototypes are built once from the shots after
            initialisation and stay frozen (paper: "frozen anchors"); ``True``: whoever
            trains rebuilds them from the current AIE every iteration (ablation).
    """

    radius: float = 1e-5
    alpha: float = 0.1
    afs_region: str = "mask"
    feature_norm: str = "level_l2"
    refresh: bool = False

    def __post_init__(self) -> None:
        if self.afs_region not in AFS_REGIONS:
            raise ValueError(f"PrototypeConfig.afs_region must be one of {', '.join(AFS_REGIONS)}, "
                             f"got {self.afs_region!r}")
        if self.feature_norm not in FEATURE_NORMS:
            raise ValueError(f"PrototypeConfig.feature_norm must be one of {', '.join(FEATURE_NORMS)}, "
                             f"got {self.feature_norm!r}")
        if self.radius < 0 or self.alpha < 0:
            raise ValueError(f"PrototypeConfig.radius and alpha must be >= 0, got {self.radius}, {self.alpha}")


def stack_levels(features: torch.Tensor, feature_norm: str = "level_l2") -> torch.Tensor:
    """Stacked per-location features: ``B x L x c x h x w`` -> ``B x N x (L*c)``, ``N = h*w``.

    Locations are in row-major order (``n = x*w + y``); channels are level 1's ``c``
    values, then level 2's, and so on. With ``level_l2`` each level is L2-normalised and
    the result divided by ``sqrt(L)``, so every stacked vector has unit norm.
    """
    if features.ndim != 5:
        raise ValueError(f"expected AIE features B x L x c x h x w, got shape {tuple(features.shape)}")
    b, n_levels, c, h, w = features.shape
    if feature_norm == "level_l2":
        features = F.normalize(features, dim=2) / math.sqrt(n_levels)
    elif feature_norm != "none":
        raise ValueError(f"feature_norm must be one of {', '.join(FEATURE_NORMS)}, got {feature_norm!r}")
    return features.permute(0, 3, 4, 1, 2).reshape(b, h * w, n_levels * c)


def build_prototypes(shot_features: torch.Tensor, feature_norm: str = "level_l2") -> torch.Tensor:
    """Eq. 1: the prototype set, one prototype per location, from the k normal shots.

    Args:
        shot_features: ``k x L x c x h x w`` AIE features of the k normal shot images.

    Returns:
        ``N x (L*c)``: row ``n`` is the average over the shots of their stacked (and, with
        ``level_l2``, normalised) features at location ``n``. Detached: prototypes are anchors.
    """
    return stack_levels(shot_features.detach(), feature_norm).mean(dim=0)


def squared_distances(stacked: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``D`` between every location and every prototype: ``B x N x d``, ``P x d`` -> ``B x N x P``."""
    sq = (stacked.pow(2).sum(-1, keepdim=True) + prototypes.pow(2).sum(-1)
          - 2.0 * stacked @ prototypes.t())
    return sq.clamp_min(0.0)  # rounding can make ||a||^2 + ||b||^2 - 2ab slightly negative


def nearest_prototype(stacked: torch.Tensor, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: nearest prototype over *all* prototypes, and ``D`` to it.

    Args:
        stacked: ``B x N x d`` stacked features (:func:`stack_levels`).
        prototypes: ``P x d`` prototype set.

    Returns:
        ``(distance, index)``, both ``B x N``: ``D(F_n, P*)`` and the index of ``P*``. The
        argmin of the squared distance is the argmin of the L2 distance of Eq. 2.
    """
    return squared_distances(stacked, prototypes).min(dim=-1)


def nfc_loss(distance: torch.Tensor, radius: float) -> torch.Tensor:
    """Eq. 3, normal feature compactness: ``mean_n max(0, D(F^vn_n, P*) - r^2)``.

    Args:
        distance: ``B x N`` (or any shape) nearest-prototype distances of *normal* images.

    Returns:
        scalar: the per-image mean over the ``N`` locations (the ``1/N`` sum of Eq. 3),
        averaged over the batch.
    """
    return F.relu(distance - radius ** 2).mean()


def afs_loss(distance: torch.Tensor, radius: float, alpha: float,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4, abnormal feature separation: hinge ``max(0, (r + alpha)^2 - D(F^va_n, P*))``.

    Args:
        distance: ``B x N`` nearest-prototype distances of *abnormal* images.
        weights: ``B x N`` non-negative location weights (e.g. the area fraction of each
            grid cell inside the synthetic mask, :func:`mask_to_grid`). ``None``: the
            literal Eq. 4, a plain mean over all locations.

    Returns:
        scalar. With weights: ``sum(w * hinge) / sum(w)`` over the whole batch (area-
        weighted mean over anomalous locations); zero (still in the graph) when all weights
        are zero, e.g. a synthetic anomaly too small to cover any cell.
    """
    hinge = F.relu((radius + alpha) ** 2 - distance)
    if weights is None:
        return hinge.mean()
    if weights.shape != hinge.shape:
        raise ValueError(f"AFS weights must match the distances' shape {tuple(hinge.shape)}, "
                         f"got {tuple(weights.shape)}")
    total = weights.sum()
    return (weights * hinge).sum() / total.clamp_min(torch.finfo(hinge.dtype).tiny) * (total > 0)


def mask_to_grid(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel masks -> per-cell anomalous area fraction: ``B x 1 x H x W`` -> ``B x (h*w)`` in [0, 1].

    Adaptive average pooling, so with ``H`` a multiple of ``h`` (240 = 16 * 15) each value
    is exactly the fraction of the cell's pixels inside the mask.
    """
    if masks.ndim == 3:
        masks = masks.unsqueeze(1)
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"expected masks B x 1 x H x W, got shape {tuple(masks.shape)}")
    return F.adaptive_avg_pool2d(masks.float(), grid).flatten(1)


def vision_map(distance: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Eq. 5: ``M^v = D(F^v, P*)`` as a map: ``B x N`` -> ``B x 1 x h x w``."""
    return distance.reshape(distance.shape[0], 1, *grid)


class PrototypeBank(nn.Module):
    """The frozen prototype set (Eq. 1) and everything measured against it (Eqs. 2-5).

    Prototypes are a buffer (saved in the ``state_dict``, never a parameter, never
    receiving gradient). Build them with :meth:`build` from the shots' AIE features.
    """

    prototypes: torch.Tensor
    built: torch.Tensor

    def __init__(self, num_levels: int, embed_dim: int, grid: tuple[int, int],
                 cfg: PrototypeConfig = PrototypeConfig()):
        super().__init__()
        self.cfg = cfg
        self.num_levels = num_levels
        self.embed_dim = embed_dim
        self.grid = (int(grid[0]), int(grid[1]))
        n = self.grid[0] * self.grid[1]
        self.register_buffer("prototypes", torch.zeros(n, num_levels * embed_dim))
        self.register_buffer("built", torch.tensor(False))

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    @torch.no_grad()
    def build(self, shot_features: torch.Tensor) -> torch.Tensor:
        """Eq. 1 from ``k x L x c x h x w`` shot features; replaces the bank. Returns it (``N x L*c``)."""
        self._check(shot_features)
        self.prototypes.copy_(build_prototypes(shot_features, self.cfg.feature_norm))
        self.built.fill_(True)
        return self.prototypes

    def _check(self, features: torch.Tensor) -> None:
        want = (self.num_levels, self.embed_dim, *self.grid)
        if features.ndim != 5 or tuple(features.shape[1:]) != want:
            raise ValueError(f"prototype bank expects AIE features B x {' x '.join(map(str, want))}, "
                             f"got {tuple(features.shape)}")

    def distances(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2: ``(D to P*, index of P*)`` per location, both ``B x N``."""
        self._check(features)
        if not bool(self.built):
            raise RuntimeError("the prototype bank is empty: call bank.build(aie(backbone(shot_images))) "
                               "with the k normal shots first (Eq. 1)")
        return nearest_prototype(stack_levels(features, self.cfg.feature_norm), self.prototypes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Eq. 5: the vision map ``M^v``, ``B x L x c x h x w`` -> ``B x 1 x h x w``."""
        return vision_map(self.distances(features)[0], self.grid)

    def losses(self, normal_features: torch.Tensor, abnormal_features: torch.Tensor,
               abnormal_masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Eqs. 3-4 for a batch of normal and synthetic-abnormal features.

        Args:
            normal_features: ``B_n x L x c x h x w``.
            abnormal_features: ``B_a x L x c x h x w``.
            abnormal_masks: ``B_a x 1 x H x W`` synthetic-anomaly masks; needed when
                ``afs_region="mask"``.

        Returns:
            ``{"nfc": L_NFC, "afs": L_AFS}`` (scalars).
        """
        d_normal, _ = self.distances(normal_features)
        d_abnormal, _ = self.distances(abnormal_features)
        weights = None
        if self.cfg.afs_region == "mask":
            if abnormal_masks is None:
                raise ValueError("afs_region='mask' needs the synthetic anomaly masks (or set "
                                 "PrototypeConfig.afs_region='all')")
            weights = mask_to_grid(abnormal_masks, self.grid).to(d_abnormal)
        return {"nfc": nfc_loss(d_normal, self.cfg.radius),
                "afs": afs_loss(d_abnormal, self.cfg.radius, self.cfg.alpha, weights)}

    def extra_repr(self) -> str:
        return (f"num_prototypes={self.num_prototypes}, dim={self.prototypes.shape[1]}, "
                f"built={bool(self.built)}, cfg={self.cfg}")


def adapt_image_encoder(aie: nn.Module, bank: PrototypeBank, normal_tokens: torch.Tensor,
                        abnormal_tokens: torch.Tensor, abnormal_masks: torch.Tensor,
                        steps: int = 30, lr: float = 1e-3) -> list[dict[str, float]]:
    """A short AIE adaptation with ``L_NFC + L_AFS`` only, for the book's illustrations.

    Not Algorithm 1 (no text branch, no fusion, fixed synthetic anomalies): it shows what
    the boundary losses do to the features. Tokens are precomputed by the frozen backbone
    (``B x L x h x w x D``), so each step costs only the AIE. The bank must already be
    built; with ``bank.cfg.refresh`` it is rebuilt from ``normal_tokens`` every step.
    Adam with the paper's AIE learning rate (1e-3) by default.

    Returns:
        per step ``{"step", "nfc", "afs", "loss"}`` as floats (losses before the update).
    """
    opt = torch.optim.Adam([p for p in aie.parameters() if p.requires_grad], lr=lr)
    history = []
    was_training = aie.training
    aie.train()
    for step in range(steps):
        if bank.cfg.refresh:
            with torch.no_grad():
                bank.build(aie(normal_tokens))
        losses = bank.losses(aie(normal_tokens), aie(abnormal_tokens), abnormal_masks)
        loss = losses["nfc"] + losses["afs"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"step": step, "nfc": losses["nfc"].item(), "afs": losses["afs"].item(),
                        "loss": loss.item()})
    aie.train(was_training)
    return history
