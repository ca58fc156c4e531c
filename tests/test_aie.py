"""Adaptive image encoder: identity at initialisation, shapes, training reaches the adaptor."""

from __future__ import annotations

import pytest
import torch

from vtfusion.backbone import build_backbone
from vtfusion.config import BackboneConfig
from vtfusion.model.aie import AdaptiveImageEncoder, AIEConfig, ConvAdaptor, LinearMap


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(BackboneConfig(arch="tiny", weights="random", layers=(1, 2, 3, 4)))


@pytest.fixture(scope="module")
def tokens(backbone):
    return backbone(torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(1)))


def test_untrained_aie_equals_clip_projected_tokens(backbone, tokens):
    aie = AdaptiveImageEncoder.from_backbone(backbone)
    features = aie(tokens)
    assert features.shape == (2, 4, backbone.embed_dim, 15, 15)
    visual = backbone.clip.visual
    expected = (visual.ln_post(tokens) @ visual.proj).permute(0, 1, 4, 2, 3)  # B x L x c x h x w
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(aie.project(tokens), expected)


def test_linear_map_copies_ln_post_and_proj_exactly():
    ln = torch.nn.LayerNorm(6)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    proj = torch.randn(6, 4)
    m = LinearMap(6, 4)
    m.init_from_clip(ln, proj)
    x = torch.randn(3, 6)
    torch.testing.assert_close(m(x), ln(x) @ proj)
    with pytest.raises(ValueError, match="proj has shape"):
        LinearMap(6, 5).init_from_clip(ln, proj)


def test_residual_adaptor_is_identity_at_init_but_trainable():
    adaptor = ConvAdaptor(channels=2, kernel_size=3)
    x = torch.arange(18.0).reshape(1, 2, 3, 3)
    torch.testing.assert_close(adaptor(x), x, rtol=0, atol=0)
    adaptor(x).pow(2).sum().backward()
    # d/dW of sum((x + conv(x))^2) at W = 0 is 2 * correlate(x, x): non-zero.
    assert adaptor.conv.weight.grad.abs().sum() > 0


def test_a_training_step_changes_linear_maps_and_adaptors(backbone, tokens):
    aie = AdaptiveImageEncoder.from_backbone(backbone)
    before = {k: v.clone() for k, v in aie.state_dict().items()}
    opt = torch.optim.Adam(aie.parameters(), lr=1e-3)
    aie(tokens).pow(2).mean().backward()
    opt.step()
    after = aie.state_dict()
    assert not torch.equal(before["adaptors.0.conv.weight"], after["adaptors.0.conv.weight"])
    assert not torch.equal(before["maps.0.linear.weight"], after["maps.0.linear.weight"])


def test_config_variants(backbone, tokens):
    shared = AdaptiveImageEncoder.from_backbone(backbone, AIEConfig(share_adaptor=True))
    assert len(shared.adaptors) == 1
    none = AdaptiveImageEncoder.from_backbone(backbone, AIEConfig(adaptor="none"))
    torch.testing.assert_close(none(tokens), none.project(tokens), rtol=0, atol=0)
    rand = AdaptiveImageEncoder.from_backbone(backbone, AIEConfig(linear_init="random", adaptor_init="default"))
    assert not torch.allclose(rand(tokens), none(tokens))
    with pytest.raises(ValueError, match="adaptor_kernel"):
        AIEConfig(adaptor_kernel=2)
    with pytest.raises(ValueError, match="linear_init"):
        AIEConfig(linear_init="xavier")


def test_wrong_token_shape_is_explained(backbone, tokens):
    aie = AdaptiveImageEncoder.from_backbone(backbone)
    with pytest.raises(ValueError, match="layers and the AIE levels"):
        aie(tokens[:, :3])
