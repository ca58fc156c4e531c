"""The matrix forms of adaptive average pooling and bilinear resizing match PyTorch's ops."""

import pytest
import torch
import torch.nn.functional as F

from vtfusion.model.resample import adaptive_avg_pool2d, adaptive_pool_matrix, bilinear_matrix, resize_bilinear


@pytest.mark.parametrize("size_in,size_out", [((15, 15), 1), ((15, 15), 2), ((15, 15), 3), ((15, 15), 6),
                                              ((8, 5), (3, 4)), ((7, 7), 7)])
def test_adaptive_pool_matrices_match_torch(size_in, size_out) -> None:
    x = torch.randn(2, 3, *size_in, dtype=torch.float64, requires_grad=True)
    y_ref = F.adaptive_avg_pool2d(x, size_out)
    y = adaptive_avg_pool2d(x, size_out, matrices=True)
    assert y.shape == y_ref.shape
    assert torch.allclose(y, y_ref, atol=1e-12)
    g = torch.randn_like(y)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.allclose(gx, gx_ref, atol=1e-12)


@pytest.mark.parametrize("size_in,size_out", [((2, 2), (8, 8)), ((4, 4), (15, 15)), ((15, 15), (8, 8)),
                                              ((8, 15), (15, 8)), ((1, 3), (5, 7)), ((6, 6), (6, 6))])
def test_bilinear_matrices_match_torch(size_in, size_out) -> None:
    x = torch.randn(2, 3, *size_in, dtype=torch.float64, requires_grad=True)
    y_ref = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False)
    y = resize_bilinear(x, size_out, matrices=True)
    assert torch.allclose(y, y_ref, atol=1e-12)
    g = torch.randn_like(y)
    assert torch.allclose(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0], atol=1e-12)


def test_matrix_rows_are_weights() -> None:
    """Each output is a convex combination of inputs (rows sum to 1, weights >= 0)."""
    for m in (adaptive_pool_matrix(6, 15), bilinear_matrix(15, 4), bilinear_matrix(4, 15)):
        assert torch.allclose(m.sum(1), torch.ones(m.shape[0], dtype=m.dtype)) and (m >= 0).all()


def test_default_path_is_torch_on_cpu() -> None:
    """Off CUDA the functions are PyTorch's own ops, bit for bit, deterministic mode or not."""
    x = torch.randn(1, 2, 15, 15)
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.equal(adaptive_avg_pool2d(x, 3), F.adaptive_avg_pool2d(x, 3))
        assert torch.equal(resize_bilinear(x, 30), F.interpolate(x, size=(30, 30), mode="bilinear",
                                                                 align_corners=False))
    finally:
        torch.use_deterministic_algorithms(False)
