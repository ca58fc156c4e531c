"""Decoded-image and backbone-token caches (vtfusion.cache): equal results, fewer backbone calls.

Quick profile (tiny random backbone) on the toy data; every cache lives in ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vtfusion.backbone import FrozenCLIP, build_backbone
from vtfusion.cache import FeatureCache, PerfSettings, split_key, weights_fingerprint
from vtfusion.data import load_dataset
from vtfusion.evaluate import evaluate_model, predict_split
from vtfusion.metrics import evaluate_maps
from vtfusion.results import config_hash
from vtfusion.train import build_model

from helpers import TINY, quick_config

# float16 keeps 11 significant bits: each token moves by <= 4.9e-4 of its magnitude. The
# maps go through LayerNorm, projections, normalisation and a sigmoid; measured on the toy
# split their largest change is ~1e-5, so 1e-3 leaves a wide margin while still catching
# a wrong token (a swapped or stale image changes maps by 1e-2 or more).
ATOL_FP16 = 1e-3


@pytest.fixture(scope="module")
def test_split(toy_root):
    return load_dataset("toy", "chip", "test")


@pytest.fixture(scope="module")
def model(toy_root, backbone):
    m = build_model(quick_config(2), dataset="toy", category="chip", backbone=backbone, device="cpu")
    m.build_prototypes(backbone(load_dataset("toy", "chip", "train").load_shots(2, 0)))
    return m


@pytest.fixture
def count_calls(monkeypatch):
    """Counts images through the backbone's forward and prompts through its text encoder."""
    calls = {"images": 0, "prompts": 0}
    forward, encode_text = FrozenCLIP.forward, FrozenCLIP.encode_text

    def counting_forward(self, images):
        calls["images"] += len(images)
        return forward(self, images)

    def counting_text(self, prompts, *args, **kwargs):
        calls["prompts"] += len(prompts)
        return encode_text(self, prompts, *args, **kwargs)

    monkeypatch.setattr(FrozenCLIP, "forward", counting_forward)
    monkeypatch.setattr(FrozenCLIP, "encode_text", counting_text)
    return calls


def cache_at(path, **changes) -> FeatureCache:
    return FeatureCache(PerfSettings(**{"root": path, "workers": 0, **changes}))


def test_cached_images_equal_the_plain_loader(test_split, tmp_path):
    cache = cache_at(tmp_path / "a")
    data = cache.images(test_split)
    assert data.images.dtype == torch.uint8 and data.masks.dtype == torch.uint8
    for i in range(len(test_split)):
        sample = test_split[i]
        image = data.batch(i, i + 1)[0]
        assert float((image - sample["image"]).abs().max()) <= 1 / 255
        assert torch.equal(image, sample["image"])  # same decode, same resize: exact
        assert torch.equal(data.masks[i].float(), sample["mask"][0])
    again = cache_at(tmp_path / "a").images(test_split)  # a new object: read from disk (mmap)
    workers = cache_at(tmp_path / "b", workers=2).images(test_split)  # DataLoader worker processes
    for other in (again, workers):
        assert torch.equal(other.images, data.images) and torch.equal(other.masks, data.masks)
    assert sum(1 for _ in tmp_path.rglob("*.npy")) == 4


def test_cached_tokens_give_the_plain_predictions(model, test_split, tmp_path):
    plain = predict_split(model, test_split, batch_size=8, cache=FeatureCache.disabled())
    cached = predict_split(model, test_split, batch_size=8, cache=cache_at(tmp_path))
    rerun = predict_split(model, test_split, batch_size=8, cache=cache_at(tmp_path))
    assert torch.allclose(cached["final"], plain["final"], atol=ATOL_FP16, rtol=0)
    assert torch.allclose(cached["score"], plain["score"], atol=ATOL_FP16, rtol=0)
    assert torch.equal(cached["masks"], plain["masks"]) and torch.equal(cached["labels"], plain["labels"])
    assert torch.equal(rerun["final"], cached["final"]), "cold and warm runs must agree exactly"
    exact = predict_split(model, test_split, batch_size=8, cache=cache_at(tmp_path / "fp32", token_dtype="float32"))
    assert torch.allclose(exact["final"], plain["final"], atol=1e-6, rtol=0)
    m_plain, m_cached = (evaluate_maps(p["final"], p["masks"], p["labels"], image_scores=p["score"])
                         for p in (plain, cached))
    for key, value in m_plain.items():
        assert m_cached[key] == pytest.approx(value, abs=2e-3), key


def test_second_evaluation_does_not_run_the_backbone(model, test_split, tmp_path, count_calls):
    cache = cache_at(tmp_path)
    timings: dict[str, float] = {}
    first = evaluate_model(model, test_split, cache=cache, timings=timings)
    assert count_calls["images"] == len(test_split)
    assert set(timings) == {"images", "setup", "backbone", "heads", "metrics"}
    again = evaluate_model(model, test_split, cache=cache)  # memory
    assert cache.stats["tokens_memory_hits"] == 1 and cache.stats["images_memory_hits"] == 1
    fresh = cache_at(tmp_path)
    third = evaluate_model(model, test_split, cache=fresh)  # disk, as in a new process
    assert fresh.stats["tokens_disk_hits"] == 1 and fresh.stats["images_disk_hits"] == 1
    assert count_calls["images"] == len(test_split), "the backbone ran again on a cached split"
    assert first == again == third


def test_rerun_of_a_cell_needs_no_backbone_and_keeps_the_config_hash(toy_root, backbone, tmp_path, count_calls):
    from vtfusion.evaluate import run_cell

    cfg = quick_config(2)
    kw = dict(runs_root=tmp_path / "runs", backbone=backbone)
    first = run_cell(cfg, "toy", "chip", 1, 0, results_root=tmp_path / "res1", cache=cache_at(tmp_path / "c"), **kw)
    assert count_calls["images"] > 0 and count_calls["prompts"] > 0
    count_calls.update(images=0, prompts=0)
    # A new results folder: the trained model is loaded, the evaluation runs again on cached data.
    again = run_cell(cfg, "toy", "chip", 1, 0, results_root=tmp_path / "res2", cache=cache_at(tmp_path / "c"), **kw)
    assert not again["skipped"] and again["model_loaded_from_cache"]
    assert count_calls == {"images": 0, "prompts": 0}, "rerun recomputed backbone outputs"
    # equal up to float32 rounding: the loaded model recomputes the same maps
    assert again["metrics"] == pytest.approx(first["metrics"], rel=1e-6, abs=1e-7)
    assert again["config_hash"] == first["config_hash"] == config_hash(cfg.replace(train=dataclasses.replace(
        cfg.train, seed=0)))
    assert first["eval_cache"] == {"images": True, "tokens": True, "token_dtype": "float16", "compile": False}
    # The switches are not part of the cell: a disabled cache finds the finished result.
    skipped = run_cell(cfg, "toy", "chip", 1, 0, results_root=tmp_path / "res1", cache=FeatureCache.disabled(), **kw)
    assert skipped["skipped"]


def copy_category(toy_root, dest):
    shutil.copytree(toy_root / "chip", dest / "chip")
    return load_dataset("folder", "chip", "test", root=dest)


def test_cache_follows_file_changes(toy_root, tmp_path):
    split = copy_category(toy_root, tmp_path / "data")
    cache = cache_at(tmp_path / "cache")
    before = cache.images(split)
    key = split_key(split)
    idx = next(i for i, r in enumerate(split.records) if r.mask is None)  # a good image: no mask to match
    other = 0 if idx else 1
    target = split.records[idx].image
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: new key
    assert split_key(split) != key
    key = split_key(split)
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(target)  # new content, size, mtime
    assert split_key(split) != key
    after = cache.images(split)
    assert cache.stats["images_decoded"] == 2
    assert torch.equal(after.batch(idx, idx + 1)[0], split[idx]["image"])
    assert not torch.equal(after.images[idx], before.images[idx])
    assert torch.equal(after.images[other], before.images[other])


def test_cache_follows_backbone_changes(model, test_split, tmp_path, count_calls):
    cache = cache_at(tmp_path)
    n = len(test_split)
    base = cache.tokens(model.backbone, test_split)
    assert count_calls["images"] == n
    cache.tokens(build_backbone(TINY), test_split)  # same config and seed
    assert count_calls["images"] == n, "an identical backbone must reuse the tokens"
    other_seed = cache.tokens(build_backbone(TINY, seed=1), test_split)
    assert count_calls["images"] == 2 * n and not torch.equal(other_seed, base)
    fewer = dataclasses.replace(TINY, layers=(1, 2, 3))
    three = cache.tokens(build_backbone(fewer), test_split)
    assert count_calls["images"] == 3 * n and three.shape[1] == 3 and base.shape[1] == 4
    assert cache.stats["tokens_computed"] == 3 and cache.stats["tokens_memory_hits"] == 1


def test_corrupt_cache_files_are_recomputed(model, test_split, tmp_path):
    reference = predict_split(model, test_split, cache=cache_at(tmp_path))
    tokens = next((tmp_path / "tokens").glob("*.npy"))
    tokens.write_bytes(b"not a numpy file")
    images = next((tmp_path / "images").glob("*.images.npy"))
    images.write_bytes(images.read_bytes()[:1000])  # truncated
    fresh = cache_at(tmp_path)
    out = predict_split(model, test_split, cache=fresh)
    assert fresh.stats["corrupt"] == 2 and fresh.stats["tokens_computed"] == 1 and fresh.stats["images_decoded"] == 1
    assert torch.equal(out["final"], reference["final"])
    again = cache_at(tmp_path)
    predict_split(model, test_split, cache=again)
    assert again.stats["tokens_disk_hits"] == 1 and again.stats["corrupt"] == 0


def test_disabled_cache_writes_nothing_and_env_switches(model, test_split, tmp_path, monkeypatch, count_calls):
    off = FeatureCache.disabled(root=tmp_path)
    predict_split(model, test_split, cache=off)
    predict_split(model, test_split, cache=off)
    assert count_calls["images"] == 2 * len(test_split)
    assert not list(tmp_path.rglob("*")), "a disabled cache must not write files"
    monkeypatch.setenv("VTFUSION_TOKEN_CACHE", "0")
    monkeypatch.setenv("VTFUSION_WORKERS", "0")
    monkeypatch.setenv("VTFUSION_CACHE", str(tmp_path / "envcache"))
    settings = PerfSettings.from_env()
    assert not settings.tokens and settings.images and settings.workers == 0
    assert settings.directory == tmp_path / "envcache" / "features"
    monkeypatch.setenv("VTFUSION_IMAGE_CACHE", "maybe")
    with pytest.raises(ValueError, match="VTFUSION_IMAGE_CACHE"):
        PerfSettings.from_env()
    with pytest.raises(ValueError, match="token_dtype"):
        PerfSettings(token_dtype="int8")


def test_compile_switch_is_off_by_default(backbone, monkeypatch):
    calls = []
    assert FeatureCache().prepare_backbone(backbone) is backbone
    assert getattr(backbone, "_compiled_call_impl", None) is None
    monkeypatch.setattr(backbone, "compile", lambda *a, **k: calls.append(1))
    FeatureCache(PerfSettings(compile=True)).prepare_backbone(backbone)
    assert calls == [1]


def test_weights_fingerprint_is_exact_and_thread_independent(backbone):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = weights_fingerprint(backbone)
    finally:
        torch.set_num_threads(threads)
    assert weights_fingerprint(backbone) == one
    changed = build_backbone(TINY)
    with torch.no_grad():
        changed.clip.visual.conv1.weight[0, 0, 0, 0] += 1.0
    assert weights_fingerprint(changed) != one
