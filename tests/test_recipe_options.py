"""Both readings of each training-recipe option, on small hand-checked examples."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from vtfusion.augment import AugmentConfig, augment_shots, shift_images
from vtfusion.metrics import gaussian_smooth
from vtfusion.model.mpf import MPFConfig, MultimodalPredictionFusion
from vtfusion.model.prototypes import (PrototypeBank, PrototypeConfig, afs_loss, as_distance, build_prototypes,
                                       nearest_prototype)
from vtfusion.patch_knn import PatchKNN, PatchKNNConfig, greedy_coreset, patch_descriptors
from vtfusion.train import deterministic_algorithms


def one_hot_features(rows: list[list[int]], levels: int = 1, channels: int = 4) -> torch.Tensor:
    """``k x L x c x 1 x N`` features whose location ``n`` of shot ``i`` is the unit vector ``e_{rows[i][n]}``."""
    k, n = len(rows), len(rows[0])
    f = torch.zeros(k, levels, channels, 1, n, dtype=torch.float64)
    for i, row in enumerate(rows):
        for j, c in enumerate(row):
            f[i, :, c, 0, j] = 1.0
    return f


# --------------------------------------------------------------------------- Eq. 1: mean vs memory


def test_mean_bank_averages_the_shots_memory_bank_keeps_every_patch():
    shots = one_hot_features([[0, 1], [2, 1]])  # two shots, two locations
    mean = build_prototypes(shots, bank="mean")
    memory = build_prototypes(shots, bank="memory")
    assert mean.shape == (2, 4) and memory.shape == (4, 4)
    torch.testing.assert_close(mean[0], torch.tensor([0.5, 0, 0.5, 0], dtype=torch.float64))
    # a test patch equal to shot 2's first patch: distance 0 to the memory, 0.5 to the mean prototype
    query = one_hot_features([[2, 1]])
    assert nearest_prototype(torch.eye(4, dtype=torch.float64)[[2]][None], memory)[0].item() == 0
    assert nearest_prototype(torch.eye(4, dtype=torch.float64)[[2]][None], mean)[0].item() == pytest.approx(0.5)
    bank = PrototypeBank(1, 4, (1, 2), PrototypeConfig(bank="memory"))
    bank.build(shots.float())
    assert bank.num_prototypes == 4 and bank(query.float()).abs().max() < 1e-6


def test_memory_bank_survives_a_checkpoint_round_trip():
    bank = PrototypeBank(1, 4, (1, 2), PrototypeConfig(bank="memory"))
    bank.build(one_hot_features([[0, 1], [2, 1], [3, 3]]).float())
    fresh = PrototypeBank(1, 4, (1, 2), PrototypeConfig(bank="memory"))
    fresh.load_state_dict(bank.state_dict())
    assert torch.equal(fresh.prototypes, bank.prototypes) and fresh.num_prototypes == 6


# --------------------------------------------------------------------------- distances


def test_euclidean_distance_is_the_root_of_the_squared_one():
    sq = torch.tensor([0.0, 0.25, 4.0])
    torch.testing.assert_close(as_distance(sq, "squared"), sq)
    torch.testing.assert_close(as_distance(sq, "euclidean"), torch.tensor([1e-6, 0.5, 2.0]))
    x = torch.zeros(3, requires_grad=True)
    as_distance(x, "euclidean").sum().backward()
    assert torch.isfinite(x.grad).all(), "the root's gradient stays finite at zero distance"


# --------------------------------------------------------------------------- leave-one-out


def test_leave_one_out_compares_a_shot_with_the_other_shots_only():
    shots = one_hot_features([[0, 1], [2, 3]])
    for bank_kind, expected in (("memory", [2.0, 2.0]), ("mean", [2.0, 2.0])):
        bank = PrototypeBank(1, 4, (1, 2), PrototypeConfig(bank=bank_kind))
        bank.build(shots.float())
        own, _ = bank.distances(shots[:1].float())
        assert own.abs().max() < 1e-6 or bank_kind == "mean"
        loo, _ = bank.distances(shots[:1].float(), exclude=torch.tensor([0]))
        # shot 0's patches (e0, e1) against shot 1's (e2, e3): every squared distance is 2
        torch.testing.assert_close(loo[0], torch.tensor(expected))
    with pytest.raises(ValueError, match="at least 2 shots"):
        single = PrototypeBank(1, 4, (1, 2))
        single.build(shots[:1].float())
        single.distances(shots[:1].float(), exclude=torch.tensor([0]))


def test_leave_one_out_mean_bank_averages_the_remaining_shots():
    shots = one_hot_features([[0], [1], [2]])
    bank = PrototypeBank(1, 4, (1, 1), PrototypeConfig(bank="mean"))
    bank.build(shots.float())
    banks = bank.leave_one_out(torch.tensor([1]))
    torch.testing.assert_close(banks[0, 0], torch.tensor([0.5, 0.0, 0.5, 0.0]))


# --------------------------------------------------------------------------- Eq. 4 options


def test_afs_over_m_neighbours_averages_the_hinges():
    # distances to the 3 nearest prototypes 0.004, 0.02, 0.0: margin (0 + 0.1)^2 = 0.01
    d = torch.tensor([[[0.004, 0.02, 0.0]]])
    assert afs_loss(d, 0.0, 0.1).item() == pytest.approx((0.006 + 0.0 + 0.01) / 3)
    assert afs_loss(d[..., :1], 0.0, 0.1).item() == pytest.approx(0.006)


def test_relative_margin_follows_the_normal_distances():
    shots = one_hot_features([[0, 1]])
    normal = torch.zeros(1, 1, 4, 1, 2)
    normal[0, 0, 0, 0, 0], normal[0, 0, 1, 0, 0] = 1.0, 1.0  # (1,1,0,0): squared distance 1 to e0
    normal[0, 0, 1, 0, 1] = 1.0                               # e1: distance 0
    abnormal = shots.float()
    paper = PrototypeBank(1, 4, (1, 2), PrototypeConfig(radius=0.0, alpha=0.1))
    rel = PrototypeBank(1, 4, (1, 2), PrototypeConfig(radius=0.0, alpha=0.1, afs_margin="relative",
                                                       afs_margin_quantile=1.0, feature_norm="none"))
    for b in (paper, rel):
        b.build(shots.float())
    masks = torch.ones(1, 1, 2, 2)
    p = paper.losses(normal, abnormal, masks)
    r = rel.losses(normal, abnormal, masks)
    assert p["afs_margin"].item() == pytest.approx(0.01)
    # relative: r = sqrt(max normal D) = 1, margin (1 + 0.1)^2; the abnormal features sit on prototypes (D = 0)
    assert r["afs_margin"].item() == pytest.approx(1.21)
    assert r["afs"].item() == pytest.approx(1.21) and r["afs_active"].item() == 1.0
    assert p["nfc_active"].item() == pytest.approx(0.5)


# --------------------------------------------------------------------------- Eq. 7 and the MPF


def test_eq7_attention_reading_concatenates_the_attention_matrices():
    torch.manual_seed(0)
    mpf = MultimodalPredictionFusion(MPFConfig(fusion_input="attention"), grid_cells=9)
    m_v, m_t = torch.rand(2, 1, 3, 3, requires_grad=True), torch.rand(2, 1, 3, 3)
    out = mpf(m_v, m_t, (12, 12))
    assert out["fused"].shape == (2, 1, 3, 3) and out["final"].shape == (2, 1, 12, 12)
    assert mpf.fusion.g.body[0][0].in_channels == 18, "2 maps x N = 9 attention channels"
    out["final"].sum().backward()
    assert m_v.grad is not None and m_v.grad.abs().sum() > 0
    attended = MultimodalPredictionFusion(MPFConfig(fusion_input="attended"))
    assert attended.fusion.g.body[0][0].in_channels == 2 * MPFConfig().attn_dim
    with pytest.raises(ValueError, match="grid"):
        MultimodalPredictionFusion(MPFConfig(fusion_input="attention"))


def test_vision_skip_makes_the_untrained_final_map_a_monotone_function_of_mv():
    torch.manual_seed(0)
    mpf = MultimodalPredictionFusion(MPFConfig(vision_skip=True)).eval()
    m_v = torch.rand(4, 1, 5, 5)
    m_t = torch.rand(4, 1, 5, 5)
    logits = mpf(m_v, m_t, (5, 5))["logits"]
    order_v = m_v.flatten().argsort()
    assert torch.all(logits.flatten()[order_v].diff() >= -1e-6), "same order as M^v everywhere"
    plain = MultimodalPredictionFusion(MPFConfig()).eval()
    assert plain.vision_norm is None and plain.text_norm is None


def test_text_skip_keeps_the_text_maps_gradient_positive_and_leaves_old_keys_alone():
    from vtfusion.config import get_profile
    from vtfusion.results import cell_fields, config_hash

    torch.manual_seed(0)
    mpf = MultimodalPredictionFusion(MPFConfig(text_skip=True)).eval()
    m_v, m_t = torch.rand(4, 1, 5, 5), torch.rand(4, 1, 5, 5, requires_grad=True)
    logits = mpf(m_v, m_t, (5, 5))["logits"]
    order_t = m_t.detach().flatten().argsort()
    assert torch.all(logits.detach().flatten()[order_t].diff() >= -1e-6), "same order as M^t everywhere"
    logits.sum().backward()
    assert torch.all(m_t.grad > 0), "raising M^t raises every logit"
    cfg = get_profile("quick")
    on = cfg.replace(model=dataclasses.replace(cfg.model, mpf=dataclasses.replace(cfg.model.mpf, text_skip=True)))
    assert "text_skip" not in cell_fields(cfg)["model"]["mpf"]  # runs stored before the switch keep their keys
    assert config_hash(cfg) != config_hash(on)


# --------------------------------------------------------------------------- evaluation and training switches


def test_gaussian_smoothing_matches_scipy_and_is_off_at_zero():
    x = torch.rand(2, 40, 50, dtype=torch.float64)
    ref = np.stack([ndimage.gaussian_filter(m.numpy(), 4.0, mode="mirror", truncate=4.0) for m in x])
    np.testing.assert_allclose(gaussian_smooth(x, 4.0).numpy(), ref, atol=1e-12)
    assert gaussian_smooth(x, 0.0) is x
    assert gaussian_smooth(x[:, None], 2.0).shape == (2, 1, 40, 50)


def test_deterministic_switch_is_scoped():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before
    with deterministic_algorithms(False):
        assert torch.are_deterministic_algorithms_enabled() == before


def test_augmentation_is_light_deterministic_and_category_aware():
    img = torch.rand(3, 3, 32, 32)
    assert augment_shots(img, torch.Generator().manual_seed(0), AugmentConfig()) is img
    cfg = AugmentConfig(kind="light", max_shift=4, brightness=0.0, contrast=0.0)
    a = augment_shots(img, torch.Generator().manual_seed(1), cfg)
    b = augment_shots(img, torch.Generator().manual_seed(1), cfg)
    assert torch.equal(a, b) and not torch.equal(a, img)
    shifted = shift_images(img[:1], torch.tensor([2]), torch.tensor([-3]))
    torch.testing.assert_close(shifted[0, :, 2:, :-3], img[0, :, :-2, 3:])
    light = AugmentConfig(kind="light", max_shift=0, brightness=0.05, contrast=0.05, flip_textures=True)
    obj = augment_shots(img, torch.Generator().manual_seed(2), light, texture=False)
    assert (obj - img).abs().max() < 0.2, "objects: only intensity changes, never a flip"


def test_adaptor_learning_rate_and_warmup(backbone):
    import dataclasses

    from helpers import quick_config
    from vtfusion.train import build_model, make_optimiser

    cfg = quick_config(3)
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, adaptor_lr_scale=0.1, warmup_iterations=4))
    model = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
    optimiser, schedule = make_optimiser(model, cfg)
    lrs = {g["name"]: g["lr"] for g in optimiser.param_groups}
    assert lrs["aie_adaptor"] == pytest.approx(0.1 * lrs["aie"])
    assert lrs["aie"] == pytest.approx(cfg.train.lr_aie / 4), "warm-up starts at 1/4 of the rate"
    for _ in range(4):
        optimiser.step()
        schedule.step()
    assert {g["name"]: g["lr"] for g in optimiser.param_groups}["aie"] == pytest.approx(cfg.train.lr_aie)


# --------------------------------------------------------------------------- patch-kNN


def test_patch_knn_matches_a_brute_force_loop():
    torch.manual_seed(0)
    shots = torch.randn(2, 2, 3, 3, 5)
    test = torch.randn(2, 2, 3, 3, 5)
    out = PatchKNN().fit(shots).predict_tokens(test, (3, 3))
    memory = [torch.cat([torch.nn.functional.normalize(shots[i, lv, y, x], dim=0) for lv in range(2)]) / math.sqrt(2)
              for i in range(2) for y in range(3) for x in range(3)]
    for b in range(2):
        for y in range(3):
            for x in range(3):
                q = torch.cat([torch.nn.functional.normalize(test[b, lv, y, x], dim=0) for lv in range(2)]) / math.sqrt(2)
                best = min(float((q - m).norm()) for m in memory)
                assert out["grid"][b, 0, y, x].item() == pytest.approx(best, abs=1e-5)
        assert out["score"][b].item() == pytest.approx(out["final"][b].max().item())
    assert patch_descriptors(shots).norm(dim=-1).sub(1).abs().max() < 1e-5


def test_coreset_keeps_the_far_points_and_the_requested_share():
    pts = torch.cat([torch.zeros(50, 3), torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])])
    idx = greedy_coreset(pts, ratio=4 / 53, projection=0, seed=0)
    assert len(idx) == 4 and {50, 51, 52} <= set(idx.tolist())
    knn = PatchKNN(PatchKNNConfig(coreset_ratio=0.5)).fit(torch.randn(2, 1, 3, 3, 4))
    assert knn.memory.shape[0] == 9


# --------------------------------------------------------------------------- Table II's ate_aie fusion


def test_ate_aie_fusion_by_range_or_by_training_statistics(backbone):
    import dataclasses

    from helpers import quick_config
    from vtfusion.train import build_model

    cfg = quick_config(1, variant="ate_aie")
    text = torch.full((1, 1, 2, 2), 2.0)   # M^t / L with L = 4 levels: 0.5
    vision = torch.full((1, 1, 2, 2), 0.2)
    ranged = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
    torch.testing.assert_close(ranged._combine(text / 4, vision), torch.full((1, 1, 2, 2), 0.5 * (0.5 + 0.2 / 4)))
    std_cfg = cfg.replace(model=dataclasses.replace(cfg.model, ate_aie_fusion="standardised"))
    standard = build_model(std_cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
    standard.map_stats.copy_(torch.tensor([0.4, 0.05, 0.1, 0.05]))  # as calibrate() would store them
    torch.testing.assert_close(standard._combine(text / 4, vision), torch.full((1, 1, 2, 2), 0.5 * (2.0 + 2.0)))


def twin_models(backbone, final_map: str, shot_tokens: torch.Tensor, calibrate: bool = False):
    """Two seeded, identically initialised washer models, ``final_map="mpf"`` and ``final_map``,
    with prototypes built from ``shot_tokens``; ``calibrate``: the second is also calibrated on
    them (leave-one-out over the shots, with their raw tokens)."""
    import dataclasses

    from helpers import quick_config
    from vtfusion.train import build_model

    cfg = quick_config(1, final_map="mpf")
    models = []
    for config in (cfg, cfg.replace(model=dataclasses.replace(cfg.model, final_map=final_map))):
        torch.manual_seed(0)
        model = build_model(config, dataset="toy", category="washer", backbone=backbone, device="cpu").eval()
        model.build_prototypes(shot_tokens)
        models.append(model)
    if calibrate:
        with torch.no_grad():
            models[1].calibrate(models[1].aie(shot_tokens), torch.arange(len(shot_tokens)), tokens=shot_tokens)
    return models


def test_final_map_mpf_vision_averages_mf_with_the_squashed_vision_map(backbone):
    import dataclasses

    plain_model, late_model = twin_models(backbone, "mpf_vision", backbone(torch.rand(2, 3, 240, 240)))
    late_model.map_stats.copy_(torch.tensor([0.0, 1.0, 0.3, 0.1]))
    images = torch.rand(2, 3, 240, 240)
    with torch.no_grad():
        plain, both = plain_model(images), late_model(images)
    torch.testing.assert_close(both["vision"], plain["vision"])
    squashed = torch.sigmoid((torch.nn.functional.interpolate(plain["vision"], size=(240, 240), mode="bilinear",
                                                              align_corners=False) - 0.3) / 0.1)
    torch.testing.assert_close(both["final"], 0.5 * (plain["final"] + squashed))
    with pytest.raises(ValueError, match="final_map"):
        dataclasses.replace(plain_model.cfg, final_map="late")


def test_calibration_uses_leave_one_out_vision_statistics(backbone):
    from helpers import quick_config
    from vtfusion.train import build_model

    model = build_model(quick_config(2), dataset="toy", category="washer", backbone=backbone, device="cpu").eval()
    tokens = backbone(torch.rand(2, 3, 240, 240))
    model.build_prototypes(tokens)
    with torch.no_grad():
        features = model.aie(tokens)
        model.calibrate(features, torch.arange(2), tokens=tokens)
        expected = model.bank(features, torch.arange(2))
    torch.testing.assert_close(model.map_stats[2], expected.mean())
    assert model.map_stats[2] > model.bank(features).mean() + 1e-4, "own-bank distances are smaller"


def test_final_map_mpf_knn_averages_mf_with_the_squashed_patch_knn_map(backbone):
    from vtfusion.model.network import VTFusion

    shot_tokens = backbone(torch.rand(2, 3, 240, 240))
    plain_model, knn_model = twin_models(backbone, "mpf_knn", shot_tokens, calibrate=True)
    tokens = backbone(torch.rand(2, 3, 240, 240))
    with torch.no_grad():
        plain, both = plain_model.forward_tokens(tokens, (240, 240)), knn_model.forward_tokens(tokens, (240, 240))
    # the raw-token map is the training-free reference's, squared
    reference = PatchKNN().fit(shot_tokens).predict_tokens(tokens, (240, 240))["grid"]
    torch.testing.assert_close(both["knn"], reference ** 2, atol=1e-5, rtol=1e-4)
    mean, std = knn_model.knn_stats
    assert std > 0 and not torch.equal(knn_model.knn_stats, torch.tensor([0.0, 1.0]))
    squashed = torch.sigmoid((torch.nn.functional.interpolate(both["knn"], size=(240, 240), mode="bilinear",
                                                              align_corners=False) - mean) / std)
    torch.testing.assert_close(both["final"], 0.5 * (plain["final"] + squashed))
    with pytest.raises(ValueError, match="tokens"):
        knn_model.maps_from_features(knn_model.aie(tokens), (240, 240))
    # the shot tokens travel with the checkpoint: a fresh model loads the same maps
    torch.manual_seed(1)
    restored = VTFusion(backbone, knn_model.cfg, knn_model.object_name).eval()
    restored.load_state_dict(knn_model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(restored.forward_tokens(tokens, (240, 240))["final"], both["final"])


def test_calibration_from_augmented_copies_of_a_single_shot(backbone):
    """k = 1: ``shots`` floors the std of the shot's own near-zero distances; the augmented
    copies are unseen images, so their statistics are taken as they are and are larger."""
    import dataclasses

    from helpers import quick_config
    from vtfusion.config import TrainConfig
    from vtfusion.model.network import distance_stats
    from vtfusion.train import build_model, calibrate_after_training

    torch.manual_seed(0)
    shots = torch.rand(1, 3, 240, 240)
    shot_tokens = backbone(shots)
    cfg = quick_config(1, final_map="mpf_knn")
    stats = {}
    for calibration in ("shots", "augmented_single"):
        torch.manual_seed(0)
        model = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cpu").eval()
        model.build_prototypes(shot_tokens)
        tc = dataclasses.replace(cfg.train, calibration=calibration, calibration_views=4)
        calibrate_after_training(model, shots, shot_tokens, tc)
        stats[calibration] = model.knn_stats.clone()
        if calibration == "shots":  # own distances are exactly zero: mean 0, std at the 5% floor of D <= 4
            torch.testing.assert_close(model.knn_stats, torch.tensor([0.0, 0.2]), atol=1e-5, rtol=0)
    mean, std = stats["augmented_single"]
    assert mean > 1e-3 and std > 1e-6 and not torch.allclose(std, torch.tensor(0.2))
    # the same copies, by hand: distances of the views' tokens to the bank of the one shot
    gen = torch.Generator().manual_seed(cfg.train.seed + 7919)
    views = augment_shots(shots.repeat(4, 1, 1, 1), gen, AugmentConfig(kind="light"), False)
    from vtfusion.model.network import tokens_as_features

    distances = model.token_bank(tokens_as_features(backbone(views)))
    torch.testing.assert_close(stats["augmented_single"], torch.stack(distance_stats(distances, True, 4.0)))
    # with k >= 2, augmented_single keeps the leave-one-out statistics of the shots
    two = torch.rand(2, 3, 240, 240)
    model.build_prototypes(backbone(two))
    calibrate_after_training(model, two, backbone(two), tc)
    expected = model.token_bank(tokens_as_features(backbone(two)), torch.arange(2))
    torch.testing.assert_close(model.knn_stats, torch.stack(distance_stats(expected, True, 4.0)))
    with pytest.raises(ValueError, match="calibration"):
        TrainConfig(calibration="copies")
    with pytest.raises(ValueError, match="calibration_views"):
        TrainConfig(calibration_views=0)


def test_smoothed_max_image_score_ranks_a_blob_above_a_single_pixel(backbone):
    import dataclasses

    from helpers import quick_config
    from vtfusion.model.network import ModelConfig
    from vtfusion.train import build_model

    spike, blob = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    spike[0, 0, 20, 20] = 1.0
    blob[0, 0, 30:38, 30:38] = 0.9
    finals = torch.cat([spike, blob])
    cfg = quick_config(1)
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, image_score="max"))
    plain = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
    smooth_cfg = cfg.replace(model=dataclasses.replace(cfg.model, image_score="smoothed_max", image_score_sigma=2.0))
    smooth = build_model(smooth_cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
    # the paper's max: the spike wins; smoothed: the blob wins, and equals the filtered map's max
    assert plain.image_scores(finals).tolist() == [1.0, pytest.approx(0.9)]
    scores = smooth.image_scores(finals)
    assert scores[1] > scores[0]
    torch.testing.assert_close(scores, gaussian_smooth(finals, 2.0).flatten(1).amax(1))
    with pytest.raises(ValueError, match="image_score"):
        ModelConfig(image_score="mean")


def test_late_mean_weight_weighs_the_squashed_map_and_keeps_old_keys_at_one_half(backbone):
    """``late_mean_weight`` w: ``(1 - w) M^f + w squashed``; at 0.5 (every run made before the
    option existed) it is left out of the keys, any other value makes new ones."""
    import dataclasses

    from vtfusion.results import config_hash
    from vtfusion.runs import training_hash

    shot_tokens = backbone(torch.rand(2, 3, 240, 240))
    plain_model, knn_model = twin_models(backbone, "mpf_knn", shot_tokens, calibrate=True)
    tokens = backbone(torch.rand(1, 3, 240, 240))
    with torch.no_grad():
        plain = plain_model.forward_tokens(tokens, (240, 240))
        half = knn_model.forward_tokens(tokens, (240, 240))
        knn_model.cfg = dataclasses.replace(knn_model.cfg, late_mean_weight=0.8)
        heavy = knn_model.forward_tokens(tokens, (240, 240))
    squashed = 2 * half["final"] - plain["final"]  # the squashed kNN map, from the plain mean
    torch.testing.assert_close(heavy["final"], 0.2 * plain["final"] + 0.8 * squashed, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(heavy["final"], half["final"])

    from helpers import quick_config
    from vtfusion.config import NOT_CELL, without_fields
    from vtfusion.results import content_key

    exp = quick_config(1, final_map="mpf_knn")
    legacy = without_fields(exp, ())  # the config as stored before the option existed ...
    assert "late_mean_weight" not in legacy["model"]
    for path in NOT_CELL:
        legacy[path[0]].pop(path[1])
    assert config_hash(exp) == content_key(legacy)  # ... keeps its key
    heavier = exp.replace(model=dataclasses.replace(exp.model, late_mean_weight=0.8))
    assert config_hash(heavier) != config_hash(exp) and training_hash(heavier) != training_hash(exp)
    assert without_fields(heavier, NOT_CELL)["model"]["late_mean_weight"] == 0.8
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="late_mean_weight"):
            dataclasses.replace(exp.model, late_mean_weight=bad)
