"""ONNX export and the torch-free ONNX Runtime path (vtfusion.deploy; the `deploy` extra).

One tiny model (the quick profile's project recipe: memory bank, ``final_map="mpf_knn"``,
``image_score="smoothed_max"``) is trained for a few iterations, saved and exported once
per module; the exported graph must give PyTorch's maps and scores to 1e-4.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import torch  # noqa: E402
from helpers import quick_config  # noqa: E402
from PIL import Image  # noqa: E402

from vtfusion.cli import main  # noqa: E402
from vtfusion.image_io import load_image_array, to_unit_float  # noqa: E402
from vtfusion.model.ate import ATEConfig  # noqa: E402
from vtfusion.model.mpf import MPFConfig  # noqa: E402

TOLERANCE = 1e-4
"""Largest absolute difference allowed between ONNX Runtime's fp32 outputs and PyTorch's."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_root):
    """``(model, checkpoint, onnx path, test image paths)``: 3 iterations on toy/washer, exported by the CLI."""
    from vtfusion.runs import train_or_load

    root = tmp_path_factory.mktemp("deploy")
    cfg = quick_config(3)
    assert cfg.model.final_map == "mpf_knn" and cfg.model.image_score == "smoothed_max"  # the project recipe
    model, info = train_or_load(cfg, "toy", "washer", 2, 0, root=root / "runs", progress=False)
    onnx_path = root / "model.onnx"
    assert main(["export", "--checkpoint", info["checkpoint"], "--format", "onnx", "--out", str(onnx_path)]) == 0
    images = sorted((toy_root / "washer" / "test").glob("*/00[01].png"))
    assert len(images) >= 4
    return model.eval(), Path(info["checkpoint"]), onnx_path, images


def torch_predict(model, images: list[Path]) -> dict[str, np.ndarray]:
    pixels = np.stack([to_unit_float(load_image_array(p, 240)) for p in images])
    pred = model.predict(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous())
    return {k: v.numpy() for k, v in pred.items()}


def test_onnx_maps_and_scores_match_pytorch_at_every_batch_size(trained):
    from vtfusion.deploy.onnx_predict import load_onnx

    model, _, onnx_path, images = trained
    ref = torch_predict(model, images)
    runner = load_onnx(onnx_path, threads=1)
    pixels = np.stack([load_image_array(p, runner.image_size) for p in images])
    for batch in (1, 3, len(images)):  # the batch axis is dynamic
        final, score = runner.run(pixels[:batch])
        assert final.shape == (batch, 1, 240, 240) and score.shape == (batch,)
        assert np.abs(final - ref["final"][:batch]).max() <= TOLERANCE
        assert np.abs(score - ref["score"][:batch]).max() <= TOLERANCE
    assert np.ptp(ref["score"]) > 0  # the images are told apart, so equal scores mean something


def test_the_metadata_says_what_the_graph_takes(trained):
    from vtfusion.checkpoint import read_checkpoint
    from vtfusion.config import ExperimentConfig
    from vtfusion.deploy.onnx_predict import load_onnx
    from vtfusion.results import config_hash

    _, checkpoint, onnx_path, _ = trained
    meta = load_onnx(onnx_path).metadata
    payload = read_checkpoint(checkpoint)
    assert meta["image_size"] == "240" and meta["input_kind"] == "uint8" and meta["precision"] == "fp32"
    assert meta["dataset"] == "toy" and meta["category"] == "washer" and meta["vtfusion_version"]
    assert meta["config_hash"] == config_hash(ExperimentConfig.from_dict(payload["config"]))


def test_predict_onnx_writes_what_predict_writes(trained, tmp_path):
    _, checkpoint, onnx_path, images = trained
    files = [str(p) for p in images]
    assert main(["predict", "--checkpoint", str(checkpoint), *files, "--out", str(tmp_path / "pt")]) == 0
    assert main(["predict", "--onnx", str(onnx_path), *files, "--out", str(tmp_path / "ox")]) == 0
    rows = {k: list(csv.DictReader(open(tmp_path / k / "scores.csv"))) for k in ("pt", "ox")}
    # Maps equal to 1e-4 may still fall into neighbouring entries of the 256-colour jet table:
    # an overlay pixel may then differ by half (alpha) the largest step of that table, plus rounding.
    jet = matplotlib.colormaps["jet"](np.arange(256))[:, :3]
    overlay_bound = int(np.ceil(0.5 * 255 * np.abs(np.diff(jet, axis=0)).max())) + 1
    assert [r["name"] for r in rows["pt"]] == [r["name"] for r in rows["ox"]]
    assert [r["path"] for r in rows["pt"]] == [r["path"] for r in rows["ox"]] == files
    for a, b in zip(rows["pt"], rows["ox"]):
        assert abs(float(a["image_score"]) - float(b["image_score"])) <= TOLERANCE
        pt_map, ox_map = (np.load(tmp_path / k / "maps" / f"{a['name']}.npy") for k in ("pt", "ox"))
        assert pt_map.shape == ox_map.shape == (240, 240) and ox_map.dtype == np.float32
        assert np.abs(pt_map - ox_map).max() <= TOLERANCE
        pt_png, ox_png = (np.asarray(Image.open(tmp_path / k / "overlays" / f"{a['name']}.png"), dtype=int)
                          for k in ("pt", "ox"))
        assert np.abs(pt_png - ox_png).max() <= overlay_bound
        assert np.mean(pt_png != ox_png) < 0.01  # and only where a map value sits on a table boundary


def test_predict_onnx_imports_no_torch(trained, tmp_path):
    """The whole `vtfusion predict --onnx` command in a fresh interpreter leaves torch unimported."""
    _, _, onnx_path, images = trained
    out = tmp_path / "o"
    code = ("import sys\nfrom vtfusion.cli import main\n"
            f"rc = main(['predict', '--onnx', {str(onnx_path)!r}, {str(images[0])!r}, '--out', {str(out)!r}])\n"
            "assert rc == 0, rc\n"
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "assert not loaded, loaded\n"
            "assert 'onnxruntime' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "scores.csv").is_file() and len(list((out / "maps").glob("*.npy"))) == 1


def test_float_input_graph_matches_the_uint8_graph(trained, tmp_path):
    from vtfusion.checkpoint import load_checkpoint
    from vtfusion.deploy.export import export_model
    from vtfusion.deploy.onnx_predict import load_onnx

    _, checkpoint, onnx_path, images = trained
    model, cfg, extra = load_checkpoint(checkpoint)
    path = export_model(model, cfg, tmp_path / "float.onnx", extra, input_kind="float")
    as_float, as_uint8 = load_onnx(path, threads=1), load_onnx(onnx_path, threads=1)
    assert as_float.input_kind == "float"
    pixels = np.stack([load_image_array(p, 240) for p in images[:2]])
    (f1, s1), (f2, s2) = as_float.run(pixels), as_uint8.run(pixels)
    assert np.abs(f1 - f2).max() <= TOLERANCE and np.abs(s1 - s2).max() <= TOLERANCE


def test_int8_graph_runs_and_says_so(trained, tmp_path):
    from vtfusion.deploy.export import quantize_int8
    from vtfusion.deploy.onnx_predict import load_onnx

    _, _, onnx_path, images = trained
    int8 = load_onnx(quantize_int8(onnx_path, tmp_path / "model.int8.onnx"), threads=1)
    assert int8.metadata["precision"] == "int8" and int8.metadata["category"] == "washer"
    assert (tmp_path / "model.int8.onnx").stat().st_size < onnx_path.stat().st_size
    final, score = int8.run(np.stack([load_image_array(p, 240) for p in images[:2]]))
    assert final.shape == (2, 1, 240, 240) and np.isfinite(final).all() and 0 <= final.min() <= final.max() <= 1
    assert score.shape == (2,)


@pytest.mark.parametrize("changes", [dict(final_map="mpf", image_score="max"),  # the paper's reading
                                     dict(variant="ate_aie", ate_aie_fusion="standardised"),
                                     dict(ate=ATEConfig(image_features="clip"), mpf=MPFConfig(text_skip=True))],
                         ids=["paper-mpf", "ate_aie-standardised", "clip-features-text-skip"])
def test_other_configs_export_what_they_compute(changes, backbone, toy_root, tmp_path):
    """An untrained but built and calibrated model of another config: the graph still
    reproduces what that config computes."""
    import onnxruntime as ort

    from vtfusion.deploy.export import export_model
    from vtfusion.train import build_model

    cfg = quick_config(1, **changes)
    model = build_model(cfg, object_name="metal washer", backbone=backbone, device="cpu").eval()
    shots = sorted((toy_root / "washer" / "train" / "good").glob("*.png"))[:2]
    tokens = backbone(torch.from_numpy(np.stack([to_unit_float(load_image_array(p)) for p in shots]))
                      .permute(0, 3, 1, 2).contiguous())
    model.build_prototypes(tokens)
    model.calibrate(model.aie(tokens), exclude=torch.tensor([0, 1]), tokens=tokens)  # leave-one-out, as k = 2 does
    path = export_model(model, cfg, tmp_path / "m.onnx")
    images = sorted((toy_root / "washer" / "test").glob("*/000.png"))[:3]
    ref = torch_predict(model, images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = np.stack([load_image_array(p) for p in images]).transpose(0, 3, 1, 2).copy()
    final, score = session.run(None, {"images": pixels})
    assert np.abs(final - ref["final"]).max() <= TOLERANCE and np.abs(score - ref["score"]).max() <= TOLERANCE


def test_an_unbuilt_bank_is_refused_naming_it(backbone, tmp_path):
    from vtfusion.deploy.export import export_model
    from vtfusion.train import build_model

    cfg = quick_config(1)
    model = build_model(cfg, object_name="metal washer", backbone=backbone, device="cpu")
    with pytest.raises(ValueError, match="bank"):
        export_model(model, cfg, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_predict_onnx_bad_input_is_one_line(trained, tmp_path, capsys):
    _, checkpoint, onnx_path, images = trained
    out = str(tmp_path / "o")
    assert main(["predict", "--onnx", str(checkpoint), str(images[0]), "--out", out]) == 2
    one_line_error(capsys, str(checkpoint), "ONNX")
    assert main(["predict", "--onnx", str(onnx_path), "--checkpoint", str(checkpoint), str(images[0]),
                 "--out", out]) == 2
    one_line_error(capsys, "--checkpoint, --onnx")
    assert main(["predict", "--onnx", str(onnx_path), "--out", out]) == 2
    one_line_error(capsys, "images")
    assert main(["predict", "--onnx", str(onnx_path), "--dataset", "toy", str(images[0]), "--out", out]) == 2
    one_line_error(capsys, "--dataset")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "model.pt")]) == 2
    one_line_error(capsys, "--out", ".onnx")


def test_a_wrongly_sized_batch_names_the_expected_shape(trained):
    from vtfusion.deploy.onnx_predict import load_onnx

    runner = load_onnx(trained[2], threads=1)
    with pytest.raises(ValueError, match="240 x 240 x 3"):
        runner.run(np.zeros((1, 224, 224, 3), np.uint8))


def test_load_image_is_the_numpy_loader_divided_by_255(toy_root):
    """One image reader: the tensors PyTorch sees are the arrays the ONNX runner feeds, / 255."""
    from vtfusion.data.images import load_image

    path = next((toy_root / "washer" / "test" / "good").glob("*.png"))
    for size in (240, 97):
        expected = load_image_array(path, size).astype(np.float32) / 255.0
        assert np.array_equal(load_image(path, size).permute(1, 2, 0).numpy(), expected)


def test_the_deploy_extra_is_pinned_and_installed_by_make():
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]["deploy"]
    assert {r.split("==")[0] for r in extra} >= {"onnx", "onnxruntime"} and all("==" in r for r in extra)
    install = next(line for line in (repo / "Makefile").read_text().splitlines() if '-e ".[' in line)
    assert "deploy" in install, install

