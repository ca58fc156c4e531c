"""The training-free reference: patch nearest-neighbour on the frozen backbone's tokens.

Every method in this project is reported beside this baseline, computed on the *same*
frozen tokens (DESIGN §10). A learned method that loses to it on the same features has a
recipe problem, whatever the backbone.

For one category and its k normal shots:

1. **Memory.** Each shot patch's multi-level tokens (``L`` levels of width ``D``) are
   L2-normalised per level, concatenated and divided by ``sqrt(L)``: one unit vector of
   width ``L*D`` per patch, ``k*h*w`` of them (:func:`patch_descriptors`). An optional
   greedy k-centre coreset keeps a fraction of them (PatchCore's subsampling,
   :func:`greedy_coreset`).
2. **Score.** A test patch's anomaly score is its Euclidean distance to the nearest
   memory patch (:func:`nearest_distances`); the ``h x w`` map is upsampled bilinearly to
   the image size, and the image score is the map's maximum.

This is PatchCore without its locally aware pooling and re-weighting, on CLIP tokens
instead of a WideResNet; AnomalyDINO is the same recipe on DINOv2 patch tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PatchKNNConfig:
    """Options of the patch nearest-neighbour reference.

    Attributes:
        coreset_ratio: fraction of the memory kept by greedy k-centre subsampling
            (PatchCore); 1.0 keeps every shot patch (the default for few-shot: at most
            ``8 * 225`` patches, and subsampling only loses information).
        coreset_projection: width of the random projection the coreset selection runs in
            (PatchCore's Johnson-Lindenstrauss trick); 0 selects in the full space.
        seed: seed of the coreset's random start and projection.
        chunk: test patches compared with the memory at once (bounds peak memory).
    """

    coreset_ratio: float = 1.0
    coreset_projection: int = 128
    seed: int = 0
    chunk: int = 8192

    def __post_init__(self) -> None:
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"PatchKNNConfig.coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.coreset_projection < 0:
            raise ValueError(f"PatchKNNConfig.coreset_projection must be >= 0, got {self.coreset_projection}")
        if self.chunk < 1:
            raise ValueError(f"PatchKNNConfig.chunk must be >= 1, got {self.chunk}")


def patch_descriptors(tokens: torch.Tensor) -> torch.Tensor:
    """Unit-norm multi-level patch descriptors: ``B x L x h x w x D`` -> ``B x (h*w) x (L*D)``.

    Each level is L2-normalised, the levels are concatenated (level 1 first) and the
    result is divided by ``sqrt(L)``. Locations are in row-major order.
    """
    if tokens.ndim != 5:
        raise ValueError(f"expected backbone tokens B x L x h x w x D, got shape {tuple(tokens.shape)}")
    b, levels, h, w, d = tokens.shape
    unit = F.normalize(tokens.float(), dim=-1) / math.sqrt(levels)
    return unit.permute(0, 2, 3, 1, 4).reshape(b, h * w, levels * d)


def greedy_coreset(points: torch.Tensor, ratio: float, projection: int = 128, seed: int = 0) -> torch.Tensor:
    """Indices of a greedy k-centre coreset of ``points`` (``M x d``), ``ceil(ratio * M)`` of them.

    Starts from a seeded random point and repeatedly adds the point farthest from the
    ones chosen so far (PatchCore, Roth et al. 2022), measured after a seeded Gaussian
    random projection to ``projection`` dimensions (0: none).
    """
    m = points.shape[0]
    n = max(1, math.ceil(ratio * m))
    if n >= m:
        return torch.arange(m, device=points.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = points.float()
    if 0 < projection < x.shape[1]:
        proj = torch.randn(x.shape[1], projection, generator=gen) / math.sqrt(projection)
        x = x @ proj.to(x.device)
    chosen = [int(torch.randint(m, (1,), generator=gen))]
    nearest = torch.cdist(x, x[chosen[-1]][None]).squeeze(1)
    for _ in range(n - 1):
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = torch.minimum(nearest, torch.cdist(x, x[nxt][None]).squeeze(1))
    return torch.tensor(chosen, device=points.device)


def nearest_distances(queries: torch.Tensor, memory: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Euclidean distance from each query row to its nearest memory row: ``Q x d``, ``M x d`` -> ``Q``."""
    out = []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start:start + chunk]
        sq = (q.pow(2).sum(1, keepdim=True) + memory.pow(2).sum(1) - 2.0 * q @ memory.t()).clamp_min(0.0)
        out.append(sq.min(dim=1).values.sqrt())
    return torch.cat(out)


class PatchKNN:
    """Patch nearest-neighbour anomaly detection on frozen backbone tokens (no training).

    ``fit(shot_tokens)`` builds the memory from the k shots' tokens (``k x L x h x w x D``);
    ``predict_tokens(tokens, out_size)`` returns ``{"final": B x 1 x H x W, "score": B}``
    (and ``"grid"``, the ``B x 1 x h x w`` distances), the same keys VTFusion returns.
    """

    def __init__(self, cfg: PatchKNNConfig = PatchKNNConfig()):
        self.cfg = cfg
        self.memory: torch.Tensor | None = None
        self.grid: tuple[int, int] | None = None

    def fit(self, shot_tokens: torch.Tensor) -> "PatchKNN":
        desc = patch_descriptors(shot_tokens)
        self.grid = (int(shot_tokens.shape[2]), int(shot_tokens.shape[3]))
        memory = desc.reshape(-1, desc.shape[-1])
        if self.cfg.coreset_ratio < 1.0:
            memory = memory[greedy_coreset(memory, self.cfg.coreset_ratio, self.cfg.coreset_projection,
                                           self.cfg.seed)]
        self.memory = memory
        return self

    @torch.no_grad()
    def predict_tokens(self, tokens: torch.Tensor, out_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        if self.memory is None or self.grid is None:
            raise RuntimeError("PatchKNN has no memory: call fit(shot_tokens) with the k shots' tokens first")
        desc = patch_descriptors(tokens)
        b = desc.shape[0]
        dist = nearest_distances(desc.reshape(-1, desc.shape[-1]), self.memory.to(desc.device), self.cfg.chunk)
        grid = dist.reshape(b, 1, *self.grid)
        final = F.interpolate(grid, size=out_size, mode="bilinear", align_corners=False)
        return {"grid": grid, "final": final, "score": final.flatten(1).amax(dim=1)}
