"""FineGrainedAD (``vtfusion/model/finegrained.py``, ``vtfusion/methods/finegrainedad.py``) and
its captions (``vtfusion/resources/captions``): losses on hand-checked examples, the caption
schema, gradients reaching only the prompts, and a run through ``reproduce``."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from vtfusion.data.captions import (CAPTION_DATASETS, caption_categories, caption_file, load_captions,
                                    validate_captions)
from vtfusion.data.registry import categories
from vtfusion.model.finegrained import (CONCATENATED, NORMAL, REPLACED, FineGrainedAD, FineGrainedADConfig,
                                        aggregate_regions, alignment_loss, build_units, compositional_loss,
                                        context_match_loss, dpc_knn, encode_prompt_embeddings, fuse_maps,
                                        multilevel_loss, token_wise_text_map, triplet_loss, unit_embeddings,
                                        visual_map)

from helpers import quick_config

E = torch.eye(4)  # e1..e4: orthonormal unit vectors


# -- the losses and maps on small hand-checked examples -----------------------------------
def test_alignment_loss_is_the_cross_entropy_of_the_normal_column():
    token = E[0].view(1, 1, 4)  # one shot, one token: f = e1
    # logits (1 * <f, e1>, 1 * <f, e2>) = (1, 0): CE = log(1 + e^-1)
    assert alignment_loss(token, E[0], E[1:2], 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # a region weight 2 multiplies the feature: logits (2, 0)
    w = torch.full((1, 1), 2.0)
    assert alignment_loss(token, E[0], E[1:2], 1.0, w).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    # weighting the loss instead: a weighted mean of per-token losses (log 2 and log(1 + e^-1))
    two = torch.stack([E[0], (E[0] + E[1]) / 2 ** 0.5 * 0]).view(1, 2, 4)  # second token: the zero vector
    wl = torch.tensor([[3.0, 1.0]])
    expected = (3 * math.log(1 + math.exp(-1)) + math.log(2)) / 4
    assert alignment_loss(two, E[0], E[1:2], 1.0, wl, "loss").item() == pytest.approx(expected, rel=1e-6)


def test_triplet_and_consistency_losses_by_hand():
    f = E[0].view(1, 1, 4)
    assert triplet_loss(f, E[0], E[1], margin=1.0).item() == 0.0, "0 - 2 + 1 < 0"
    assert triplet_loss(f, E[1], E[0], margin=1.0).item() == pytest.approx(3.0), "2 - 0 + 1"
    assert context_match_loss(E[0:1], E[1:2]).item() == pytest.approx(2.0), "||e1 - e2||^2"
    assert context_match_loss(E[0:2], E[0:2]).item() == 0.0
    # e1 - normalise(e1 + e2) - e3 = (1 - 1/sqrt2, -1/sqrt2, -1, 0)
    expected = math.sqrt((1 - 2 ** -0.5) ** 2 + 0.5 + 1)
    assert compositional_loss(E[0:1], [E[0:1], E[1:2]], E[2:3]).item() == pytest.approx(expected, rel=1e-6)
    assert compositional_loss(E[0:1], [E[0:1], E[1:2]], None).item() == pytest.approx(
        math.sqrt((1 - 2 ** -0.5) ** 2 + 0.5), rel=1e-6)


def test_inference_maps_by_hand():
    units = torch.stack([torch.stack([E[0], E[1]]), torch.stack([E[2], E[3]])])  # 2 units: (normal, abnormal)
    tokens = torch.stack([E[0], E[2], E[3]]).view(1, 3, 4)
    prob, chosen = token_wise_text_map(tokens, units, scale=2.0)
    assert chosen.tolist() == [[0, 1, 0]], "e1 -> unit 0, e3 -> unit 1, e4 ties at 0 -> the first unit"
    assert prob[0, 0].item() == pytest.approx(1 / (1 + math.exp(2))), "softmax(2 * (1, 0))[abnormal]"
    assert prob[0, 2].item() == pytest.approx(0.5), "e4 is orthogonal to unit 0's two prompts"
    vis = visual_map([tokens], [E[0:1]])
    assert vis.tolist() == [[0.0, 0.5, 0.5]], "(1 - <f, e1>) / 2"
    assert fuse_maps(torch.tensor(0.5), torch.tensor(0.25)).item() == pytest.approx(1 / 3), "2 / (2 + 4)"
    assert fuse_maps(torch.tensor(0.5), torch.tensor(0.25), "mean").item() == pytest.approx(0.375)


def test_dpc_knn_separates_two_blobs_and_regions_are_matched_to_their_prompts():
    gen = torch.Generator().manual_seed(0)
    blobs = torch.cat([torch.randn(10, 3, generator=gen) * 0.05, torch.randn(6, 3, generator=gen) * 0.05 + 3])
    labels = dpc_knn(blobs, 2, k=3)
    assert len(set(labels[:10].tolist())) == 1 and len(set(labels[10:].tolist())) == 1
    assert labels[0] != labels[10]
    # washer: object, ring, hole, edge, background; the tokens are noisy copies of the part prompts
    units = build_units(load_captions("toy", "washer"))
    assert [u.level for u in units] == ["object", "component", "component", "component", "background"]
    # prompts: object e6, components near each other (e1 + e2, e1 + e3, e1 + e4), background e5 far from them
    eye = torch.eye(8)
    prompts = F.normalize(torch.stack([eye[5], eye[0] + eye[1], eye[0] + eye[2], eye[0] + eye[3], eye[4]]), dim=-1)
    which = torch.tensor([1] * 6 + [2] * 5 + [3] * 5 + [4] * 9)
    tokens = (prompts[which] + 0.01 * torch.randn(25, 8, generator=gen)).unsqueeze(0)
    cfg = FineGrainedADConfig(cluster_k=(3, 3))
    reg = aggregate_regions(F.normalize(tokens, dim=-1), prompts, units, cfg)
    assert (reg.labels[0, which == 4] == 3).all(), "the background cluster is the one nearest the background prompt"
    for u in (1, 2, 3):  # each component prompt is matched to the region of its own tokens
        assert (reg.labels[0, which == u] == reg.matched[0, u]).all()
        assert (reg.weights[u, 0, which == u] == 1 + cfg.region_boost).all()
        assert (reg.weights[u, 0, which != u] == 1).all()
    assert reg.matched[0, 0] == -1 and (reg.weights[0] == 1).all(), "the object unit weighs every token alike"
    # two shots whose clusters come out numbered differently are matched shot by shot
    swapped = torch.cat([tokens, tokens[:, torch.randperm(25, generator=gen)]])
    two = aggregate_regions(F.normalize(swapped, dim=-1), prompts, units, FineGrainedADConfig(cluster_k=(3, 3),
                                                                                             matching="hungarian"))
    for s in range(2):
        assert sorted(two.matched[s, 1:4].tolist()) == [0, 1, 2], "hungarian: one region per component"
        for u in (1, 2, 3):
            mine = two.labels[s] == two.matched[s, u]
            assert (two.weights[u, s, mine] == 1 + cfg.region_boost).all() and mine.sum() == (which == u).sum()


# -- the captions -------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", CAPTION_DATASETS)
def test_caption_files_pass_the_schema_and_cover_every_category(dataset):
    data = json.loads(caption_file(dataset).read_text(encoding="utf-8"))
    assert validate_captions(data) == [], caption_file(dataset)
    assert data["dataset"] == dataset and "hand-written" in data["written_by"]
    assert set(caption_categories(dataset)) == set(categories(dataset)), "every registered category, no other"
    expected = {"mvtec": 15, "visa": 12, "toy": 4, "real_ad": 2}[dataset]
    assert len(caption_categories(dataset)) == expected
    for cat in caption_categories(dataset):
        units = build_units(load_captions(dataset, cat))
        assert units[0].level == "object" and all(u.replaced for u in units)
        assert all(n != r for u in units for n in u.normal for r in u.replaced), "a replaced prompt differs"


def test_the_schema_rejects_a_broken_file():
    data = json.loads(caption_file("toy").read_text(encoding="utf-8"))
    bad = copy.deepcopy(data)
    bad["categories"]["chip"]["caption"] = "a green board"  # no object phrase left to replace
    bad["categories"]["washer"]["components"][0]["color"] = []
    bad["categories"]["weave"]["defects"] = ["a hole"]  # no {} for the phrase
    errors = validate_captions(bad)
    assert any(e.startswith("chip: caption must contain") for e in errors)
    assert any(e.startswith("washer: component 'ring': color") for e in errors)
    assert any(e.startswith("weave: every defect state") for e in errors)
    assert validate_captions({"format": "x"})[0].startswith("format must be")
    with pytest.raises(ValueError, match="no captions for dataset 'appd'"):
        caption_file("appd")


# -- the prompts train, the towers stay frozen ------------------------------------------
def test_learnable_prompts_get_gradients_while_clip_stays_frozen(backbone):
    ids = backbone.tokenize(["a photo of a washer.", "a metal ring"])
    with torch.no_grad():
        mine = encode_prompt_embeddings(backbone.clip, backbone.clip.token_embedding(ids), ids)
        assert torch.allclose(mine, backbone.clip.encode_text(ids), atol=1e-5), "the same text tower"
    model = FineGrainedAD(backbone, load_captions("toy", "washer"), FineGrainedADConfig(epochs=3))
    kinds = set(model.prompts.kind.tolist())
    assert kinds == {NORMAL, REPLACED, CONCATENATED}
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompts.normal_ctx", "prompts.abnormal_ctx"]
    assert not any(p.requires_grad for p in backbone.parameters())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    shots = backbone(torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(0)))
    tokens = model.level_tokens(shots, -1)
    feats = model.prompts()
    emb = unit_embeddings(feats, model.prompts.unit, model.prompts.kind, model.prompts.n_units)
    regions = aggregate_regions(tokens, emb[:, 0].detach(), model.prompts.units, model.cfg)
    multilevel_loss(feats, model.prompts, tokens, regions, model.cfg)["total"].backward()
    assert model.prompts.normal_ctx.grad.abs().sum() > 0 and model.prompts.abnormal_ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())
    ctx = model.prompts.normal_ctx.detach().clone()
    record = model.fit(shots, monitor=lambda m: {"units": float(m.class_embeddings.shape[0])}, monitor_every=2)
    assert len(record.history) == 3 and not torch.equal(ctx, model.prompts.normal_ctx.detach()), "the prompts moved"
    assert record.monitor == [{"step": 2, "units": 5.0}], "watched every 2 steps, with the current prompts"
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items()), "CLIP is unchanged"
    assert "prompts.normal_ctx" in model.state_dict() and not any(k.startswith("backbone") for k in model.state_dict())
    out = model.forward_tokens(backbone(torch.rand(1, 3, 240, 240)))
    assert out["final"].shape == (1, 15, 15) and ((out["final"] >= 0) & (out["final"] <= 1)).all()


def test_too_few_token_levels_is_a_clear_error_not_an_index_error():
    from helpers import TINY
    from vtfusion.backbone import build_backbone

    one_level = build_backbone(dataclasses.replace(TINY, layers=(4,)))
    with pytest.raises(ValueError, match=r"levels \(-1, -2, -1\).*gives 1.*memory_levels=\(-1,\)"):
        FineGrainedAD(one_level, load_captions("toy", "washer"), FineGrainedADConfig())
    model = FineGrainedAD(one_level, load_captions("toy", "washer"), FineGrainedADConfig(memory_levels=(-1,)))
    assert model.memory.shape[0] == 1


# -- a quick-profile run through reproduce ----------------------------------------------
def test_finegrainedad_runs_through_reproduce_with_provenance(toy_root, tmp_path):
    from vtfusion.cache import FeatureCache
    from vtfusion.reproduce import reproduce

    kwargs = dict(shots=(1,), seeds=(0,), categories=("washer",), results_root=tmp_path / "res",
                  runs_root=tmp_path / "runs", progress=False, cache=FeatureCache.disabled(workers=0))
    (row,) = reproduce("table1", quick_config(2), "toy", methods=("finegrainedad",), **kwargs)
    assert row["method"] == "finegrainedad" and row["k"] == 1 and row["cells"] == 1
    assert 0 <= row["image_auroc_mean"] <= 100 and 0 <= row["pixel_auroc_mean"] <= 100
    assert row["paper_image_auroc"] is None, "FineGrainedAD is not a row of the VTFusion paper's Table I"
    cell_file = tmp_path / "res" / "quick" / row["cell_files"][0]
    cell = json.loads(cell_file.read_text())
    assert cell["method"] == "table1-finegrainedad" and cell["shots"] and cell["git_commit"] is not None
    assert cell["backbone"] == {"arch": "tiny", "weights": "random"} and cell["profile"] == "quick"
    assert cell["method_config"]["options"]["epochs"] == 100 and len(cell["method_config"]["captions"]) == 16
    assert set(cell["map_metrics"]) == {"text", "vision"} and cell["train_seconds"] > 0
    assert cell["cost"]["predicted_images"] == cell["n_test"]
    saved = list((tmp_path / "runs").rglob("model.pt"))
    assert len(saved) == 1, "the trained prompts are kept in the run store"
    cell_file.unlink()  # evaluate again: the prompts are loaded, not trained
    (again,) = reproduce("table1", quick_config(2), "toy", methods=("finegrainedad",), **kwargs)
    redone = json.loads(cell_file.read_text())
    assert redone["model_loaded_from_cache"] and redone["metrics"] == cell["metrics"]
    from vtfusion.runs import fitted_method

    method, info = fitted_method("finegrainedad", quick_config(2), "toy", "washer", 1, 0, root=tmp_path / "runs")
    assert info["loaded"] and info["units"][0] == "object" and len(info["regions"]) == 1, "the same saved fit"


def test_reported_values_are_labelled_as_the_finegrainedad_papers():
    from vtfusion.paper_tables import PaperCellNotFound, finegrainedad_reported, paper_value

    table = {("mvtec", "image"): (91.04, 93.66, 94.51), ("mvtec", "pixel"): (95.49, 96.08, 96.71),
             ("visa", "image"): (84.16, 86.16, 86.95), ("visa", "pixel"): (96.42, 96.97, 97.54)}
    for (dataset, level), values in table.items():
        assert [finegrainedad_reported(dataset, level, k) for k in (1, 2, 4)] == list(values)
    assert finegrainedad_reported("any", "inference") == 23.3
    with pytest.raises(PaperCellNotFound, match="k=8"):
        finegrainedad_reported("mvtec", "image", 8)
    with pytest.raises(PaperCellNotFound):
        paper_value("I", "finegrainedad", "mvtec", "image", k=2)  # not a row of the VTFusion paper
