"""Multimodal Prediction Fusion, MPF (paper Sec. III-D, Eqs. 7-9; DESIGN §5).

Inputs are the two single-modal predictions on the patch grid: the vision map ``M^v``
(Eq. 5) and the text map ``M^t`` (Eq. 6), each ``B x 1 x h x w``. The fusion block
turns them into a fused prediction ``M^vt`` (Eq. 7); the segmentation network ``phi``
reads ``M^v (+) M^t (+) M^vt`` and its output is upsampled to the image size (Eq. 9).

Switches used by the paper's comparisons:

* ``fusion="mpf"``: the paper's fusion block (default);
* ``fusion="concat"``: no fusion block, ``phi`` reads ``M^v (+) M^t`` directly (the
  "direct concatenation" of Fig. 7 (e)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vtfusion.model.resample import adaptive_avg_pool2d, resize_bilinear

FUSIONS = ("mpf", "concat")
FUSION_INPUTS = ("attended", "attention")


@dataclass(frozen=True)
class MPFConfig:
    """Hyper-parameters of the fusion module; the paper gives none of these sizes.

    Attributes:
        fusion: ``mpf`` (fusion block, Eq. 7) or ``concat`` (Fig. 7 baseline, no fusion block).
        fusion_input: **[choice]** what Eq. 7 concatenates. ``attended``: each SAM's
            output, the attention-weighted features added to the map's embedding
            (``attn_dim`` channels per map; how self-attention is usually composed);
            ``attention``: the text read literally, "the two attention matrices are
            concatenated in a channel-wise manner": each ``N x N`` softmax matrix is
            viewed as ``N`` channels over the ``h x w`` query positions (row ``q`` of the
            matrix becomes the channel vector at position ``q``), ``2N`` channels in all.
        attn_dim: **[choice]** channels a 1-channel map is embedded into before self-attention.
        attn_heads: **[choice]** attention heads in each self-attention module.
        fused_channels: **[choice]** channels of ``M^vt``. The paper calls ``M^vt`` a
            prediction, so by default it is one channel like ``M^v`` and ``M^t``.
        seg_channels: **[choice]** base width of the segmentation network.
        pyramid_bins: **[choice]** pooled grid sizes of the multi-scale (pyramid pooling)
            aggregation on the coarsest FPN level.
        vision_skip: **[choice]**, a departure from the paper: add the vision map,
            normalised by a BatchNorm (batch statistics while training, running ones at
            test), to the segmentation network's logits, whose last layer then starts at
            zero. An untrained MPF is then a monotone function of ``M^v`` (as good as the
            vision map at step 0) and training learns corrections, instead of having to
            rediscover from scratch what ``M^v`` already says. False: the paper's ``phi``.
        text_skip: **[choice]**, a departure from the paper: the same skip for the text map
            ``M^t``. The paper's MPF may use ``M^t`` with either sign, so training through
            ``L_SEG`` alone is free to invert it, and on a pocket CLIP whose untrained
            text map localises real defects it does so within 50 iterations (chapter 00b).
            The skip gives ``M^t`` a fixed positive path to the logits, so its gradient
            keeps "high means abnormal". False: the paper's ``phi``.
    """

    fusion: str = "mpf"
    fusion_input: str = "attended"
    attn_dim: int = 32
    attn_heads: int = 1
    fused_channels: int = 1
    seg_channels: int = 32
    pyramid_bins: tuple[int, ...] = (1, 2, 4)
    vision_skip: bool = False
    text_skip: bool = False

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"MPFConfig.fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.fusion_input not in FUSION_INPUTS:
            raise ValueError(f"MPFConfig.fusion_input must be one of {', '.join(FUSION_INPUTS)}, "
                             f"got {self.fusion_input!r}")
        if self.attn_dim % self.attn_heads:
            raise ValueError(f"attn_dim ({self.attn_dim}) must be divisible by attn_heads ({self.attn_heads})")


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MapSelfAttention(nn.Module):
    """SAM of Eq. 7: self-attention over the ``h*w`` positions of a 1-channel map.

    The map is embedded per position (1x1 conv), attention weights are a softmax over
    positions, and the attended features are added back to the embedding.

    Shapes: ``B x 1 x h x w`` -> ``B x attn_dim x h x w``.
    """

    def __init__(self, dim: int, heads: int = 1):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 1)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, m: torch.Tensor, return_weights: bool = False):
        b, _, h, w = m.shape
        x = self.embed(m).flatten(2).transpose(1, 2)  # B x N x C
        q = self.norm(x)
        out, weights = self.attn(q, q, q, need_weights=return_weights, average_attn_weights=True)
        y = (x + out).transpose(1, 2).reshape(b, -1, h, w)
        return (y, weights) if return_weights else y


class ResidualBlock(nn.Module):
    """G of Eq. 7: conv-BN-ReLU-conv-BN with a (projected) skip, then ReLU and a 1x1 head.

    Shapes: ``B x cin x h x w`` -> ``B x cout x h x w``.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, cin), nn.Conv2d(cin, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin))
        self.head = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(x + self.body(x)))


class FusionBlock(nn.Module):
    """Eq. 7: ``M^vt = G(SAM(M^v) (+) SAM(M^t))``.

    With ``fusion_input="attended"`` SAM's output is the attended embedding
    (``attn_dim`` channels); with ``"attention"`` it is the softmax attention matrix
    itself, ``N`` channels over the ``h x w`` grid (``N = h*w``, so the block is sized for
    one grid, ``grid_cells``).

    Shapes: two ``B x 1 x h x w`` maps -> ``B x fused_channels x h x w``.
    """

    def __init__(self, cfg: MPFConfig, grid_cells: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.sam_vision = MapSelfAttention(cfg.attn_dim, cfg.attn_heads)
        self.sam_text = MapSelfAttention(cfg.attn_dim, cfg.attn_heads)
        if cfg.fusion_input == "attention":
            if grid_cells is None:
                raise ValueError("MPFConfig.fusion_input='attention' needs the grid size (grid_cells = h*w)")
            width = 2 * grid_cells
        else:
            width = 2 * cfg.attn_dim
        self.g = ResidualBlock(width, cfg.fused_channels)

    def _sam(self, sam: MapSelfAttention, m: torch.Tensor) -> torch.Tensor:
        if self.cfg.fusion_input == "attended":
            return sam(m)
        b, _, h, w = m.shape
        _, weights = sam(m, return_weights=True)  # B x N(query) x N(key)
        return weights.transpose(1, 2).reshape(b, h * w, h, w)  # key index as channel, query as position

    def forward(self, m_v: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
        return self.g(torch.cat([self._sam(self.sam_vision, m_v), self._sam(self.sam_text, m_t)], dim=1))


class PyramidPooling(nn.Module):
    """Multi-scale aggregation: average-pool to several grid sizes, project, upsample, concat.

    Shapes: ``B x c x h x w`` -> ``B x c x h x w``.
    """

    def __init__(self, channels: int, bins: tuple[int, ...]):
        super().__init__()
        branch = max(channels // len(bins), 8)
        self.bins = bins
        self.branches = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, branch, 1, bias=False), nn.ReLU(inplace=True))
                                      for _ in bins)
        self.project = conv_bn_relu(channels + branch * len(bins), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [resize_bilinear(br(adaptive_avg_pool2d(x, b)), size) for b, br in zip(self.bins, self.branches)]
        return self.project(torch.cat([x, *pooled], dim=1))


class SegmentationNet(nn.Module):
    """phi of Eq. 9: a small FPN with pyramid pooling on its coarsest level.

    Bottom-up: grid -> 1/2 -> 1/4 resolution; pyramid pooling on the coarsest level;
    top-down: upsample and add lateral 1x1 projections; a 3x3 head gives one logit
    channel at grid resolution.

    Shapes: ``B x cin x h x w`` -> ``B x 1 x h x w`` (logits).
    """

    def __init__(self, cin: int, channels: int, bins: tuple[int, ...]):
        super().__init__()
        c = channels
        self.stem = conv_bn_relu(cin, c)
        self.down1 = conv_bn_relu(c, 2 * c, stride=2)
        self.down2 = conv_bn_relu(2 * c, 4 * c, stride=2)
        self.ppm = PyramidPooling(4 * c, bins)
        self.lateral = nn.ModuleList([nn.Conv2d(c, c, 1), nn.Conv2d(2 * c, c, 1), nn.Conv2d(4 * c, c, 1)])
        self.smooth = conv_bn_relu(c, c)
        self.head = nn.Conv2d(c, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.stem(x)
        c2 = self.down1(c1)
        c3 = self.ppm(self.down2(c2))
        p = self.lateral[2](c3)
        for lat, skip in ((self.lateral[1], c2), (self.lateral[0], c1)):
            p = lat(skip) + resize_bilinear(p, skip.shape[-2:])
        return self.head(self.smooth(p))


class MultimodalPredictionFusion(nn.Module):
    """The MPF module: fusion block (Eq. 7) + segmentation network and upsampling (Eq. 9).

    ``grid_cells`` (``h*w``) is needed only for ``fusion_input="attention"``.

    ``forward(m_v, m_t, out_size)`` takes ``B x 1 x h x w`` maps and returns a dict with
    ``fused`` (``M^vt``, ``B x fused_channels x h x w``; absent for ``concat``),
    ``logits`` (``B x 1 x h x w``; with ``vision_skip`` / ``text_skip`` plus the
    normalised ``M^v`` / ``M^t``)
    and ``final`` (``M^f``: sigmoid of the logits,
    bilinearly upsampled to ``out_size``, ``B x 1 x H x W`` in [0, 1]).
    """

    def __init__(self, cfg: MPFConfig = MPFConfig(), grid_cells: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.fusion = FusionBlock(cfg, grid_cells) if cfg.fusion == "mpf" else None
        cin = 2 + (cfg.fused_channels if self.fusion is not None else 0)
        self.seg = SegmentationNet(cin, cfg.seg_channels, cfg.pyramid_bins)
        self.vision_norm = nn.BatchNorm2d(1) if cfg.vision_skip else None
        self.text_norm = nn.BatchNorm2d(1) if cfg.text_skip else None
        if cfg.vision_skip or cfg.text_skip:
            nn.init.zeros_(self.seg.head.weight)
            nn.init.zeros_(self.seg.head.bias)

    def forward(self, m_v: torch.Tensor, m_t: torch.Tensor, out_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        if m_v.shape != m_t.shape or m_v.ndim != 4 or m_v.shape[1] != 1:
            raise ValueError(f"MPF expects two B x 1 x h x w maps of one shape, got {tuple(m_v.shape)} "
                             f"and {tuple(m_t.shape)}")
        out: dict[str, torch.Tensor] = {}
        parts = [m_v, m_t]
        if self.fusion is not None:
            out["fused"] = self.fusion(m_v, m_t)
            parts.append(out["fused"])
        out["logits"] = self.seg(torch.cat(parts, dim=1))
        if self.vision_norm is not None:
            out["logits"] = out["logits"] + self.vision_norm(m_v)
        if self.text_norm is not None:
            out["logits"] = out["logits"] + self.text_norm(m_t)
        # Upsample the probabilities (not the logits) so M^f stays in [0, 1] (Eq. 9).
        out["final"] = F.interpolate(torch.sigmoid(out["logits"]), size=out_size, mode="bilinear",
                                     align_corners=False)
        return out


def segmentation_loss(final: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``L_SEG`` (Eq. 8): mean squared error between ``M^f`` and the synthetic mask ``M^g``.

    Args:
        final: ``B x 1 x H x W`` predicted map in [0, 1].
        target: ``B x 1 x H x W`` mask in {0, 1} (zeros for normal images).
    """
    if final.shape != target.shape:
        raise ValueError(f"L_SEG: prediction {tuple(final.shape)} and mask {tuple(target.shape)} differ in shape")
    return F.mse_loss(final, target.to(final.dtype))
