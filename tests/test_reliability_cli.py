"""Issue 16 part B: the command line checks its arguments before any work, reports errors in
one line (``error: <what> (<where>); <fix>``, exit code 2), and never overwrites outputs.

Every test here finishes before any training: the trainer is replaced by a stub that fails
the test if it is reached.
"""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from vtfusion.cli import main
from vtfusion.config import DataConfig, TrainConfig, get_profile

TRAIN = ["train", "--profile", "quick", "--dataset", "toy", "--category", "washer"]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the CLI ever reaches the trainer."""
    import vtfusion.runs

    def trainer_reached(*args, **kwargs):
        raise AssertionError(f"training started: {args[1:5]}")

    monkeypatch.setattr(vtfusion.runs, "train_or_load", trainer_reached)


def one_line_error(capsys, option: str) -> str:
    """The stderr of a failed command: exactly one ``error:`` line naming ``option``, no traceback."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert f"({option}" in err and "; " in err, err
    return err


# --- item 4: k and iterations ---------------------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["--iterations", "0"], "--iterations"),
    (["--iterations", "-5"], "--iterations"),
    (["--shots", "0"], "--shots"),        # was: `args.shots or profile` trained k = 2
    (["--shots", "-1"], "--shots"),
    (["--layers", "0", "2"], "--layers"),
])
def test_train_rejects_counts_below_one(no_training, capsys, tmp_path, args, option):
    assert main([*TRAIN, "--out", str(tmp_path), *args]) == 2
    one_line_error(capsys, option)


def test_reproduce_rejects_k_zero(no_training, capsys, tmp_path):
    assert main(["reproduce", "table1", "--profile", "quick", "--shots", "0", "--results", str(tmp_path)]) == 2
    one_line_error(capsys, "--shots")


def test_library_configs_reject_zero_iterations_and_k():
    with pytest.raises(ValueError, match="iterations"):
        TrainConfig(iterations=0)
    with pytest.raises(ValueError, match="iterations"):
        dataclasses.replace(get_profile("quick").train, iterations=-1)
    with pytest.raises(ValueError, match="shots"):
        DataConfig(shots=0)


# --- item 10: seeds, one-line errors, --debug -------------------------------------------------

@pytest.mark.parametrize("seed", [str(2**31), str(10**20), "-1"])
def test_seed_out_of_range_is_one_line_without_overflow(no_training, capsys, tmp_path, seed):
    assert main([*TRAIN, "--out", str(tmp_path), "--seed", seed]) == 2
    err = one_line_error(capsys, "--seed")
    assert "overflow" not in err.lower() and str(2**31 - 1) in err


@pytest.mark.parametrize("argv, option", [(["reproduce", "table1", "--seeds", "0", str(2**32)], "--seeds"),
                                          (["data", "toy", "--seed", "-3"], "--seed")])
def test_seed_lists_and_other_commands_are_checked(no_training, capsys, argv, option):
    assert main(argv) == 2
    one_line_error(capsys, option)


def test_library_errors_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    argv = ["train", "--profile", "quick", "--dataset", "toy", "--category", "no_such_category",
            "--iterations", "1", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "no_such_category" in err
    assert "Traceback" not in err
    assert main([*argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("VTFUSION_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_unknown_dataset_and_folder_without_root(no_training, capsys, tmp_path):
    assert main([*TRAIN[:-4], "--dataset", "mvtecc", "--category", "x", "--out", str(tmp_path)]) == 2
    assert "mvtec, visa" in one_line_error(capsys, "--dataset")
    assert main(["train", "--dataset", "folder", "--category", "x", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "--root")


def test_ctrl_c_exits_130_and_bugs_keep_their_traceback(monkeypatch, capsys, tmp_path):
    import vtfusion.runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vtfusion.runs, "train_or_load", interrupted)
    try:
        code = main([*TRAIN, "--out", str(tmp_path)])
    except KeyboardInterrupt:  # it must not reach pytest, which would stop the session
        code = "KeyboardInterrupt escaped main()"
    assert code == 130
    assert capsys.readouterr().err.strip() == "interrupted"

    def bug(*args, **kwargs):
        raise AttributeError("a bug, not a user's mistake")

    monkeypatch.setattr(vtfusion.runs, "train_or_load", bug)
    with pytest.raises(AttributeError):
        main([*TRAIN, "--out", str(tmp_path)])


# --- item 6: output locations are checked before training ----------------------------------

@pytest.mark.parametrize("command, option", [
    (TRAIN, "--out"),
    (["reproduce", "table1", "--profile", "quick"], "--results"),
    (["reproduce", "table1", "--profile", "quick"], "--runs"),
    (["data", "shots", "--dataset", "mvtec"], "--out"),
])
def test_an_existing_file_as_output_folder_fails_before_any_work(no_training, capsys, tmp_path, command, option):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for where in (blocker, blocker / "below"):
        assert main([*command, option, str(where)]) == 2
        assert "a_file" in one_line_error(capsys, option)


# --- item 9: reproduce runs the dataset it is given and says so -------------------------------

def test_reproduce_honours_dataset_and_prints_what_runs(monkeypatch, capsys, tmp_path):
    import vtfusion.reproduce

    seen = {}

    def stop_before_work(table, cfg, dataset, shots=None, **kwargs):
        seen.update(dataset=dataset, shots=shots, paper=kwargs.get("paper_dataset"))
        raise ValueError("stopped by the test")

    monkeypatch.setattr(vtfusion.reproduce, "reproduce", stop_before_work)
    argv = ["reproduce", "table1", "--profile", "quick", "--dataset", "folder", "--root", str(tmp_path),
            "--categories", "widget", "--shots", "4", "--results", str(tmp_path / "r"), "--runs", str(tmp_path / "w")]
    assert main(argv) == 2
    out = capsys.readouterr().out
    assert seen == {"dataset": "folder", "shots": (4,), "paper": "mvtec"}
    assert f"data: folder in {tmp_path}; k=4;" in out
    # without --dataset the quick profile runs its toy data, and says so
    assert main(argv[:4] + argv[-4:]) == 2
    out = capsys.readouterr().out
    assert seen["dataset"] == "toy" and "data: toy; k=2,4,8;" in out and "reference" in out


def test_reproduce_folder_needs_categories_and_known_categories_are_checked(no_training, capsys, tmp_path):
    assert main(["reproduce", "table1", "--profile", "quick", "--dataset", "folder", "--root", str(tmp_path)]) == 2
    one_line_error(capsys, "--categories")
    assert main(["reproduce", "table1", "--profile", "quick", "--dataset", "toy", "--categories", "nope",
                 "--results", str(tmp_path)]) == 2
    assert "washer" in one_line_error(capsys, "--categories")


def test_train_header_names_the_k_that_runs(monkeypatch, capsys, tmp_path):
    import vtfusion.runs

    def stop(cfg, dataset, category, k, seed, **kwargs):
        raise ValueError(f"stopped by the test at k={k}")

    monkeypatch.setattr(vtfusion.runs, "train_or_load", stop)
    assert main([*TRAIN, "--shots", "3", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "data: toy; k=3;" in captured.out and "k=3" in captured.err


# --- item 2: predict never writes two inputs to one file; item 10: decompression bombs ---------

class ConstantModel:
    """Stands in for a trained VTFusion: every pixel of image i scores i."""

    def predict(self, images: torch.Tensor, batch_size: int = 16) -> dict:
        n, _, h, w = images.shape
        scores = torch.arange(n, dtype=torch.float32)
        return {"final": scores[:, None, None, None].expand(n, 1, h, w).clone(), "score": scores}


@pytest.fixture
def fake_checkpoint(monkeypatch, tmp_path):
    """A checkpoint file whose loading gives :class:`ConstantModel` at 16 x 16 pixels."""
    import vtfusion.checkpoint

    cfg = get_profile("quick")
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, image_size=16))
    monkeypatch.setattr(vtfusion.checkpoint, "load_checkpoint", lambda path, device=None: (ConstantModel(), cfg, {}))
    path = tmp_path / "model.pt"
    path.write_bytes(b"stub")
    return path


def write_image(path, size: int = 8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(path)
    return path


def test_predict_inputs_sharing_folder_and_stem_get_their_own_outputs(fake_checkpoint, tmp_path, capsys):
    images = [write_image(tmp_path / "a" / "good" / "000.png"), write_image(tmp_path / "b" / "good" / "000.png"),
              write_image(tmp_path / "b" / "crack" / "000.png")]
    images.append(images[0])  # the same file twice is two outputs as well
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(fake_checkpoint), *map(str, images), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    names = [r["name"] for r in rows]
    assert len(set(names)) == 4, names
    assert len(list((out / "maps").glob("*.npy"))) == 4 and len(list((out / "overlays").glob("*.png"))) == 4
    for i, name in enumerate(names):  # each map is its own input's (image i scores i)
        assert np.load(out / "maps" / f"{name}.npy").max() == pytest.approx(i)


def test_predict_output_names_keep_simple_names_when_unique(tmp_path):
    from vtfusion.predict import output_names

    assert output_names([tmp_path / "x" / "good" / "000.png", tmp_path / "x" / "crack" / "000.png"]) == \
        ["good_000", "crack_000"]
    assert output_names([tmp_path / "1.png", tmp_path / "2.png"]) == ["1", "2"]
    assert output_names([tmp_path / "A.png", tmp_path / "a.png"]) == ["A", "a-2"]  # case-insensitive disks


def test_predict_missing_image_and_output_file_fail_before_loading(fake_checkpoint, capsys, tmp_path):
    assert main(["predict", "--checkpoint", str(fake_checkpoint), str(tmp_path / "missing.png"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "missing.png" in one_line_error(capsys, "image")
    image = write_image(tmp_path / "i.png")
    assert main(["predict", "--checkpoint", str(fake_checkpoint), str(image), "--out", str(image)]) == 2
    one_line_error(capsys, "--out")


def test_decompression_bomb_names_the_image(fake_checkpoint, monkeypatch, capsys, tmp_path):
    image = write_image(tmp_path / "huge" / "bomb.png", size=16)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 256 pixels > 2 * 10: a "bomb"
    assert main(["predict", "--checkpoint", str(fake_checkpoint), str(image), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(image) in err and "MAX_IMAGE_PIXELS" in err
