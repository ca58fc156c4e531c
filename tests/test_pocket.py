"""The pocket CLIP: its world is deterministic and disjoint from the benchmark; pre-training
learns and resumes; the released weights load, match their checksum and their model card."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vtfusion.data.categories import TOY
from vtfusion.pocket import world
from vtfusion.pocket.captions import caption_statistics, location
from vtfusion.pocket.model import RELEASES, release_paths, sha256_of
from vtfusion.pocket.world import DEFECTS, FAMILIES, HELD_OUT_FAMILIES, TRAIN_FAMILIES, apply_defect, sample_batch

PACKAGE = Path(world.__file__).resolve().parents[1]


def test_world_is_deterministic_and_order_independent():
    a = sample_batch(3, 7, 8)
    b = sample_batch(3, 7, 8)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and a.captions == b.captions
    sample_batch(3, 6, 8)  # drawing another batch first changes nothing
    c = sample_batch(3, 7, 8)
    assert torch.equal(a.images, c.images)
    d = sample_batch(3, 8, 8)
    assert not torch.equal(a.images, d.images)
    assert a.images.shape == (8, 3, 240, 240) and a.images.min() >= 0 and a.images.max() <= 1


def test_world_size_and_mix():
    assert len(FAMILIES) >= 12 and len(DEFECTS) >= 8
    assert set(HELD_OUT_FAMILIES).isdisjoint(TRAIN_FAMILIES)
    batch = sample_batch(0, 0, 64, families=tuple(FAMILIES))
    clean = sum(not d for d in batch.defects)
    assert 16 <= clean <= 48, "about half of the images are defect-free"
    for defects, mask, text in zip(batch.defects, batch.masks, batch.captions):
        assert bool(mask.any()) == bool(defects)
        assert len(defects) <= 3 and text.endswith(".")


@pytest.mark.parametrize("kind", sorted(DEFECTS))
def test_each_defect_marks_exactly_the_pixels_it_changed(kind):
    drawn = FAMILIES["plastic_sheet"].render(torch.Generator().manual_seed(1), 3)
    out, mask = apply_defect(kind, torch.Generator().manual_seed(2), drawn.images, drawn.foreground,
                             drawn.background)
    changed = (out != drawn.images).any(dim=1, keepdim=True)
    assert torch.equal(changed, mask), "outside the mask every pixel is the input's; inside, each changed"
    assert mask.flatten(1).any(dim=1).all(), f"{kind} left an image unchanged"


def test_world_is_disjoint_from_the_toy_benchmark_and_from_das():
    toy_words = set(TOY) | {w for info in TOY.values() for w in info.object_name.split()} - {
        "fabric", "metal", "surface", "circuit"}  # generic words a world may use; the toy objects may not
    for fam in FAMILIES.values():
        names = {fam.name, *fam.nouns, *fam.materials}
        assert not any(w in toy_words for n in names for w in n.replace("_", " ").split()), fam.name
    vocab = {w for c in sample_batch(0, 0, 64, families=tuple(FAMILIES)).captions
             for w in c.lower().rstrip(".").replace(",", "").split()}
    assert vocab.isdisjoint(toy_words), vocab & toy_words
    for module in ("world.py", "captions.py", "pretrain.py", "model.py", "release.py"):
        tree = ast.parse((PACKAGE / "pocket" / module).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m.startswith(("vtfusion.das", "vtfusion.data.toy", "vtfusion.foreground")) for m in imported), \
            (module, imported)


def test_caption_grammar():
    stats = caption_statistics(sample_batch(0, 1, 64).captions)
    assert stats["vocabulary"] > 40 and stats["with_damage_words"] > 0 and stats["with_normal_state_words"] > 0
    mask = torch.zeros(240, 240, dtype=torch.bool)
    mask[10:30, 200:230] = True
    assert location(mask) == "top right"
    mask = torch.zeros(240, 240, dtype=torch.bool)
    mask[110:130, 110:130] = True
    assert location(mask) == "centre"


def test_a_few_pretraining_steps_lower_the_loss(tmp_path, monkeypatch):
    import vtfusion.pocket.pretrain as pretrain_module

    cfg = pretrain_module.PretrainConfig(steps=5, batch_size=8, lr=5e-4, warmup=1, val_every=100, val_batches=1,
                                         checkpoint_every=5, families=("plastic_sheet", "gear"))
    fixed = sample_batch(0, 0, 8, families=cfg.families)  # one batch: a falling loss is learning, not easier data
    monkeypatch.setattr(pretrain_module, "sample_batch",
                        lambda seed, index, *a, **k: fixed if seed == cfg.seed else world.sample_batch(seed, index, *a, **k))
    state = pretrain_module.pretrain(tmp_path / "run", cfg, progress=False)
    losses = [h["loss"] for h in state.history]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "run" / "curves.json").is_file()
    assert [v["step"] for v in state.validation] == [0, 5]


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import vtfusion.pocket.pretrain as pretrain_module
    from vtfusion.pocket.pretrain import PretrainConfig, load_trained, pretrain

    cfg = PretrainConfig(steps=4, batch_size=4, warmup=1, val_every=100, val_batches=1, checkpoint_every=2,
                         families=("plastic_sheet",))
    pretrain(tmp_path / "straight", cfg, progress=False)

    def interrupt_at_step_3(seed, index, *a, **k):
        if seed == cfg.seed and index == 3:
            raise KeyboardInterrupt
        return world.sample_batch(seed, index, *a, **k)

    monkeypatch.setattr(pretrain_module, "sample_batch", interrupt_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "resumed", cfg, progress=False)
    monkeypatch.setattr(pretrain_module, "sample_batch", world.sample_batch)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 2
    resumed = pretrain(tmp_path / "resumed", cfg, progress=False)
    assert resumed.step == 4
    a, _ = load_trained(tmp_path / "straight")
    b, _ = load_trained(tmp_path / "resumed")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="another recipe"):  # a different recipe never mixes into a run
        pretrain(tmp_path / "resumed", PretrainConfig(**{**cfg.__dict__, "lr": 1e-4}), progress=False)


def _released(name: str = "pocket-v1"):
    weights, card = release_paths(name)
    if not weights.is_file():
        pytest.fail(f"{weights} is missing: the released pocket CLIP weights are package data")
    return weights, json.loads(card.read_text())


@pytest.mark.parametrize("name", ["pocket-v1", "pocket-v2"])
def test_released_weights_match_their_checksum_and_size(name):
    weights, card = _released(name)
    assert name in RELEASES and card["name"] == name
    assert sha256_of(weights) == card["sha256"]
    assert weights.stat().st_size <= 20e6, "fp16 weights of at most 20 MB"


@pytest.mark.parametrize("name", ["pocket-v1", "pocket-v2"])
def test_released_model_reproduces_its_model_card(name):
    from vtfusion.pocket.model import load_released
    from vtfusion.pocket.release import regression_check

    _, card = _released(name)
    got = regression_check(load_released(name))
    assert got["accuracy"] == pytest.approx(card["guard"]["accuracy"], abs=1 / 64 + 1e-9)  # one image may flip
    assert got["auroc"] == pytest.approx(card["guard"]["auroc"], abs=2e-3)


def test_pocket_v2_card_states_its_mask_loss_departure():
    _, card = _released("pocket-v2")
    assert card["recipe"]["mask_loss_weight"] > 0 and card["recipe"]["mask_head"] == "text"
    assert any("mask_loss_weight" in line for line in card["limitations"])
    assert "mask_loss_weight" not in _released("pocket-v1")[1]["recipe"]


def test_corrupt_weights_are_refused(tmp_path, monkeypatch):
    from vtfusion.pocket import model as pocket_model

    weights, card = _released()
    fake_dir = tmp_path / "weights"
    fake_dir.mkdir()
    (fake_dir / weights.name).write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    (fake_dir / weights.with_suffix(".json").name).write_text(json.dumps(card))
    monkeypatch.setattr(pocket_model, "WEIGHTS_DIR", fake_dir)
    with pytest.raises(pocket_model.PocketWeightsError, match="SHA-256"):
        pocket_model.load_released("pocket-v1")


def test_linear_probe_reads_a_feature_that_carries_the_label_and_not_one_that_does_not():
    from vtfusion.pocket.pretrain import probe_auroc

    gen = torch.Generator().manual_seed(0)
    y_train, y_test = torch.arange(40) % 2, torch.arange(40) % 3 == 0
    noise_train, noise_test = torch.randn(40, 6, generator=gen), torch.randn(40, 6, generator=gen)
    carries = probe_auroc(noise_train + 3 * y_train[:, None], y_train, noise_test + 3 * y_test[:, None], y_test)
    blind = probe_auroc(noise_train, y_train, noise_test, y_test)
    assert carries > 0.95 and 0.2 < blind < 0.8
    assert math.isnan(probe_auroc(noise_train, torch.zeros(40), noise_test, y_test))  # one class: no probe


def test_validation_records_the_probe_beside_the_zero_shot_numbers():
    import open_clip

    from vtfusion.pocket.model import build_pocket_clip, pocket_tokenizer
    from vtfusion.pocket.pretrain import evaluate

    batches = {"held_out": [sample_batch(7, i, 8, families=("gear", "bolt")) for i in range(2)]}
    out = evaluate(build_pocket_clip(0), open_clip.ClipLoss(), pocket_tokenizer(), batches, "cpu")
    assert {"held_out_loss", "held_out_auroc", "held_out_probe_auroc"} <= set(out)
    assert 0.0 <= out["held_out_probe_auroc"] <= 1.0


def test_single_family_batches_take_their_share_of_steps_in_turn_and_keep_v1s_recipe_at_zero():
    from vtfusion.pocket.pretrain import PretrainConfig

    cfg = PretrainConfig(single_family_share=0.25)
    singles = [cfg.batch_families(step) for step in range(52) if len(cfg.batch_families(step)) == 1]
    assert len(singles) == 13 and [f[0] for f in singles] == list(cfg.families)  # each family once, in turn
    assert all(PretrainConfig().batch_families(step) == PretrainConfig().families for step in range(20))
    assert "single_family_share" not in PretrainConfig().recipe()  # pocket-v1's recipe and checkpoints
    assert cfg.recipe()["single_family_share"] == 0.25
    with pytest.raises(ValueError, match="single_family_share"):
        PretrainConfig(single_family_share=1.5)


def test_patch_damage_target_is_the_share_of_each_patch_a_defect_covers():
    from vtfusion.pocket.pretrain import patch_damage_target

    masks = torch.zeros(1, 1, 240, 240, dtype=torch.bool)
    masks[0, 0, 16:32, 32:48] = True  # patch (1, 2), whole
    masks[0, 0, 224:232, 224:240] = True  # half of patch (14, 14)
    target = patch_damage_target(masks, 15).view(15, 15)
    assert target[1, 2] == 1.0 and target[14, 14] == 0.5
    assert float(target.sum()) == 1.5


def test_patch_damage_loss_is_balanced_and_falls_when_the_head_reads_the_damaged_patch():
    from vtfusion.pocket.pretrain import patch_damage_loss

    masks = torch.zeros(2, 1, 240, 240, dtype=torch.bool)
    masks[0, 0, :16, :16] = True
    tokens = torch.zeros(2, 225, 4)
    tokens[0, 0, 0] = 1.0  # only the damaged patch has feature 0 set
    head = torch.nn.Linear(4, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    blind = float(patch_damage_loss(tokens, head, masks).detach())
    assert blind == pytest.approx(math.log(2) * (449 + 100) / 450, rel=1e-4)  # pos_weight 449, capped at 100
    head.weight.data[0, 0], head.bias.data[0] = 10.0, -5.0
    assert float(patch_damage_loss(tokens, head, masks).detach()) < 0.05 * blind


def test_the_mask_loss_is_recorded_kept_in_the_checkpoint_and_neutral_at_zero(tmp_path):
    from vtfusion.pocket.pretrain import PretrainConfig, pretrain

    assert "mask_loss_weight" not in PretrainConfig().recipe()  # pocket-v1's recipe and checkpoints
    with pytest.raises(ValueError, match="mask_loss_weight"):
        PretrainConfig(mask_loss_weight=-1)
    cfg = PretrainConfig(steps=2, batch_size=4, warmup=1, val_every=100, val_batches=1, checkpoint_every=2,
                         families=("plastic_sheet",), mask_loss_weight=1.0)
    state = pretrain(tmp_path / "run", cfg, progress=False)
    assert all(0 < h["mask_loss"] < 10 for h in state.history)
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert payload["recipe"]["mask_loss_weight"] == 1.0 and set(payload["head"]) == {"weight", "bias"}
    assert "held_out_patch_auroc" in state.validation[-1]


def test_the_text_tower_reads_the_patches_as_flawless_minus_damaged_at_clip_temperature():
    from vtfusion.pocket.pretrain import PretrainConfig, text_patch_logits

    class Prompts(torch.nn.Module):  # "flawless" prompts embed as e0, "damaged" ones as e1
        logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

        def encode_text(self, texts, normalize=True):
            return torch.eye(3)[[1 if "damaged" in t else 0 for t in texts]]

    tokens = torch.tensor([[[0.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # damaged, flawless, neither
    tokenizer = lambda texts: SimpleNamespace(to=lambda device: texts)  # noqa: E731
    logits = text_patch_logits(Prompts(), tokenizer, tokens, ["gear"], "cpu")
    assert torch.allclose(logits, torch.tensor([[10.0, -10.0, 0.0]]))
    assert "mask_head" not in PretrainConfig(mask_head="text").recipe()  # no loss, no head: v1's recipe
    assert PretrainConfig(mask_loss_weight=1.0, mask_head="text").recipe()["mask_head"] == "text"
    with pytest.raises(ValueError, match="mask_head"):
        PretrainConfig(mask_head="conv")


def test_patch_reconstruction_loss_targets_each_tokens_own_patch():
    """A decoder that copies each token (holding its patch's normalised pixels) back has zero
    loss; shuffling the tokens across positions makes it large."""
    from vtfusion.pocket.pretrain import normalise, patch_reconstruction_loss

    images = torch.rand(2, 3, 32, 32)
    patches = torch.nn.functional.unfold(normalise(images), 16, stride=16).transpose(1, 2)  # 2 x 4 x 768
    head = torch.nn.Linear(768, 768)
    with torch.no_grad():
        head.weight.copy_(torch.eye(768))
        head.bias.zero_()
    assert float(patch_reconstruction_loss(patches, head, images)) < 1e-10
    assert float(patch_reconstruction_loss(patches[:, [1, 0, 3, 2]], head, images)) > 0.05


def test_recon_loss_and_init_are_recorded_and_neutral_at_their_defaults(tmp_path):
    from vtfusion.pocket.model import load_released
    from vtfusion.pocket.pretrain import PretrainConfig, pretrain

    assert not {"recon_weight", "init"} & set(PretrainConfig().recipe())  # released recipes unchanged
    with pytest.raises(ValueError, match="recon_weight"):
        PretrainConfig(recon_weight=-1)
    with pytest.raises(ValueError, match="init"):
        PretrainConfig(init="pocket-v9")
    cfg = PretrainConfig(steps=2, batch_size=4, lr=1e-9, warmup=1, val_every=100, val_batches=1, checkpoint_every=2,
                         families=("plastic_sheet",), recon_weight=1.0, init="pocket-v2")
    state = pretrain(tmp_path / "run", cfg, progress=False)
    assert all(0 < h["recon_loss"] < 10 for h in state.history)
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert payload["recipe"]["init"] == "pocket-v2" and set(payload["recon_head"]) == {"weight", "bias"}
    start = load_released("pocket-v2").state_dict()  # a tiny learning rate: still the release's weights
    assert all(torch.allclose(payload["model"][k], v, atol=1e-3) for k, v in start.items())


def test_nearest_reference_distances_match_a_brute_force_loop():
    from vtfusion.pocket.pretrain import nearest_reference_distances

    tokens = torch.randn(6, 9, 5)  # 3 copies of 2 scenes; copy c of scene s at row c * 2 + s
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    brute = torch.tensor([[min(float(((unit[row, n] - unit[row % 2, m]) ** 2).sum()) for m in range(9))
                           for n in range(9)] for row in range(2, 6)])
    assert torch.allclose(nearest_reference_distances(tokens, scenes=2), brute, atol=1e-5)
    same = tokens[:2].repeat(3, 1, 1)  # later copies equal to their references: every distance 0
    assert float(nearest_reference_distances(same, 2).abs().max()) < 1e-5


def test_jitter_references_is_seeded_bounded_and_neutral_at_zero():
    from vtfusion.pocket.pretrain import jitter_references

    images = torch.rand(3, 3, 48, 48)
    first = jitter_references(images, torch.Generator().manual_seed(1))
    assert torch.equal(first, jitter_references(images, torch.Generator().manual_seed(1)))
    assert 0 <= float(first.min()) and float(first.max()) <= 1 and not torch.allclose(first, images, atol=1e-3)
    still = jitter_references(images, torch.Generator().manual_seed(1), shift=0, turn=0, light=0, tint=0)
    assert torch.allclose(still, images, atol=1e-5)


def test_patch_matching_loss_rewards_distances_that_single_out_damaged_patches():
    """Damaged patches far from every reference patch and normal ones on top of one give a
    lower loss than the reverse."""
    from vtfusion.pocket.pretrain import MatchHead, patch_matching_loss

    ref = torch.nn.functional.normalize(torch.randn(1, 4, 8), dim=-1)  # one scene, a 2 x 2 grid
    masks = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    masks[1, 0, :16, :16] = True  # the damaged copy's first patch
    good = ref.clone()
    good[0, 0] = -ref[0, 0]  # the damaged patch points away from every reference token
    bad = ref.clone()
    bad[0, 1:] = -ref[0, 1:]  # the normal patches do
    head = MatchHead()
    assert float(patch_matching_loss(torch.cat([ref, good]), head, masks, 1)) < \
        float(patch_matching_loss(torch.cat([ref, bad]), head, masks, 1))


def test_match_loss_is_recorded_neutral_at_its_default_and_needs_copies(tmp_path):
    from vtfusion.pocket.pretrain import PretrainConfig, pretrain

    assert "match_weight" not in PretrainConfig().recipe()  # released recipes unchanged
    with pytest.raises(ValueError, match="copies"):
        PretrainConfig(match_weight=1.0, copies=1)
    cfg = PretrainConfig(steps=2, batch_size=4, copies=2, lr=1e-9, warmup=1, val_every=100, val_batches=1,
                         checkpoint_every=2, families=("plastic_sheet",), match_weight=1.0)
    state = pretrain(tmp_path / "run", cfg, progress=False)
    assert all(0 < h["match_loss"] < 50 for h in state.history)
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert payload["recipe"]["match_weight"] == 1.0 and set(payload["match_head"]) == {"log_scale", "offset"}
