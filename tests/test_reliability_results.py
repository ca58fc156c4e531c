"""Reliable results (issue 16, part A): keys per config, validated reads, strict JSON, file
modes, a read-only git commit and one training per run dir."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vtfusion.evaluate import RESULT_FORMAT, read_result, result_path
from vtfusion.metrics import METRIC_KEYS

from helpers import quick_config


def _strict_json(path: Path):
    """Parse ``path`` as strict JSON: a bare NaN/Infinity is an error, as in most parsers."""
    def reject(name):
        raise ValueError(f"{path} holds a bare {name}")

    return json.loads(path.read_text(), parse_constant=reject)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _valid_result(**changes) -> dict:
    metrics = {key: 0.5 for key in METRIC_KEYS}
    doc = {"format": RESULT_FORMAT, "config_hash": "0" * 12, "dataset": "toy", "category": "chip",
           "method": "vtfusion", "k": 1, "seed": 0, "config": {}, "metrics": metrics,
           "map_metrics": {"vision": dict(metrics)}}
    doc.update(changes)
    return doc


# --- 1: keys per config, one summary per config, `results ls` ------------------------------

@pytest.fixture
def fake_cells(monkeypatch):
    """The cell runner of ``reproduce`` replaced by one that writes a valid result file at the real
    path, without training; ``nan`` lists the categories whose image AUROC is undefined."""
    import vtfusion.reproduce as reproduce
    from vtfusion.io import atomic_write_json
    from vtfusion.results import config_hash

    calls = []

    def fake(name, cfg, dataset, category, k, seed, folder="vtfusion", results_root=None, **kw):
        method = folder
        cell_cfg = cfg.replace(train=dataclasses.replace(cfg.train, seed=seed))
        path = result_path(cell_cfg, dataset, category, k, seed, method, results_root)
        metrics = {key: 0.5 for key in METRIC_KEYS}
        if category in fake.nan:
            metrics["image_auroc"] = math.nan
        doc = _valid_result(config_hash=config_hash(cell_cfg), dataset=dataset, category=category, method=method,
                            k=k, seed=seed, config=cell_cfg.to_dict(), metrics=metrics, map_metrics={})
        atomic_write_json(path, doc)
        calls.append(path)
        return {**doc, "skipped": False, "result_file": str(path)}

    fake.nan = ()
    fake.calls = calls
    monkeypatch.setattr(reproduce, "run_method", fake)
    return fake


def test_reruns_with_other_options_never_overwrite_results_or_summaries(fake_cells, tmp_path, capsys):
    from vtfusion.cache import FeatureCache
    from vtfusion.cli import main
    from vtfusion.reproduce import reproduce, write_summary

    res = tmp_path / "res"
    common = dict(shots=(1,), seeds=(0,), results_root=res, progress=False, cache=FeatureCache.disabled())
    runs = {"one category": dict(cfg=quick_config(2), categories=("chip",)),
            "two categories": dict(cfg=quick_config(2), categories=("chip", "weave")),
            "other iterations": dict(cfg=quick_config(3), categories=("chip",)),
            "other layers": dict(cfg=quick_config(2).replace(backbone=dataclasses.replace(
                quick_config(2).backbone, layers=(2, 4))), categories=("chip",))}
    written = {}
    for name, run in runs.items():
        rows = reproduce("table1", run["cfg"], "toy", categories=run["categories"], **common)
        written[name] = write_summary(rows, res / "quick")[0]
    assert len(set(written.values())) == len(runs), "a rerun with other options replaced a summary"
    cell_files = {p for p in fake_cells.calls}
    assert len(cell_files) == 4, "chip under 3 configs, and weave (chip under both category lists is one cell)"
    for path in written.values():
        doc = _strict_json(path)
        assert doc["table"] == "table1" and doc["profile"] == "quick"
        assert doc["cells"] == len(doc["rows"][0]["cell_files"])
        for cell in doc["rows"][0]["cell_files"]:
            assert (path.parent / cell).is_file()
    assert main(["results", "ls", "--results", str(res)]) == 0
    out = capsys.readouterr().out
    for path in written.values():
        key = path.stem.rsplit("_", 1)[1]
        assert key in out
    assert "table1" in out and "config" in out and "cells" in out and "when" in out


def test_summary_of_an_undefined_metric_is_null_with_a_reason(fake_cells, tmp_path):
    from vtfusion.cache import FeatureCache
    from vtfusion.reproduce import format_rows, reproduce, write_summary

    fake_cells.nan = ("weave",)
    rows = reproduce("table1", quick_config(2), "toy", shots=(1,), seeds=(0,), categories=("chip", "weave"),
                     results_root=tmp_path, progress=False, cache=FeatureCache.disabled())
    json_path, csv_path = write_summary(rows, tmp_path / "quick")
    (row,) = _strict_json(json_path)["rows"]
    assert row["image_auroc_mean"] is None and "1 of 2 cells" in row["null_reasons"]["image_auroc_mean"]
    assert row["pixel_auroc_mean"] == 50.0
    assert "n/a" in format_rows(rows) and "nan" not in csv_path.read_text().lower()
    cell = _strict_json(tmp_path / "quick" / row["cell_files"][1])
    assert cell["metrics"]["image_auroc"] is None
    assert cell["null_reasons"] == {"metrics.image_auroc": "NaN (undefined)"}
    assert read_result(tmp_path / "quick" / row["cell_files"][1]) is not None, "null metrics are valid"


# --- 5: a cell's key leaves out the category list ----------------------------------------

def test_category_list_and_other_selections_do_not_change_a_cells_key():
    from vtfusion.results import config_hash
    from vtfusion.runs import run_dir

    cfg = quick_config(2)
    selected = cfg.replace(data=dataclasses.replace(cfg.data, categories=("chip", "weave"), seeds=(0, 1, 2),
                                                    shots=8, dataset="mvtec"))
    assert config_hash(selected) == config_hash(cfg)
    assert run_dir(selected, "toy", "chip", 2, 0) == run_dir(cfg, "toy", "chip", 2, 0)
    assert config_hash(quick_config(3)) != config_hash(cfg), "what determines a cell still changes its key"
    assert run_dir(quick_config(3), "toy", "chip", 2, 0) != run_dir(cfg, "toy", "chip", 2, 0)
    other_size = cfg.replace(data=dataclasses.replace(cfg.data, image_size=224))
    assert config_hash(other_size) != config_hash(cfg)


@pytest.fixture
def fake_training(monkeypatch):
    """``train_vtfusion`` replaced by a short sleep; ``fake_training.calls`` counts trainings."""
    import vtfusion.train as train

    calls = []

    def fake(model, shots, cfg, dataset, category, progress=True, monitor=None):
        calls.append(category)
        time.sleep(fake.seconds)
        return train.TrainResult(iterations=cfg.train.iterations)

    fake.seconds = 0.0
    fake.calls = calls
    monkeypatch.setattr(train, "train_vtfusion", fake)
    return fake


def test_reproduce_with_categories_and_train_share_one_run(toy_root, backbone, tmp_path, fake_training):
    from vtfusion.runs import train_or_load

    cfg = quick_config(2)
    with_list = cfg.replace(data=dataclasses.replace(cfg.data, categories=("chip", "weave")))
    _, first = train_or_load(with_list, "toy", "chip", 1, 0, root=tmp_path, backbone=backbone, progress=False)
    _, second = train_or_load(cfg, "toy", "chip", 1, 0, root=tmp_path, backbone=backbone, progress=False)
    assert not first["loaded"] and second["loaded"] and fake_training.calls == ["chip"]


# --- 7: corrupt checkpoints and invalid results are recomputed with a warning -------------

def test_corrupt_checkpoint_is_trained_again_with_a_warning(toy_root, backbone, tmp_path, fake_training):
    from vtfusion.checkpoint import read_checkpoint
    from vtfusion.runs import run_dir, train_or_load

    cfg = quick_config(2)
    model_pt = run_dir(cfg.replace(train=dataclasses.replace(cfg.train, seed=0)), "toy", "chip", 1, 0,
                       tmp_path) / "model.pt"
    model_pt.parent.mkdir(parents=True)
    model_pt.write_bytes(b"not a checkpoint at all")
    with pytest.warns(RuntimeWarning, match=str(model_pt)):
        _, info = train_or_load(cfg, "toy", "chip", 1, 0, root=tmp_path, backbone=backbone, progress=False)
    assert not info["loaded"] and fake_training.calls == ["chip"]
    assert read_checkpoint(model_pt)["format"]


@pytest.mark.parametrize("document, problem", [
    ([1, 2, 3], "JSON list"),
    (_valid_result(metrics=[0.5]), "metrics"),
    (_valid_result(metrics={key: 0.5 for key in METRIC_KEYS if key != "aupro"}), "lacks aupro"),
    (_valid_result(metrics={**{key: 0.5 for key in METRIC_KEYS}, "image_auroc": 2.861}), "outside"),
    (_valid_result(map_metrics={"vision": {"pixel_auroc": -0.1}}), "map_metrics.vision.pixel_auroc"),
    (_valid_result(k="2"), "k is"),
])
def test_invalid_result_file_is_rejected_with_a_warning_naming_it(tmp_path, document, problem):
    path = tmp_path / "k1_seed0_000000000000.json"
    path.write_text(json.dumps(document))
    with pytest.warns(RuntimeWarning, match=problem) as caught:
        assert read_result(path) is None
    assert str(path) in str(caught[0].message)


def test_valid_result_with_null_metrics_is_read(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_valid_result(metrics={key: None for key in METRIC_KEYS})))
    assert read_result(path)["metrics"]["aupro"] is None


def test_out_of_range_result_is_recomputed_by_run_cell(toy_root, backbone, tmp_path):
    from vtfusion.evaluate import run_cell
    from vtfusion.results import config_hash

    cfg = quick_config(1)
    cell_cfg = cfg.replace(train=dataclasses.replace(cfg.train, seed=0))
    path = result_path(cell_cfg, "toy", "chip", 1, 0, "vtfusion", tmp_path / "res")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_valid_result(config_hash=config_hash(cell_cfg),
                                             metrics={**{k: 0.5 for k in METRIC_KEYS}, "image_auroc": 2.861})))
    with pytest.warns(RuntimeWarning, match="outside"):
        result = run_cell(cfg, "toy", "chip", 1, 0, results_root=tmp_path / "res", runs_root=tmp_path / "runs",
                          backbone=backbone)
    assert not result["skipped"] and 0.0 <= result["metrics"]["image_auroc"] <= 1.0
    assert read_result(path)["metrics"]["image_auroc"] <= 1.0


# --- 11: strict JSON and readable files ----------------------------------------------------

def test_json_is_strict_and_explains_its_nulls(tmp_path):
    from vtfusion.io import atomic_write_json

    path = atomic_write_json(tmp_path / "a.json", {"metrics": {"aupro": math.nan, "image_auroc": 0.5},
                                                   "spread": [math.inf, 1.0]})
    doc = _strict_json(path)
    assert doc["metrics"] == {"aupro": None, "image_auroc": 0.5} and doc["spread"] == [None, 1.0]
    assert doc["null_reasons"] == {"metrics.aupro": "NaN (undefined)", "spread[0]": "inf"}


def test_results_checkpoints_and_caches_are_written_0644(tmp_path, umask_022, backbone):
    import numpy as np

    from vtfusion.cache import FeatureCache
    from vtfusion.checkpoint import save_checkpoint
    from vtfusion.io import atomic_write_json
    from vtfusion.train import build_model

    result = atomic_write_json(tmp_path / "result.json", {"a": 1})
    cfg = quick_config(1)
    model = build_model(cfg, dataset="toy", category="chip", backbone=backbone, device="cpu")
    checkpoint = save_checkpoint(model, cfg, tmp_path / "model.pt")
    cached = tmp_path / "cache" / "x.npy"
    FeatureCache._save(cached, np.zeros(3, dtype=np.uint8))
    for path in (result, checkpoint, cached):
        assert _mode(path) == 0o644, f"{path.name} has mode {oct(_mode(path))}"


# --- 14: reading the git commit leaves .git/index alone ------------------------------------

def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def test_git_commit_does_not_touch_the_index(tmp_path, monkeypatch):
    from vtfusion import paths
    from vtfusion.provenance import git_commit

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    monkeypatch.setattr(paths, "PROJECT_ROOT", repo)
    index = repo / ".git" / "index"
    past = time.time() - 3600
    os.utime(index, (past, past))
    os.utime(repo / "a.txt", (past + 60, past + 60))  # stat info newer than the index: git status would refresh it
    before = index.stat().st_mtime_ns
    clean = git_commit()
    assert clean is not None and len(clean) == 40
    (repo / "a.txt").write_text("two\n")
    assert git_commit() == clean + "+dirty"
    assert index.stat().st_mtime_ns == before, ".git/index was rewritten"


# --- 15: one training per run dir ----------------------------------------------------------

def test_identical_runs_started_together_train_once(toy_root, backbone, tmp_path, fake_training):
    from vtfusion.runs import train_or_load

    fake_training.seconds = 1.0
    cfg = quick_config(2)
    infos, errors = [], []

    def run():
        try:
            infos.append(train_or_load(cfg, "toy", "chip", 1, 0, root=tmp_path, backbone=backbone,
                                       progress=False)[1])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    with pytest.warns(RuntimeWarning, match="waiting for"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert fake_training.calls == ["chip"], "the second identical run trained again"
    assert sorted(i["loaded"] for i in infos) == [False, True]
    assert not list(tmp_path.rglob("train.lock")), "the lock is released"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("how", ["dead pid", "too old"])
def test_stale_lock_is_taken_over(tmp_path, how):
    import socket

    from vtfusion.io import file_lock

    lock = tmp_path / "train.lock"
    pid = _dead_pid() if how == "dead pid" else os.getpid()
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "token": "old"}))
    if how == "too old":
        os.utime(lock, (time.time() - 3600, time.time() - 3600))
    start = time.monotonic()
    with file_lock(lock, stale_after=600, timeout=5):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert time.monotonic() - start < 2 and not lock.exists()


def test_live_lock_makes_others_wait(tmp_path):
    from vtfusion.io import LockTimeout, file_lock

    lock = tmp_path / "train.lock"
    with file_lock(lock):
        with pytest.raises(LockTimeout, match=str(lock)):
            with file_lock(lock, timeout=0.3, poll=0.05):
                pass
    assert not lock.exists()
