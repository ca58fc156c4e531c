"""The vtfusion command line: help text and the data commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vtfusion.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "data" in out and "few-shot" in out


@pytest.mark.parametrize("action", ["download", "toy", "shots"])
def test_data_actions_have_help(capsys, action):
    with pytest.raises(SystemExit):
        main(["data", action, "--help"])
    assert "usage: vtfusion data " + action in capsys.readouterr().out


def test_shots_command_writes_the_documented_files(tmp_path):
    assert main(["data", "shots", "--dataset", "mvtec", "--k", "2", "--seeds", "5", "--out", str(tmp_path)]) == 0
    files = sorted(tmp_path.glob("mvtec/*/k2_seed5.json"))
    assert len(files) == 15
    assert json.loads(files[0].read_text())["k"] == 2


def test_shots_needs_a_dataset(capsys):
    assert main(["data", "shots"]) == 2
    assert "--dataset" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "vtfusion.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("vtfusion ")


def test_a_released_pocket_backbone_is_read_as_chosen_on_validation():
    from vtfusion.cli import _experiment_config, build_parser

    def cfg_of(*extra):
        return _experiment_config(build_parser().parse_args(
            ["train", "--category", "washer", "--profile", "quick", "--backbone", "pocket", *extra]))

    v2 = cfg_of("--weights", "pocket-v2")
    assert v2.backbone.layers == (6,) and v2.model.ate.prompts.preset == "paper" and v2.model.ate.logit_scale == 14
    assert cfg_of("--weights", "pocket-v2", "--layers", "5", "6").backbone.layers == (5, 6)  # the user's word wins
    assert cfg_of("--weights", "pocket-v1").model.ate.logit_scale == 100
