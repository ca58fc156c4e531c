"""Profiles and their selection."""

from __future__ import annotations

import json

import pytest

from vtfusion.config import PROFILES, get_profile, load_config, resolve_profile


def test_profiles_differ_where_they_should():
    quick, paper = get_profile("quick"), get_profile("paper")
    assert paper.backbone.arch == "ViT-B-16-plus-240" and paper.backbone.weights == "laion400m_e32"
    assert paper.backbone.layers == (3, 6, 9, 12) and paper.data.image_size == 240
    assert (paper.train.lr_aie, paper.train.lr_ate, paper.train.lr_mpf) == (1e-3, 1e-4, 1e-4)
    assert quick.backbone.weights == "random" and quick.data.dataset == "toy"
    assert quick.train.iterations < paper.train.iterations
    json.dumps(paper.to_dict())  # results files embed the config


def test_selection_order(monkeypatch):
    monkeypatch.setenv("VTFUSION_PROFILE", "paper")
    assert resolve_profile() == "paper"
    assert resolve_profile("quick") == "quick", "an explicit argument wins over the environment"
    monkeypatch.setenv("VTFUSION_PROFILE", "fast")
    with pytest.raises(ValueError, match=r"unknown profile 'fast' \(from \$VTFUSION_PROFILE\)"):
        resolve_profile()


def test_auto_falls_back_to_quick_without_gpu_weights_or_data(monkeypatch, capsys, tmp_path):
    import vtfusion.config as config

    monkeypatch.delenv("VTFUSION_PROFILE", raising=False)
    monkeypatch.setattr(config, "paper_requirements", lambda: {"cuda": False, "weights": True, "dataset": True})
    cfg = load_config(announce=True)
    out = capsys.readouterr().out
    assert cfg.profile == "quick" and "chosen automatically" in out and "needs cuda" in out
    monkeypatch.setattr(config, "paper_requirements", lambda: {"cuda": True, "weights": True, "dataset": True})
    assert load_config().profile == "paper"


def test_paper_requirements_report_each_item(monkeypatch, tmp_path):
    import vtfusion.config as config

    monkeypatch.setenv("VTFUSION_MVTEC_ROOT", str(tmp_path / "none"))
    monkeypatch.setenv("VTFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    req = config.paper_requirements()
    assert set(req) == {"cuda", "weights", "dataset"} and req["weights"] is False and req["dataset"] is False
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    monkeypatch.setenv("VTFUSION_CLIP_WEIGHTS", str(weights))
    assert config.paper_requirements()["weights"] is True


def test_profile_names():
    assert set(PROFILES) == {"quick", "paper"}
    with pytest.raises(ValueError, match="choose one of quick, paper"):
        get_profile("slow")


def test_with_pocket_backbone_reads_each_release_as_chosen_on_validation():
    from vtfusion.config import with_pocket_backbone
    from vtfusion.pocket.model import READING, RELEASES

    assert set(READING) == set(RELEASES)
    base = get_profile("quick")
    v1, v2 = with_pocket_backbone(base, "pocket-v1"), with_pocket_backbone(base, "pocket-v2")
    assert v1.model.ate == base.model.ate  # pocket-v1 is read with the defaults: its results keep their keys
    assert (v1.backbone.arch, v1.backbone.weights, v1.backbone.layers) == ("pocket", "pocket-v1", (1, 2, 3, 4))
    assert v2.backbone.layers == (6,) and v2.model.ate.prompts.preset == "paper"
    assert v2.model.ate.logit_scale == 14.0 and v2.model.variant == base.model.variant
    with pytest.raises(ValueError, match="pocket-v9"):
        with_pocket_backbone(base, "pocket-v9")
