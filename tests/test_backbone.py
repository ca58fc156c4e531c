"""The frozen CLIP backbone: token capture, freezing, weights on disk and offline behaviour."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from pathlib import Path

import pytest
import torch

from vtfusion import backbone as bb
from vtfusion.backbone import FrozenCLIP, WeightsNotFoundError, build_backbone
from vtfusion.config import BackboneConfig

TINY = BackboneConfig(arch="tiny", weights="random", layers=(1, 2, 3, 4))
PAPER_ARCH, PAPER_TAG = "ViT-B-16-plus-240", "laion400m_e32"


@pytest.fixture(scope="module")
def tiny() -> FrozenCLIP:
    return build_backbone(TINY)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def no_weights_anywhere(tmp_path, monkeypatch):
    """Every place weights could be found points into an empty temporary folder."""
    monkeypatch.setenv("VTFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~/.cache/clip, open_clip's URL cache
    monkeypatch.delenv("VTFUSION_CLIP_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VTFUSION_OFFLINE", raising=False)
    return tmp_path


def test_tokens_have_the_documented_shape_and_no_grad(tiny, images):
    tokens = tiny(images)
    assert tokens.shape == (2, 4, 15, 15, tiny.width)
    assert tokens.dtype == torch.float32 and not tokens.requires_grad
    assert tiny.grid_size == (15, 15) and tiny.image_size == 240


def test_token_capture_matches_block_outputs_and_levels_differ(tiny, images):
    """Guards the known bug class: hooked tokens aliased by later in-place ops."""
    captured = []
    hooks = [blk.register_forward_hook(lambda m, i, o: captured.append(o[:, 1:].detach().clone()))
             for blk in tiny.clip.visual.transformer.resblocks]
    try:
        tokens = tiny(images)
    finally:
        for h in hooks:
            h.remove()
    for level, block in enumerate(tiny.layers):
        expected = captured[block - 1].reshape(2, 15, 15, -1)
        torch.testing.assert_close(tokens[:, level], expected, rtol=0, atol=0)
    for a in range(tokens.shape[1]):
        for b in range(a + 1, tokens.shape[1]):
            assert not torch.allclose(tokens[:, a], tokens[:, b]), f"levels {a} and {b} are the same tensor"
    # Fresh memory: editing the output cannot touch another call's output.
    again = tiny(images)
    tokens[:, 0].zero_()
    assert again[:, 0].abs().sum() > 0


def test_images_are_normalised_with_openclip_mean_std(tiny):
    grey = torch.tensor(bb.CLIP_MEAN).view(1, 3, 1, 1).expand(1, 3, 240, 240).clone()
    x = torch.zeros(1, 3, 240, 240)  # what the model should see for the mean colour
    direct = tiny.clip.visual.forward_intermediates(x, indices=[0], intermediates_only=True,
                                                    output_fmt="NLC")["image_intermediates"][0]
    torch.testing.assert_close(tiny(grey)[:, 0].reshape(1, 225, -1), direct)


def test_backbone_is_frozen_and_stays_in_eval_mode(tiny, images):
    assert not any(p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not tiny.training and not any(m.training for m in tiny.modules())
    before = [p.detach().clone() for p in tiny.parameters()]
    params = list(tiny.parameters())
    for p in params:  # even if someone hands them to an optimiser, nothing moves
        assert p.grad is None
    torch.optim.Adam(params, lr=1.0).step()
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.parameters()))


def test_bad_inputs_give_clear_errors(tiny):
    with pytest.raises(ValueError, match="240 x 240"):
        tiny(torch.rand(1, 3, 224, 224))
    with pytest.raises(ValueError, match=r"1\.\.4"):
        FrozenCLIP(tiny.clip, layers=(3, 6, 9, 12))
    with pytest.raises(ValueError, match="precision"):
        FrozenCLIP(tiny.clip, layers=(1,), precision="fp16")
    with pytest.raises(ValueError, match="unknown backbone arch"):
        build_backbone(BackboneConfig(arch="ViT-Nope", weights="random"))


def test_random_backbones_are_seeded(tiny, images):
    same = build_backbone(TINY, seed=0)
    other = build_backbone(TINY, seed=1)
    torch.testing.assert_close(same(images), tiny(images), rtol=0, atol=0)
    assert not torch.allclose(other(images), tiny(images))


def test_local_weights_file_round_trip(tiny, images, tmp_path):
    path = tmp_path / "tiny_weights.pt"
    torch.save(build_backbone(TINY, seed=7).clip.state_dict(), path)
    loaded = build_backbone(BackboneConfig(arch="tiny", weights=str(path), layers=(1, 2, 3, 4)))
    reference = build_backbone(TINY, seed=7)
    torch.testing.assert_close(loaded(images), reference(images), rtol=0, atol=0)
    assert not torch.allclose(loaded(images), tiny(images))  # seed 7, not the default seed 0
    prompts = ["a photo of a metal washer.", "a photo of a damaged metal washer."]
    torch.testing.assert_close(loaded.encode_text(prompts), reference.encode_text(prompts), rtol=0, atol=0)
    assert str(path) in loaded.source


def test_unknown_tag_lists_the_valid_ones(no_weights_anywhere):
    with pytest.raises(WeightsNotFoundError, match="laion400m_e32"):
        build_backbone(BackboneConfig(arch=PAPER_ARCH, weights="laion9000"))


def test_missing_weights_file_path_is_reported():
    with pytest.raises(WeightsNotFoundError, match="no file exists there"):
        build_backbone(BackboneConfig(arch="tiny", weights="/nowhere/weights.pt"))


def test_hub_entry_of_e32_is_e31_and_is_not_trusted(no_weights_anywhere):
    """open_clip 3.3.0 maps laion400m_e32 to the e31 hub repository; we must not load it."""
    cfg = bb.pretrained_cfg(PAPER_ARCH, PAPER_TAG)
    assert "e32" in cfg["url"] and "e31" in cfg["hf_hub"]
    assert not bb.hub_matches_tag(cfg, PAPER_TAG)
    assert bb.hub_matches_tag(bb.pretrained_cfg(PAPER_ARCH, "laion400m_e31"), "laion400m_e31")
    assert bb.expected_sha256_prefix(cfg["url"]) == "699c4b84"
    # A cached e31 hub snapshot is never taken for e32: not by the locator behind the
    # paper profile's auto-detection, not by the loader.
    snap = (no_weights_anywhere / "hf" / "hub" / "models--timm--vit_base_patch16_plus_clip_240.laion400m_e31"
            / "snapshots" / "abc")
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"e31")
    from vtfusion.weights import locate_pretrained_weights

    assert locate_pretrained_weights(PAPER_ARCH, PAPER_TAG) is None
    assert locate_pretrained_weights(PAPER_ARCH, "laion400m_e31") == snap / "open_clip_model.safetensors"
    assert all("models--timm" not in str(p) for p in bb.trusted_weight_paths(PAPER_ARCH, PAPER_TAG))


def test_offline_missing_weights_fail_fast_with_instructions(no_weights_anywhere, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("offline: no download may be attempted")

    monkeypatch.setattr(bb.urllib.request, "urlopen", no_network)
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        build_backbone(BackboneConfig(arch=PAPER_ARCH, weights=PAPER_TAG))
    assert time.perf_counter() - start < 5.0
    msg = str(err.value)
    for p in bb.trusted_weight_paths(PAPER_ARCH, PAPER_TAG):
        assert str(p) in msg  # says where it looked
    assert "VTFUSION_CLIP_WEIGHTS" in msg and "laion400m_e32-699c4b84.pt" in msg  # says how to provide it
    assert "offline" in msg


def test_unreachable_download_fails_fast(no_weights_anywhere):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="download failed"):
        bb.resolve_weights_file(PAPER_ARCH, PAPER_TAG,
                                url="http://127.0.0.1:9/vit_b_16_plus_240-laion400m_e32-699c4b84.pt")
    assert time.perf_counter() - start < 10.0
    assert not any((no_weights_anywhere / "cache").rglob("*.part"))


def test_found_local_file_is_used_without_download(no_weights_anywhere, monkeypatch):
    target = bb.default_download_path(PAPER_ARCH, PAPER_TAG)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"weights")
    monkeypatch.setattr(bb.urllib.request, "urlopen", lambda *a, **k: pytest.fail("no download expected"))
    assert bb.resolve_weights_file(PAPER_ARCH, PAPER_TAG) == target


@pytest.mark.network
def test_download_verifies_the_checksum(tmp_path):
    payload = b"pretend these are CLIP weights" * 100
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "w.pt").write_bytes(payload)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path / "srv"), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/w.pt"
        good = hashlib.sha256(payload).hexdigest()[:8]
        out = bb.download_weights(url, tmp_path / "dl" / "ok.pt", sha256_prefix=good, timeout=5)
        assert out.read_bytes() == payload
        with pytest.raises(RuntimeError, match="checksum mismatch"):
            bb.download_weights(url, tmp_path / "dl" / "bad.pt", sha256_prefix="00000000", timeout=5)
        assert not (tmp_path / "dl" / "bad.pt").exists() and not (tmp_path / "dl" / "bad.pt.part").exists()
    finally:
        server.shutdown()


def test_encode_text_shape(tiny):
    emb = tiny.encode_text(["a photo of a chip."] * 3)
    assert emb.shape == (3, tiny.embed_dim) and not emb.requires_grad
    with pytest.raises(ValueError, match="list of prompt"):
        tiny.encode_text("a photo")
