"""Prompts, the adaptive text encoder and Eq. 6 (hand example; zero-shot identity at init)."""

from __future__ import annotations

import math

import pytest
import torch

from vtfusion.backbone import build_backbone
from vtfusion.config import BackboneConfig
from vtfusion.model.aie import AdaptiveImageEncoder
from vtfusion.model.ate import (
    AdaptiveTextEncoder,
    ATEConfig,
    TextAdapter,
    ensemble_embedding,
    text_map,
    text_probabilities,
)
from vtfusion.prompts import PromptConfig, build_prompts, object_name_for


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(BackboneConfig(arch="tiny", weights="random", layers=(1, 2, 3, 4)))


def test_prompts_paper_preset_is_the_papers_two_sentences():
    p = build_prompts("bottle", PromptConfig("paper"))
    assert p == {"normal": ["a photo of a normal bottle"], "abnormal": ["a photo of a damaged bottle"]}


def test_prompts_ensemble_covers_states_times_templates():
    p = build_prompts("metal nut")
    assert len(p["normal"]) == 8 * 35 and len(p["abnormal"]) == 5 * 35
    assert "a photo of a normal metal nut." in p["normal"]
    assert "a photo of a damaged metal nut." in p["abnormal"]
    assert "a cropped photo of a flawless metal nut." in p["normal"]
    assert not set(p["normal"]) & set(p["abnormal"])
    assert object_name_for("mvtec", "metal_nut") == "metal nut"
    with pytest.raises(ValueError, match="preset"):
        PromptConfig("learned")
    with pytest.raises(ValueError, match="non-empty"):
        build_prompts(" ")


def test_ensemble_embedding_hand_example():
    e = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    # normalised (0.6, 0.8), (0, 1); mean (0.3, 0.9); norm sqrt(0.9)
    torch.testing.assert_close(ensemble_embedding(e), torch.tensor([0.3, 0.9]) / math.sqrt(0.9))


def test_eq6_text_map_hand_example():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # row 0 normal, row 1 abnormal
    f = torch.zeros(1, 2, 2, 1, 2)  # B=1, L=2, c=2, 1 x 2 grid
    f[0, 0, :, 0, 0] = torch.tensor([1.0, 0.0])  # level 1, location 0
    f[0, 1, :, 0, 0] = torch.tensor([0.0, 2.0])  # level 2, location 0 (normalised to (0, 1))
    f[0, 0, :, 0, 1] = torch.tensor([1.0, 1.0])  # level 1, location 1
    f[0, 1, :, 0, 1] = torch.tensor([5.0, 0.0])  # level 2, location 1
    # scale ln 3: logits (ln3, 0) -> p_abnormal = 1/4; (0, ln3) -> 3/4; equal logits -> 1/2
    probs = text_probabilities(f, t, logit_scale=math.log(3.0))
    torch.testing.assert_close(probs, torch.tensor([[[[0.25, 0.5]], [[0.75, 0.25]]]]))
    m_t = text_map(f, t, logit_scale=math.log(3.0))
    assert m_t.shape == (1, 1, 1, 2)
    torch.testing.assert_close(m_t, torch.tensor([[[[1.0, 0.75]]]]))  # summed over the 2 levels
    # CLIP's scale 100: (1,0) vs abnormal -> 1/(1+e^100), (0,1) -> 1/(1+e^-100)
    m100 = text_map(f, t)
    torch.testing.assert_close(m100[0, 0, 0, 0], torch.tensor(1.0))
    torch.testing.assert_close(m100[0, 0, 0, 1], torch.tensor(0.5))
    # per-image text features (B x 2 x c) give the same result
    torch.testing.assert_close(text_map(f, t.unsqueeze(0), math.log(3.0)), m_t)
    with pytest.raises(ValueError, match="2 x 2"):
        text_map(f, torch.ones(3, 2))


def test_text_adapter_is_identity_at_init_and_trainable():
    a = TextAdapter(4, 2)
    # a positive fc1 bias keeps the ReLU open whatever the random draw (the test once failed
    # when both hidden units were negative for both rows)
    torch.nn.init.constant_(a.fc1.bias, 1.0)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a(x), x, rtol=0, atol=0)
    a(x).sum().backward()
    assert a.fc2.weight.grad.abs().sum() > 0


def test_untrained_ate_returns_clip_ensemble_embeddings(backbone):
    ate = AdaptiveTextEncoder.from_backbone(backbone)
    prompts = build_prompts("metal washer")
    expected = []
    for cls in ("normal", "abnormal"):
        e = backbone.encode_text(prompts[cls])
        e = e / e.norm(dim=-1, keepdim=True)
        m = e.mean(0)
        expected.append(m / m.norm())
    f_t = ate.text_features("metal washer", backbone)
    assert f_t.shape == (2, backbone.embed_dim)
    torch.testing.assert_close(f_t, torch.stack(expected))


def test_text_embeddings_are_computed_once_per_category(backbone):
    class Counting:
        source = "counting-backbone"

        def __init__(self):
            self.calls = 0

        def encode_text(self, prompts):
            self.calls += 1
            return backbone.encode_text(prompts)

    enc = Counting()
    ate = AdaptiveTextEncoder.from_backbone(backbone)
    for _ in range(3):
        ate.text_features("metal washer", enc)
    assert enc.calls == 2  # one per class, first call only
    ate.text_features("integrated circuit chip", enc)
    assert enc.calls == 4
    assert "_cache" not in ate.state_dict()  # derived data, not a checkpoint entry


def test_untrained_model_text_map_is_clips_zero_shot_map(backbone):
    images = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(3))
    tokens = backbone(images)
    aie = AdaptiveImageEncoder.from_backbone(backbone)
    ate = AdaptiveTextEncoder.from_backbone(backbone)
    m_t = text_map(aie(tokens), ate.text_features("metal washer", backbone))
    # zero-shot CLIP, written out: projected patch tokens vs ensemble class embeddings
    visual = backbone.clip.visual
    v = visual.ln_post(tokens) @ visual.proj  # B x L x h x w x c
    v = v / v.norm(dim=-1, keepdim=True)
    t = ate.class_embeddings("metal washer", backbone)
    zero_shot = (100.0 * v @ t.t()).softmax(-1)[..., 1].sum(1).unsqueeze(1)
    torch.testing.assert_close(m_t, zero_shot)


def test_ate_training_step_changes_adapter_not_cache(backbone):
    ate = AdaptiveTextEncoder.from_backbone(backbone)
    cached = ate.class_embeddings("metal washer", backbone).clone()
    opt = torch.optim.Adam(ate.parameters(), lr=1e-3)
    f_t = ate.text_features("metal washer", backbone)
    (f_t[0] @ f_t[1]).backward()  # pull the classes apart
    opt.step()
    assert not torch.equal(ate.adapter.fc2.weight, torch.zeros_like(ate.adapter.fc2.weight))
    torch.testing.assert_close(ate.class_embeddings("metal washer", backbone), cached, rtol=0, atol=0)
    assert not torch.allclose(ate.text_features("metal washer", backbone), f_t.detach())


def test_ate_config_validation():
    with pytest.raises(ValueError, match="adapter"):
        ATEConfig(adapter="transformer")
    with pytest.raises(ValueError, match="logit_scale"):
        ATEConfig(logit_scale=0)
    none = AdaptiveTextEncoder(4, ATEConfig(adapter="none"))
    x = torch.tensor([[3.0, 0, 0, 4.0], [0, 1.0, 0, 0]])
    torch.testing.assert_close(none(x), torch.tensor([[0.6, 0, 0, 0.8], [0, 1.0, 0, 0]]))


def test_clip_image_features_keep_the_text_map_when_the_aie_moves(backbone):
    from vtfusion.model.network import VTFusion, ModelConfig

    images = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(4))
    tokens = backbone(images)
    maps = {}
    for feat in ("aie", "clip"):
        torch.manual_seed(0)
        model = VTFusion(backbone, ModelConfig(variant="ate", ate=ATEConfig(image_features=feat)),
                         object_name="metal washer")
        before = model.maps_from_features(model.aie(tokens), (240, 240), tokens=tokens)["text"]
        with torch.no_grad():  # what the vision losses do to the shared AIE
            for p in model.aie.parameters():
                p.add_(0.05 * torch.randn_like(p))
        after = model.maps_from_features(model.aie(tokens), (240, 240), tokens=tokens)["text"]
        maps[feat] = (before, after)
    torch.testing.assert_close(maps["aie"][0], maps["clip"][0])  # the same map while the AIE is CLIP's init
    assert not torch.allclose(maps["aie"][0], maps["aie"][1])  # Eq. 6 on the AIE follows it
    torch.testing.assert_close(maps["clip"][0], maps["clip"][1])  # CLIP's projection does not
    with pytest.raises(ValueError, match="image_features"):
        ATEConfig(image_features="pixels")
    with pytest.raises(ValueError, match="tokens"):
        model.maps_from_features(model.aie(tokens), (240, 240))
