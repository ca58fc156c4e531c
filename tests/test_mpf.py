"""The fusion module (Eqs. 7-9): shapes, ranges, switches, gradients and L_SEG."""

from __future__ import annotations

import pytest
import torch

from vtfusion.model.mpf import MPFConfig, MapSelfAttention, MultimodalPredictionFusion, segmentation_loss


def _maps(b=4, h=15, w=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


@pytest.mark.parametrize("fusion", ["mpf", "concat"])
def test_shapes_and_range(fusion):
    torch.manual_seed(0)
    mpf = MultimodalPredictionFusion(MPFConfig(fusion=fusion))
    m_v, m_t = _maps()
    out = mpf(m_v, m_t, (240, 240))
    assert out["logits"].shape == (4, 1, 15, 15)
    assert out["final"].shape == (4, 1, 240, 240)
    final = out["final"].detach()
    assert float(final.min()) >= 0.0 and float(final.max()) <= 1.0
    assert ("fused" in out) == (fusion == "mpf")
    if fusion == "mpf":
        assert out["fused"].shape == (4, 1, 15, 15)


def test_concat_has_no_fusion_parameters():
    full = sum(p.numel() for p in MultimodalPredictionFusion(MPFConfig(fusion="mpf")).parameters())
    concat = sum(p.numel() for p in MultimodalPredictionFusion(MPFConfig(fusion="concat")).parameters())
    assert concat < full


def test_attention_weights_are_a_softmax_over_positions():
    sam = MapSelfAttention(8, 2)
    m, _ = _maps(2, 5, 7)
    y, w = sam(m, return_weights=True)
    assert y.shape == (2, 8, 5, 7) and w.shape == (2, 35, 35)
    assert torch.allclose(w.sum(-1), torch.ones(2, 35), atol=1e-5) and float(w.detach().min()) >= 0


def test_every_parameter_gets_a_gradient_from_l_seg():
    torch.manual_seed(0)
    mpf = MultimodalPredictionFusion(MPFConfig())
    m_v, m_t = _maps()
    m_v.requires_grad_(True)
    target = torch.zeros(4, 1, 240, 240)
    target[:, :, 100:140, 100:140] = 1
    segmentation_loss(mpf(m_v, m_t, (240, 240))["final"], target).backward()
    missing = [n for n, p in mpf.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing
    assert m_v.grad is not None and torch.any(m_v.grad != 0), "gradient must flow back to M^v (the AIE)"


def test_segmentation_loss_is_eq8():
    pred = torch.tensor([[[[0.5, 1.0], [0.0, 0.25]]]])
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # ((0.5-1)^2 + 0 + 0 + 0.25^2) / (2*2) = (0.25 + 0.0625) / 4
    assert segmentation_loss(pred, mask).item() == pytest.approx(0.078125)
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_loss(pred, mask[..., :1])


def test_fusion_learns_a_map_it_is_given():
    """A few Adam steps fit a simple target (the module is trainable end to end)."""
    torch.manual_seed(0)
    mpf = MultimodalPredictionFusion(MPFConfig())
    m_v, m_t = _maps(4, 15, 15, seed=1)
    target = (m_v > 0.7).float()
    opt = torch.optim.Adam(mpf.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss = segmentation_loss(mpf(m_v, m_t, (15, 15))["final"], target)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="fusion must be one of mpf, concat"):
        MPFConfig(fusion="sum")
    mpf = MultimodalPredictionFusion()
    with pytest.raises(ValueError, match="two B x 1 x h x w maps"):
        mpf(torch.rand(2, 1, 15, 15), torch.rand(2, 1, 14, 15), (240, 240))
