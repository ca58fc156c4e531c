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
BANKS = ("mean", "memory")
DISTANCES = ("squared", "euclidean")
AFS_MARGINS = ("paper", "relative")


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
            initialisation and stay frozen (the text: "frozen anchors"); ``True``: whoever
            trains rebuilds them (detached) from the current AIE every iteration (Algorithm
            1 puts "initialize the prototype set using Eq. (1)" inside its loop).
        bank: **[choice]** ``mean``: Eq. 1 as written, one prototype per location, the
            average of the k shots' stacked features there (``N`` prototypes); ``memory``:
            every shot location is a prototype (``k*N``, PatchCore's memory), a departure
            from the paper. Averaging blurs the prototypes as k grows (textures and
            misaligned objects average to vectors that no real patch resembles).
        distance: **[choice]** ``D`` of Eqs. 2-5. ``squared``: squared Euclidean distance;
            ``euclidean``: the plain Euclidean distance the paper names. The hinges compare
            ``D`` with ``r**2`` and ``(r + alpha)**2`` exactly as Eqs. 3-4 write them.
        afs_neighbours: **[choice]** Eq. 4 uses the nearest prototype (1); with ``m > 1``
            the AFS hinge is averaged over the ``m`` nearest prototypes (PCSNet uses 3), so
            an abnormal feature is pushed away from a neighbourhood, not from one point.
        afs_margin: **[choice]** the margin of Eq. 4. ``paper``: ``(r + alpha)**2``;
            ``relative``: ``r`` in Eq. 4 is replaced by the square root of the
            ``afs_margin_quantile`` quantile of the current normal features' ``D``
            (detached, per iteration), so the margin follows the scale of normal distances
            instead of a fixed ``0.01``.
        afs_margin_quantile: the quantile of ``relative``.
    """

    radius: float = 1e-5
    alpha: float = 0.1
    afs_region: str = "mask"
    feature_norm: str = "level_l2"
    refresh: bool = False
    bank: str = "mean"
    distance: str = "squared"
    afs_neighbours: int = 1
    afs_margin: str = "paper"
    afs_margin_quantile: float = 0.95

    def __post_init__(self) -> None:
        for name, allowed in (("afs_region", AFS_REGIONS), ("feature_norm", FEATURE_NORMS), ("bank", BANKS),
                              ("distance", DISTANCES), ("afs_margin", AFS_MARGINS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"PrototypeConfig.{name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.radius < 0 or self.alpha < 0:
            raise ValueError(f"PrototypeConfig.radius and alpha must be >= 0, got {self.radius}, {self.alpha}")
        if self.afs_neighbours < 1:
            raise ValueError(f"PrototypeConfig.afs_neighbours must be >= 1, got {self.afs_neighbours}")
        if not 0.0 < self.afs_margin_quantile <= 1.0:
            raise ValueError(f"PrototypeConfig.afs_margin_quantile must be in (0, 1], got {self.afs_margin_quantile}")


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


def build_prototypes(shot_features: torch.Tensor, feature_norm: str = "level_l2", bank: str = "mean") -> torch.Tensor:
    """Eq. 1: the prototype set from the k normal shots.

    Args:
        shot_features: ``k x L x c x h x w`` AIE features of the k normal shot images.
        bank: ``mean`` (Eq. 1): row ``n`` of the ``N x (L*c)`` result is the average over
            the shots of their stacked (and, with ``level_l2``, normalised) features at
            location ``n``; ``memory`` (departure): all ``k*N`` stacked shot features.

    Returns:
        the prototypes, detached (they are anchors, never trained).
    """
    return prototypes_from_stacked(stack_levels(shot_features.detach(), feature_norm), bank)


def prototypes_from_stacked(stacked: torch.Tensor, bank: str = "mean") -> torch.Tensor:
    """Eq. 1 on already stacked shot features: ``k x N x d`` -> ``N x d`` (mean) or ``k*N x d`` (memory)."""
    if bank == "mean":
        return stacked.mean(dim=0)
    if bank == "memory":
        return stacked.reshape(-1, stacked.shape[-1])
    raise ValueError(f"bank must be one of {', '.join(BANKS)}, got {bank!r}")


def squared_distances(stacked: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``D`` between every location and every prototype: ``B x N x d``, ``P x d`` (or ``B x P x d``) -> ``B x N x P``."""
    p_sq = prototypes.pow(2).sum(-1)
    cross = stacked @ prototypes.transpose(-1, -2)
    sq = stacked.pow(2).sum(-1, keepdim=True) + (p_sq.unsqueeze(-2) if prototypes.ndim == 3 else p_sq) - 2.0 * cross
    return sq.clamp_min(0.0)  # rounding can make ||a||^2 + ||b||^2 - 2ab slightly negative


def as_distance(squared: torch.Tensor, distance: str = "squared") -> torch.Tensor:
    """``D`` from squared Euclidean distances: unchanged (``squared``) or their root (``euclidean``).

    The root is taken with its argument clamped at 1e-12, so its gradient stays finite at 0.
    """
    if distance == "squared":
        return squared
    if distance == "euclidean":
        return squared.clamp_min(1e-12).sqrt()
    raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")


def nearest_prototype(stacked: torch.Tensor, prototypes: torch.Tensor, distance: str = "squared",
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: nearest prototype over *all* prototypes, and ``D`` to it.

    Args:
        stacked: ``B x N x d`` stacked features (:func:`stack_levels`).
        prototypes: ``P x d`` prototype set, or ``B x P x d`` (one set per image, e.g.
            leave-one-out banks during training).
        distance: ``squared`` or ``euclidean`` (:func:`as_distance`).

    Returns:
        ``(distance, index)``, both ``B x N``: ``D(F_n, P*)`` and the index of ``P*``. The
        argmin of the squared distance is the argmin of the L2 distance of Eq. 2.
    """
    d, idx = squared_distances(stacked, prototypes).min(dim=-1)
    return as_distance(d, distance), idx


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
        distance: ``B x N`` nearest-prototype distances of *abnormal* images, or
            ``B x N x m`` distances to the ``m`` nearest prototypes (the hinge is then
            averaged over the ``m``).
        radius: ``r`` (a float, or a tensor broadcastable to ``distance``).
        weights: ``B x N`` non-negative location weights (e.g. the area fraction of each
            grid cell inside the synthetic mask, :func:`mask_to_grid`). ``None``: the
            literal Eq. 4, a plain mean over all locations.

    Returns:
        scalar. With weights: ``sum(w * hinge) / sum(w)`` over the whole batch (area-
        weighted mean over anomalous locations); zero (still in the graph) when all weights
        are zero, e.g. a synthetic anomaly too small to cover any cell.
    """
    hinge = F.relu((radius + alpha) ** 2 - distance)
    if hinge.ndim == 3:
        hinge = hinge.mean(dim=-1)
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
    receiving gradient): ``N x (L*c)`` for the ``mean`` bank, ``k*N x (L*c)`` for
    ``memory``. Build them with :meth:`build` from the shots' AIE features.

    **Leave-one-out.** The bank also keeps the shots' stacked features (not saved), so
    that during training a shot, and the synthetic anomaly made from it, can be compared
    with a bank built from the *other* shots (``exclude=``): its distances then look like
    an unseen normal image's, not like a copy of a prototype's (zero for ``k = 1``).
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
        self.shot_features: torch.Tensor | None = None  # k x N x d, for leave-one-out banks

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    @torch.no_grad()
    def build(self, shot_features: torch.Tensor) -> torch.Tensor:
        """Eq. 1 from ``k x L x c x h x w`` shot features; replaces the bank. Returns it (``P x L*c``)."""
        self._check(shot_features)
        self.shot_features = stack_levels(shot_features.detach(), self.cfg.feature_norm)
        self.prototypes = prototypes_from_stacked(self.shot_features, self.cfg.bank).clone()
        self.built.fill_(True)
        return self.prototypes

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A memory bank's size depends on k: take the saved shape before loading.
        saved = state_dict.get(prefix + "prototypes")
        if saved is not None and saved.shape != self.prototypes.shape:
            self.prototypes = torch.zeros_like(saved, device=self.prototypes.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check(self, features: torch.Tensor) -> None:
        want = (self.num_levels, self.embed_dim, *self.grid)
        if features.ndim != 5 or tuple(features.shape[1:]) != want:
            raise ValueError(f"prototype bank expects AIE features B x {' x '.join(map(str, want))}, "
                             f"got {tuple(features.shape)}")

    def leave_one_out(self, exclude: torch.Tensor) -> torch.Tensor:
        """One bank per image, each built without one shot: ``exclude`` (``B`` shot indices) -> ``B x P' x d``.

        ``P' = N`` for ``mean`` (the average of the other ``k - 1`` shots), ``(k-1)*N`` for
        ``memory``. Needs ``k >= 2`` shots in the last :meth:`build`.
        """
        shots = self.shot_features
        if shots is None or shots.shape[0] < 2:
            raise ValueError("leave-one-out banks need at least 2 shots in the last bank.build(); "
                             "with k = 1 train without leave_one_out (and with shot augmentation)")
        k = shots.shape[0]
        keep = torch.stack([torch.arange(k, device=shots.device) != int(i) for i in exclude])  # B x k
        others = shots.unsqueeze(0).expand(len(exclude), *shots.shape)[keep].reshape(len(exclude), k - 1,
                                                                                    *shots.shape[1:])
        if self.cfg.bank == "mean":
            return others.mean(dim=1)
        return others.reshape(len(exclude), -1, shots.shape[-1])

    def _bank_for(self, batch: int, exclude: torch.Tensor | None) -> torch.Tensor:
        if not bool(self.built):
            raise RuntimeError("the prototype bank is empty: call bank.build(aie(backbone(shot_images))) "
                               "with the k normal shots first (Eq. 1)")
        if exclude is None:
            return self.prototypes
        if len(exclude) != batch:
            raise ValueError(f"exclude has {len(exclude)} entries for a batch of {batch}")
        return self.leave_one_out(exclude)

    def distances(self, features: torch.Tensor, exclude: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2: ``(D to P*, index of P*)`` per location, both ``B x N``.

        ``exclude``: optional ``B`` shot indices; image ``b`` is then compared with the
        bank built without shot ``exclude[b]`` (:meth:`leave_one_out`).
        """
        self._check(features)
        bank = self._bank_for(features.shape[0], exclude)
        return nearest_prototype(stack_levels(features, self.cfg.feature_norm), bank, self.cfg.distance)

    def neighbour_distances(self, features: torch.Tensor, m: int,
                            exclude: torch.Tensor | None = None) -> torch.Tensor:
        """``D`` to the ``m`` nearest prototypes, ascending: ``B x N x m`` (``m = 1``: Eq. 2)."""
        self._check(features)
        bank = self._bank_for(features.shape[0], exclude)
        sq = squared_distances(stack_levels(features, self.cfg.feature_norm), bank)
        m = min(m, sq.shape[-1])
        return as_distance(sq.topk(m, dim=-1, largest=False).values, self.cfg.distance)

    def forward(self, features: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 5: the vision map ``M^v``, ``B x L x c x h x w`` -> ``B x 1 x h x w``."""
        return vision_map(self.distances(features, exclude)[0], self.grid)

    def losses(self, normal_features: torch.Tensor, abnormal_features: torch.Tensor,
               abnormal_masks: torch.Tensor | None = None, exclude_normal: torch.Tensor | None = None,
               exclude_abnormal: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Eqs. 3-4 for a batch of normal and synthetic-abnormal features, with diagnostics.

        Args:
            normal_features: ``B_n x L x c x h x w``.
            abnormal_features: ``B_a x L x c x h x w``.
            abnormal_masks: ``B_a x 1 x H x W`` synthetic-anomaly masks; needed when
                ``afs_region="mask"``.
            exclude_normal, exclude_abnormal: optional shot indices for leave-one-out banks
                (:meth:`distances`).

        Returns:
            ``{"nfc": L_NFC, "afs": L_AFS}`` (scalars with gradient) and detached
            diagnostics: ``nfc_active`` (fraction of normal cells outside the radius, where
            Eq. 3's hinge is non-zero), ``afs_active`` (the area-weighted fraction of
            anomalous cells inside the margin, where Eq. 4's hinge is non-zero) and
            ``afs_margin`` (the margin ``(r + alpha)^2`` in use).
        """
        cfg = self.cfg
        d_normal, _ = self.distances(normal_features, exclude_normal)
        d_abnormal = self.neighbour_distances(abnormal_features, cfg.afs_neighbours, exclude_abnormal)
        weights = None
        if cfg.afs_region == "mask":
            if abnormal_masks is None:
                raise ValueError("afs_region='mask' needs the synthetic anomaly masks (or set "
                                 "PrototypeConfig.afs_region='all')")
            weights = mask_to_grid(abnormal_masks, self.grid).to(d_abnormal)
        radius: float | torch.Tensor = cfg.radius
        if cfg.afs_margin == "relative":
            radius = torch.quantile(d_normal.detach().flatten().float(), cfg.afs_margin_quantile).sqrt()
        margin = (radius + cfg.alpha) ** 2
        active = (d_abnormal.detach() < margin).float().mean(dim=-1)
        w = torch.ones_like(active) if weights is None else weights
        return {"nfc": nfc_loss(d_normal, cfg.radius),
                "afs": afs_loss(d_abnormal, radius, cfg.alpha, weights),
                "nfc_active": (d_normal.detach() > cfg.radius ** 2).float().mean(),
                "afs_active": (w * active).sum() / w.sum().clamp_min(1e-12),
                "afs_margin": torch.as_tensor(margin, dtype=torch.float32).detach()}

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
