"""WinCLIP and WinCLIP+ (``vtfusion/methods/winclip.py``): windows, harmonic aggregation, the
few-shot memory and a run through ``reproduce``."""

from __future__ import annotations

import pytest
import torch

from vtfusion.methods import Shots, create_method, list_methods
from vtfusion.methods.winclip import WinCLIPConfig, harmonic_aggregate, window_indices

from helpers import quick_config


def test_windows_of_a_small_grid_match_a_hand_count():
    idx = window_indices((4, 5), 2)
    assert idx.shape == (3 * 4, 4), "3 x 4 top-left corners of 2 x 2 windows on a 4 x 5 grid"
    assert idx[0].tolist() == [0, 1, 5, 6] and idx[-1].tolist() == [13, 14, 18, 19]
    cover = torch.bincount(idx.flatten(), minlength=20).reshape(4, 5)
    hand = torch.tensor([[1, 2, 2, 2, 1], [2, 4, 4, 4, 2], [2, 4, 4, 4, 2], [1, 2, 2, 2, 1]])
    assert torch.equal(cover, hand)
    assert window_indices((15, 15), 3).shape == (13 * 13, 9) and window_indices((15, 15), 2).shape == (196, 4)
    strided = window_indices((5, 5), 2, stride=2)
    assert strided.shape == (4, 4) and torch.bincount(strided.flatten(), minlength=25)[24] == 0
    with pytest.raises(ValueError, match="WinCLIPConfig.scales"):
        window_indices((4, 4), 5)
    with pytest.raises(ValueError, match="WinCLIPConfig.stride"):
        WinCLIPConfig(stride=0)


def test_harmonic_aggregation_equals_a_brute_force_loop():
    grid = (4, 5)
    idx = window_indices(grid, 3)
    scores = torch.rand(2, idx.shape[0], generator=torch.Generator().manual_seed(0)) + 0.05
    out = harmonic_aggregate(scores, idx, grid)
    for b in range(2):
        for p in range(20):
            covering = [w for w in range(idx.shape[0]) if p in idx[w].tolist()]
            expected = len(covering) / sum(1.0 / float(scores[b, w]) for w in covering)
            assert out[b].flatten()[p].item() == pytest.approx(expected, rel=1e-5)


def test_window_of_the_whole_grid_is_the_image_embedding(backbone):
    images = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(1))
    whole = window_indices(backbone.grid_size, backbone.grid_size[0])
    (emb,) = backbone.encode_windows(images, [whole])
    assert emb.shape == (2, 1, backbone.embed_dim)
    assert torch.allclose(emb[:, 0], backbone.encode_image(images), atol=1e-5)
    small = backbone.encode_windows(images, [window_indices(backbone.grid_size, 2)])[0]
    assert small.shape == (2, 196, backbone.embed_dim) and small[0].std(0).mean() > 0, "windows differ"


def test_winclip_plus_scores_a_shot_lower_than_an_altered_image(backbone):
    assert {"winclip", "winclip_plus"} <= set(list_methods())
    images = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    method = create_method("winclip_plus", quick_config(2), backbone=backbone)
    method.fit(Shots(images, "toy", "chip", backbone=backbone))
    altered = images[:1].clone()
    altered[..., 64:128, 64:128] = 1 - altered[..., 64:128, 64:128]
    pred = method.predict(torch.cat([images[:1], altered]))
    assert pred.maps.shape == (2, 240, 240) and pred.scores[0] < pred.scores[1]
    assert pred.maps[0, 64:128, 64:128].mean() < pred.maps[1, 64:128, 64:128].mean()
    assert method.cost.predicted_images == 2 and method.cost.fit_seconds > 0
    assert set(pred.extra_maps) == {"text", "memory"}, "WinCLIP+'s zero-shot and few-shot parts"
    assert torch.allclose(pred.maps, (pred.extra_maps["text"] + pred.extra_maps["memory"]) / 2, atol=1e-6)


def test_winclip_methods_run_through_reproduce(toy_root, tmp_path):
    from vtfusion.cache import FeatureCache
    from vtfusion.reproduce import reproduce

    rows = reproduce("table1", quick_config(2), "toy", methods=("winclip", "winclip_plus"), shots=(1,), seeds=(0,),
                     categories=("chip",), results_root=tmp_path / "res", runs_root=tmp_path / "runs",
                     progress=False, cache=FeatureCache.disabled(workers=0))
    by_method = {r["method"]: r for r in rows}
    assert list(by_method) == ["winclip", "winclip_plus"]
    assert by_method["winclip"]["k"] == 0 and by_method["winclip_plus"]["k"] == 1
    for name, row in by_method.items():
        assert 0 <= row["image_auroc_mean"] <= 100 and 0 <= row["pixel_auroc_mean"] <= 100, name


def test_anomalib_compatible_options_are_validated_and_keep_old_result_keys(backbone):
    from vtfusion.methods.winclip import (WINCLIP_ABNORMAL_STATES, WINCLIP_NORMAL_STATES, WINCLIP_TEMPLATES,
                                          winclip_prompts)

    with pytest.raises(ValueError, match="WinCLIPConfig.prompt_average"):
        WinCLIPConfig(prompt_average="median")
    with pytest.raises(ValueError, match="WinCLIPConfig.scale_average"):
        WinCLIPConfig(scale_average="geometric")
    with pytest.raises(ValueError, match="PromptConfig.preset"):
        WinCLIPConfig(prompts="nonsense")
    prompts = winclip_prompts("screw", "winclip")
    assert len(prompts["normal"]) == len(WINCLIP_NORMAL_STATES) * len(WINCLIP_TEMPLATES) == 7 * 21
    assert len(prompts["abnormal"]) == 4 * 21
    assert "a photo of the screw with flaw for anomaly detection." in prompts["abnormal"]
    assert all(s.count("{}") == 1 for s in WINCLIP_TEMPLATES + WINCLIP_NORMAL_STATES + WINCLIP_ABNORMAL_STATES)
    # the options added for the anomalib check enter a method's config (its result key) only when changed
    default = create_method("winclip_plus", quick_config(2), backbone=backbone).config()["options"]
    assert not {"prompt_average", "scale_average", "patch_ln_post"} & set(default)
    compat = create_method("winclip_plus", quick_config(2), backbone=backbone,
                           options=WinCLIPConfig.anomalib_compatible()).config()["options"]
    assert compat["prompt_average"] == "raw" and compat["scale_average"] == "harmonic" and compat["patch_ln_post"]


def test_raw_prompt_averaging_weights_long_embeddings_more():
    from vtfusion.methods.winclip import class_embeddings

    short, long = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    prompts = [torch.cat([short, long]), torch.tensor([[1.0, 1.0]])]
    normalised, raw = class_embeddings(prompts, "normalised"), class_embeddings(prompts, "raw")
    assert torch.allclose(normalised[0], torch.tensor([1.0, 1.0]) / 2**0.5, atol=1e-6), "equal weights"
    assert torch.allclose(raw[0], torch.tensor([1.0, 3.0]) / 10**0.5, atol=1e-6), "the mean of raw vectors"
    assert torch.allclose(raw[1], normalised[1]) and torch.allclose(raw.norm(dim=-1), torch.ones(2))


def test_harmonic_scale_average_and_ln_post_patch_memory(backbone):
    images = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(2))
    shots = Shots(images[:1], "toy", "chip", backbone=backbone)
    methods = {avg: create_method("winclip_plus", quick_config(2), backbone=backbone,
                                  options=WinCLIPConfig(scale_average=avg, patch_level=-1, patch_ln_post=True))
               for avg in ("arithmetic", "harmonic")}
    for m in methods.values():
        m.fit(shots)
    emb = methods["harmonic"]._embed(images)
    per_scale = [harmonic_aggregate(methods["harmonic"].text_score(e), idx, backbone.grid_size)
                 for e, idx in zip(emb, methods["harmonic"].windows())]
    image = methods["harmonic"].text_score(backbone.encode_image(images))[:, None, None].expand(-1, *backbone.grid_size)
    maps = torch.stack(per_scale + [image])
    harmonic, _ = methods["harmonic"].zero_shot(images, emb[:2])
    arithmetic, _ = methods["arithmetic"].zero_shot(images, emb[:2])
    assert torch.allclose(harmonic, 3 / (1 / maps).sum(0), atol=1e-6) and torch.allclose(arithmetic, maps.mean(0))
    assert (harmonic <= arithmetic + 1e-7).all() and not torch.allclose(harmonic, arithmetic)
    # the memory's patch tokens: the last block's tokens through CLIP's ln_post
    last = backbone(images[:1])[:, -1].flatten(1, 2)
    expected = torch.nn.functional.normalize(backbone.clip.visual.ln_post(last), dim=-1)[0]
    assert torch.allclose(methods["harmonic"].memory[-1], expected, atol=1e-5)


def test_harmonic_aggregation_of_rounding_size_distances_stays_near_zero():
    # A test image that is a reference: its few-shot distances are 0 up to float rounding, some
    # of them negative (bench/bench_peer_winclip_parity.py measured +-2.4e-7). A plain harmonic
    # mean of such values can land anywhere (anomalib 2.7.0 gives up to 4/3 there); ours clamps.
    grid = (4, 5)
    idx = window_indices(grid, 2)
    scores = torch.tensor([[2e-7, -2e-7, 0.0, 1e-7] * 3])
    out = harmonic_aggregate(scores, idx, grid)
    assert (out >= 0).all() and out.max() <= 1e-6
    four = torch.tensor([1e-7, -1e-7, 1e-7, -1.1e-7])
    naive = 4 / (1 / four).sum()
    assert naive > 10 * four.abs().max(), "an unguarded harmonic mean leaves the range of its values"
