"""Average pooling and bilinear resizing whose CUDA backward is deterministic when asked to be.

``F.adaptive_avg_pool2d`` and bilinear ``F.interpolate`` accumulate their CUDA gradients with
atomic adds, so ``torch.use_deterministic_algorithms(True)`` (``TrainConfig.deterministic``)
refuses them. Both are linear maps applied along each spatial axis, so here they become two
small matrix products, ``A_h @ x @ A_w^T``, whose backward cuBLAS computes deterministically.
That path is taken only for a CUDA tensor with deterministic algorithms on; everywhere else
the functions are exactly ``F.adaptive_avg_pool2d`` and ``F.interpolate``, so CPU results and
default GPU runs are unchanged. The matrix forms agree with them to float rounding
(``tests/test_resample.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _use_matrices(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.are_deterministic_algorithms_enabled()


def adaptive_pool_matrix(out: int, n: int) -> torch.Tensor:
    """``out x n`` averaging weights of adaptive pooling: row i averages ``[floor(i n / out), ceil((i + 1) n / out))``."""
    i = torch.arange(out)
    start, end = (i * n) // out, -((-(i + 1) * n) // out)
    j = torch.arange(n)
    inside = ((j >= start[:, None]) & (j < end[:, None])).double()
    return inside / inside.sum(1, keepdim=True)


def bilinear_matrix(out: int, n: int) -> torch.Tensor:
    """``out x n`` weights of 1-D linear resampling with ``align_corners=False`` (PyTorch's rule)."""
    src = ((torch.arange(out, dtype=torch.float64) + 0.5) * (n / out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    frac = src - i0
    m = torch.zeros(out, n, dtype=torch.float64)
    rows = torch.arange(out)
    m.index_put_((rows, i0), 1 - frac, accumulate=True)
    m.index_put_((rows, i1), frac, accumulate=True)
    return m


def _separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``B x C x H x W`` -> ``B x C x h x w`` as ``rows @ x @ cols^T`` (rows ``h x H``, cols ``w x W``)."""
    rows, cols = rows.to(x), cols.to(x)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def adaptive_avg_pool2d(x: torch.Tensor, size: int | tuple[int, int], matrices: bool | None = None) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` (``B x C x H x W`` -> ``B x C x h x w``); as matrix products when
    ``matrices`` is True, or when it is None and deterministic CUDA algorithms are on."""
    if not (_use_matrices(x) if matrices is None else matrices):
        return F.adaptive_avg_pool2d(x, size)
    (h, w), (hi, wi) = _pair(size), x.shape[-2:]
    return _separable(x, adaptive_pool_matrix(h, hi), adaptive_pool_matrix(w, wi))


def resize_bilinear(x: torch.Tensor, size: int | tuple[int, int], matrices: bool | None = None) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` (``B x C x H x W`` -> ``B x C x h x w``);
    as matrix products when ``matrices`` is True, or when it is None and deterministic CUDA
    algorithms are on."""
    if not (_use_matrices(x) if matrices is None else matrices):
        return F.interpolate(x, size=_pair(size), mode="bilinear", align_corners=False)
    (h, w), (hi, wi) = _pair(size), x.shape[-2:]
    return _separable(x, bilinear_matrix(h, hi), bilinear_matrix(w, wi))
