"""Eqs. 1-5 on hand-computed examples; the bank is frozen; the short adaptation works.

Small examples: a 2 x 2 grid (N = 4), L = 2 levels of c = 2 channels. Locations are
row-major: n = x * w + y.
"""

from __future__ import annotations

import math

import pytest
import torch

from vtfusion.model.prototypes import (
    PrototypeBank,
    PrototypeConfig,
    adapt_image_encoder,
    afs_loss,
    build_prototypes,
    mask_to_grid,
    nearest_prototype,
    nfc_loss,
    stack_levels,
    vision_map,
)

S2 = math.sqrt(2.0)


def features(values: dict[tuple[int, int, int], tuple[float, float]], batch: int = 1) -> torch.Tensor:
    """``batch x 2 x 2 x 2 x 2`` tensor filled with ones, then ``(b, level, n) -> (v0, v1)`` set."""
    f = torch.ones(batch, 2, 2, 2, 2, dtype=torch.float64)
    for (b, level, n), v in values.items():
        f[b, level, :, n // 2, n % 2] = torch.tensor(v, dtype=torch.float64)
    return f


def test_stack_levels_normalises_each_level_and_divides_by_sqrt_L():
    f = features({(0, 0, 0): (3.0, 4.0), (0, 1, 0): (0.0, 2.0), (0, 0, 1): (5.0, 0.0)})
    stacked = stack_levels(f)
    assert stacked.shape == (1, 4, 4)
    # location 0: level 1 (3,4)/5 = (0.6, 0.8); level 2 (0,2)/2 = (0, 1); all / sqrt(2)
    torch.testing.assert_close(stacked[0, 0], torch.tensor([0.6, 0.8, 0.0, 1.0], dtype=torch.float64) / S2)
    # location 1 (row 0, column 1): level 1 (5,0) -> (1,0); level 2 ones -> (1,1)/sqrt(2)
    torch.testing.assert_close(stacked[0, 1], torch.tensor([1.0, 0.0, 1 / S2, 1 / S2], dtype=torch.float64) / S2)
    torch.testing.assert_close(stacked.norm(dim=-1), torch.ones(1, 4, dtype=torch.float64))
    raw = stack_levels(f, "none")
    torch.testing.assert_close(raw[0, 0], torch.tensor([3.0, 4.0, 0.0, 2.0], dtype=torch.float64))


def test_eq1_prototypes_average_the_shots_per_location():
    shots = features({(0, 0, 0): (2.0, 0.0), (0, 1, 0): (0.0, 3.0),
                      (1, 0, 0): (0.0, 1.0), (1, 1, 0): (0.0, 7.0),
                      (0, 0, 3): (1.0, 0.0), (1, 0, 3): (-1.0, 0.0)}, batch=2)
    protos = build_prototypes(shots)
    assert protos.shape == (4, 4)
    # location 0: shot A (1,0 | 0,1)/sqrt2, shot B (0,1 | 0,1)/sqrt2 -> mean (0.5, 0.5 | 0, 1)/sqrt2
    torch.testing.assert_close(protos[0], torch.tensor([0.5, 0.5, 0.0, 1.0], dtype=torch.float64) / S2)
    # location 3: level 1 cancels, level 2 ones in both -> (0, 0 | 1/sqrt2, 1/sqrt2)/sqrt2
    torch.testing.assert_close(protos[3], torch.tensor([0.0, 0.0, 0.5, 0.5], dtype=torch.float64))
    raw = build_prototypes(shots, "none")
    torch.testing.assert_close(raw[0], torch.tensor([1.0, 0.5, 0.0, 5.0], dtype=torch.float64))


def test_eq2_nearest_prototype_searches_all_locations():
    prototypes = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 3.0]])
    stacked = torch.tensor([[[1.0, 1.0], [1.0, 3.0], [2.5, 0.0]]])
    dist, idx = nearest_prototype(stacked, prototypes)
    # (1,1): squared distances 2, 5, 4 -> prototype 0 at D = 2
    # (1,3): exactly prototype 2 -> D = 0, although it sits at location 1
    # (2.5,0): 6.25, 0.25, 11.25 -> prototype 1 at D = 0.25
    torch.testing.assert_close(dist, torch.tensor([[2.0, 0.0, 0.25]]))
    assert idx.tolist() == [[0, 2, 1]]


def test_eq2_shifted_object_still_matches_exactly():
    torch.manual_seed(0)
    shot = torch.randn(1, 2, 3, 4, 4)
    bank = PrototypeBank(num_levels=2, embed_dim=3, grid=(4, 4))
    bank.build(shot)
    shifted = torch.roll(shot, shifts=1, dims=-1)  # the whole object moved one cell right
    dist, idx = bank.distances(shifted)
    torch.testing.assert_close(dist, torch.zeros(1, 16), atol=1e-6, rtol=0)
    cols = torch.arange(16) % 4
    assert torch.equal(idx[0] % 4, (cols - 1) % 4)


def test_eq3_nfc_hinge_and_mean():
    d = torch.tensor([[0.0, 0.5, 0.25, 1.0]], dtype=torch.float64)
    # r = 0.5 -> r^2 = 0.25: hinges 0, 0.25, 0, 0.75 -> mean 0.25
    assert nfc_loss(d, radius=0.5).item() == pytest.approx(0.25, abs=1e-12)
    # paper r = 1e-5: r^2 = 1e-10 is subtracted from every positive distance
    d2 = torch.tensor([[0.0, 0.5, 2e-10, 1.0]], dtype=torch.float64)
    assert nfc_loss(d2, radius=1e-5).item() == pytest.approx((0.5 - 1e-10 + 1e-10 + 1.0 - 1e-10) / 4, abs=1e-15)


def test_eq4_afs_all_and_mask_weighted():
    d = torch.tensor([[0.0, 0.04, 0.09, 1.0]], dtype=torch.float64)
    # r = 0.1, alpha = 0.2 -> (r + alpha)^2 = 0.09: hinges 0.09, 0.05, 0, 0
    assert afs_loss(d, 0.1, 0.2).item() == pytest.approx(0.14 / 4, abs=1e-12)
    w = torch.tensor([[1.0, 0.5, 0.0, 0.0]], dtype=torch.float64)
    assert afs_loss(d, 0.1, 0.2, w).item() == pytest.approx((0.09 + 0.5 * 0.05) / 1.5, abs=1e-12)
    # no anomalous cell: zero, and still differentiable
    d.requires_grad_(True)
    zero = afs_loss(d, 0.1, 0.2, torch.zeros_like(w))
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(d.grad, torch.zeros_like(d))
    # paper values: (1e-5 + 0.1)^2 = 0.0100020001
    assert afs_loss(torch.zeros(1, 1), 1e-5, 0.1).item() == pytest.approx(0.0100020001, rel=1e-6)


def test_mask_to_grid_is_area_fraction():
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, :2, :2] = 1  # top-left cell fully anomalous
    m[0, 0, 0, 2] = m[0, 0, 1, 2] = 1  # half of the top-right cell
    m[0, 0, 3, 0] = 1  # a quarter of the bottom-left cell
    assert mask_to_grid(m, (2, 2)).tolist() == [[1.0, 0.5, 0.25, 0.0]]


def test_eq5_vision_map_is_distance_per_location():
    d = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert vision_map(d, (2, 2)).tolist() == [[[[0.0, 1.0], [2.0, 3.0]]]]


def test_bank_end_to_end_hand_example():
    shot = features({(0, 0, 0): (1.0, 0.0), (0, 1, 0): (1.0, 0.0)})  # location 0: (1,0|1,0)/sqrt2
    bank = PrototypeBank(num_levels=2, embed_dim=2, grid=(2, 2), cfg=PrototypeConfig(radius=0.1, alpha=0.2))
    bank.build(shot.float())
    # Test image: the shot, except location 0 is (0,1 | 1,0) -> stacked (0, u, u, 0), u = 1/sqrt2.
    # Its old prototype (u, 0, u, 0):            D = u^2 + u^2 = 1.
    # The all-ones prototypes (.5, .5, .5, .5):  D = 2 * .5^2 + 2 * (u - .5)^2 = 2 - sqrt2 ~= 0.586 <- nearest
    test = features({(0, 0, 0): (0.0, 1.0), (0, 1, 0): (1.0, 0.0)}).float()
    to_ones, to_old = 2 - S2, 1.0
    m_v = bank(test)
    assert m_v.shape == (1, 1, 2, 2)
    assert m_v[0, 0, 0, 0].item() == pytest.approx(min(to_ones, to_old), abs=1e-6)
    assert m_v[0, 0].flatten()[1:].abs().max().item() < 1e-6
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1  # anomaly exactly on location 0
    losses = bank.losses(shot.float(), test, mask)
    assert losses["nfc"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["afs"].item() == pytest.approx(max(0.0, 0.09 - min(to_ones, to_old)), abs=1e-6)
    all_cfg = PrototypeBank(2, 2, (2, 2), PrototypeConfig(radius=0.1, alpha=0.2, afs_region="all"))
    all_cfg.build(shot.float())
    # literal Eq. 4: the three unchanged locations (D = 0) each contribute 0.09
    assert all_cfg.losses(shot.float(), test)["afs"].item() == pytest.approx(3 * 0.09 / 4, abs=1e-6)


def test_bank_errors_and_state():
    bank = PrototypeBank(2, 2, (2, 2))
    with pytest.raises(RuntimeError, match="empty"):
        bank(torch.rand(1, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="B x 2 x 2 x 2 x 2"):
        bank.build(torch.rand(1, 2, 3, 2, 2))
    bank.build(torch.rand(2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="afs_region='all'"):
        bank.losses(torch.rand(1, 2, 2, 2, 2), torch.rand(1, 2, 2, 2, 2))
    state = bank.state_dict()
    assert set(state) == {"prototypes", "built"} and not list(bank.parameters())
    copy = PrototypeBank(2, 2, (2, 2))
    copy.load_state_dict(state)
    assert bool(copy.built) and torch.equal(copy.prototypes, bank.prototypes)
    with pytest.raises(ValueError, match="afs_region"):
        PrototypeConfig(afs_region="normal")


def test_prototypes_and_backbone_get_no_gradient_and_stay_bit_identical():
    from vtfusion.backbone import build_backbone
    from vtfusion.config import BackboneConfig
    from vtfusion.model.aie import AdaptiveImageEncoder

    backbone = build_backbone(BackboneConfig(arch="tiny", weights="random", layers=(1, 2, 3, 4)))
    aie = AdaptiveImageEncoder.from_backbone(backbone)
    bank = PrototypeBank(backbone.num_levels, backbone.embed_dim, backbone.grid_size)
    gen = torch.Generator().manual_seed(0)
    shots, abnormal = torch.rand(2, 3, 240, 240, generator=gen), torch.rand(2, 3, 240, 240, generator=gen)
    masks = torch.zeros(2, 1, 240, 240)
    masks[..., 64:160, 64:160] = 1
    with torch.no_grad():
        bank.build(aie(backbone(shots)))
    frozen_before = [t.detach().clone() for t in list(backbone.parameters()) + list(bank.buffers())]
    aie_before = [p.detach().clone() for p in aie.parameters()]
    opt = torch.optim.Adam(list(aie.parameters()) + list(backbone.parameters()), lr=1e-2)
    losses = bank.losses(aie(backbone(shots)), aie(backbone(abnormal)), masks)
    (losses["nfc"] + losses["afs"]).backward()
    opt.step()
    assert all(p.grad is None for p in backbone.parameters())
    assert not bank.prototypes.requires_grad
    frozen_after = list(backbone.parameters()) + list(bank.buffers())
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, frozen_after))
    assert any(not torch.equal(a, b) for a, b in zip(aie_before, aie.parameters()))


def test_short_adaptation_reduces_nfc():
    torch.manual_seed(0)
    from vtfusion.model.aie import AdaptiveImageEncoder

    aie = AdaptiveImageEncoder(num_levels=2, in_dim=8, embed_dim=6)
    normal = torch.randn(2, 2, 4, 4, 8)
    abnormal = normal.clone()
    abnormal[:, :, :2, :2] = torch.randn(2, 2, 2, 2, 8)  # a 2 x 2 anomalous patch
    masks = torch.zeros(2, 1, 4, 4)
    masks[..., :2, :2] = 1
    bank = PrototypeBank(2, 6, (4, 4))
    with torch.no_grad():
        bank.build(aie(normal))
    aie.eval()
    history = adapt_image_encoder(aie, bank, normal, abnormal, masks, steps=40, lr=1e-2)
    assert len(history) == 40 and set(history[0]) == {"step", "nfc", "afs", "loss"}
    assert history[-1]["nfc"] < 0.5 * history[0]["nfc"]
    assert not aie.training  # the caller's mode is restored
