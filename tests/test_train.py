"""The full model, Algorithm 1 training and checkpoints (quick profile, tiny backbone)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vtfusion.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from vtfusion.config import get_profile
from vtfusion.model.network import ModelConfig
from vtfusion.runs import train_or_load
from vtfusion.train import build_model, train_vtfusion

from helpers import quick_config


@pytest.fixture(scope="module")
def shots(toy_root):
    from vtfusion.data import load_dataset

    return load_dataset("toy", "washer", "train").load_shots(2, 0)


@pytest.mark.parametrize("variant", ["full", "ate_aie", "ate"])
def test_maps_shapes_and_ranges(shots, backbone, variant):
    cfg = quick_config(3, variant=variant)
    model = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
    model.build_prototypes(backbone(shots))
    out = model.predict(shots)
    levels = len(cfg.backbone.layers)
    assert out["text"].shape == (2, 1, 15, 15) and float(out["text"].min()) > 0 and float(out["text"].max()) < levels
    assert out["final"].shape == (2, 1, 240, 240)
    assert float(out["final"].min()) >= 0 and float(out["final"].max()) <= 1
    # the image score: the recipe's (project: max of the Gaussian-smoothed map), never above the max
    torch.testing.assert_close(out["score"], model.image_scores(out["final"]))
    assert bool((out["score"] <= out["final"].flatten(1).amax(1) + 1e-6).all())
    assert ("vision" in out) == (variant != "ate")
    if variant != "ate":
        assert out["vision"].shape == (2, 1, 15, 15) and 0 <= float(out["vision"].min()) <= float(out["vision"].max()) <= 4
    assert ("fused" in out) == (variant == "full")


def test_gradients_reach_heads_never_backbone_or_prototypes(shots, backbone):
    cfg = quick_config(1)
    model = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
    before_backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    train_vtfusion(model, shots, cfg, "toy", "washer", progress=False)
    prototypes = model.bank.prototypes.clone()
    for name in ("aie", "ate", "mpf"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert grads and any(g is not None and torch.any(g != 0) for g in grads), name
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert not model.bank.prototypes.requires_grad
    train_vtfusion(model, shots, cfg, "toy", "washer", progress=False)  # rebuilds the bank, same shots
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before_backbone[k]), k


def test_prototypes_frozen_during_training(shots, backbone, monkeypatch):
    cfg = quick_config(3)
    model = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
    snapshots = []
    original = model.maps_from_features

    def spy(features, out_size, exclude=None, tokens=None):
        snapshots.append(model.bank.prototypes.clone())
        return original(features, out_size, exclude, tokens)

    monkeypatch.setattr(model, "maps_from_features", spy)
    train_vtfusion(model, shots, cfg, "toy", "washer", progress=False)
    assert len(snapshots) == 3 and all(torch.equal(s, snapshots[0]) for s in snapshots)


def test_ate_variant_trains_only_the_text_adapter(shots, backbone):
    cfg = quick_config(2, variant="ate")
    model = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
    aie_before = {k: v.clone() for k, v in model.aie.state_dict().items()}
    result = train_vtfusion(model, shots, cfg, "toy", "washer", progress=False)
    assert set(result.history[0]) == {"iteration", "seg", "total"}
    assert all(torch.equal(v, aie_before[k]) for k, v in model.aie.state_dict().items())


def test_training_is_deterministic_on_cpu(shots, backbone):
    cfg = quick_config(3)
    runs = []
    for _ in range(2):
        model = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
        runs.append([h["total"] for h in train_vtfusion(model, shots, cfg, "toy", "washer", progress=False).history])
    assert runs[0] == runs[1]
    other = dataclasses.replace(cfg.train, seed=1)
    model = build_model(cfg.replace(train=other), dataset="toy", category="washer", backbone=backbone, device="cpu")
    assert [h["total"] for h in train_vtfusion(model, shots, cfg.replace(train=other), "toy", "washer",
                                                progress=False).history] != runs[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_deterministic_switch_repeats_cuda_training(shots):
    """TrainConfig.deterministic: two CUDA runs give the same parameters, bit for bit (the
    MPF's pooling and resizing take their matrix form, whose backward has no atomics)."""
    from helpers import TINY
    from vtfusion.backbone import build_backbone

    cfg = quick_config(5)
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, device="cuda", deterministic=True))
    backbone = build_backbone(TINY)  # its own: the module's fixture stays on the CPU
    runs = []
    for _ in range(2):
        model = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cuda")
        train_vtfusion(model, shots, cfg, "toy", "washer", progress=False)
        runs.append([p.detach().cpu() for p in model.parameters() if p.requires_grad])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_checkpoint_round_trip_gives_identical_maps(shots, backbone, tmp_path):
    cfg = quick_config(2)
    model = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
    train_vtfusion(model, shots, cfg, "toy", "washer", progress=False)
    path = save_checkpoint(model, cfg, tmp_path / "m.pt", {"note": "test"})
    assert path.stat().st_size < 20e6
    assert not any(k.startswith("backbone.") for k in read_checkpoint(path)["state_dict"])
    loaded, cfg2, extra = load_checkpoint(path, backbone=backbone)
    assert cfg2 == cfg and extra == {"note": "test"}
    a, b = model.predict(shots), loaded.predict(shots)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="vtfusion train"):
        read_checkpoint(tmp_path / "none.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a vtfusion checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


def test_train_or_load_reuses_a_finished_run(toy_root, backbone, tmp_path):
    cfg = quick_config(2)
    model, info = train_or_load(cfg, "toy", "washer", 2, 0, root=tmp_path, backbone=backbone, progress=False)
    assert not info["loaded"] and len(info["history"]) == 2 and len(info["shots"]) == 2
    again, info2 = train_or_load(cfg, "toy", "washer", 2, 0, root=tmp_path, backbone=backbone, progress=False)
    assert info2["loaded"] and info2["history"] == info["history"]


def test_model_config_validation():
    with pytest.raises(ValueError, match="Table II rows"):
        ModelConfig(variant="vision_only")


@pytest.mark.slow
def test_training_learns_on_toy_washer(toy_root, backbone):
    """After the quick schedule the model beats its own untrained state on the validation split.

    The quick profile's recipe on the tiny random backbone (the unit-test backbone),
    toy/washer, k = 2, seed 0, 300 iterations, scored on ``val`` (never ``test``).
    MEASURED_NOTE below gives what this project's 2-core CPU machines measured; the
    asserted margins sit well inside it and fail for a model that does not learn.

    MEASURED_NOTE (2-core CPU, 2 threads): untrained image AUROC 0.545, pixel AUROC 0.939,
    pixel AP 0.140 (the recipe's final map already averages in the raw-token
    nearest-neighbour map, so the untrained pixel numbers are high); trained 0.653, 0.943
    and 0.186 (image score: max of the smoothed final map), with the total loss falling
    from 0.25 to 0.06. Asserted: image AUROC +0.04, pixel AP +0.025, pixel AUROC
    not lower by more than 0.01.
    """
    from vtfusion.data import load_dataset
    from vtfusion.metrics import evaluate_maps

    cfg = quick_config(300)
    val = load_dataset("toy", "washer", "val")
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    masks = torch.stack([val[i]["mask"] for i in range(len(val))])[:, 0]
    labels = torch.tensor(val.labels)
    shots = load_dataset("toy", "washer", "train").load_shots(2, 0)

    torch.manual_seed(0)
    model = build_model(cfg, dataset="toy", category="washer", backbone=backbone, device="cpu")
    shot_tokens = backbone(shots)
    model.build_prototypes(shot_tokens)
    model.calibrate(model.aie(shot_tokens), torch.arange(2), tokens=shot_tokens)
    before = evaluate_maps(model.predict(images)["final"][:, 0], masks, labels)
    result = train_vtfusion(model, shots, cfg, "toy", "washer", progress=False)
    after = evaluate_maps(model.predict(images)["final"][:, 0], masks, labels)
    first = sum(h["total"] for h in result.history[:10]) / 10
    last = sum(h["total"] for h in result.history[-10:]) / 10
    print(f"untrained {before}\ntrained {after}\nloss {first:.4f} -> {last:.4f} in {result.seconds:.1f}s")
    assert last < 0.5 * first
    assert after["image_auroc"] > before["image_auroc"] + 0.04
    assert after["pixel_ap"] > before["pixel_ap"] + 0.025
    assert after["pixel_auroc"] > before["pixel_auroc"] - 0.01
