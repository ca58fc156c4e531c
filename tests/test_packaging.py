"""Packaging facts: pins agree between pyproject.toml and environment.yml; layout is complete."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_pins() -> dict[str, str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        reqs += extra
    pins = {}
    for r in reqs:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", r)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def _environment_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "environment.yml").read_text().splitlines():
        line = line.split("#")[0].strip()
        m = re.fullmatch(r"-\s*([A-Za-z0-9_.\-]+)\s*(==|=)\s*([^\s]+)", line)
        if m and m.group(1) != "python":
            pins[_norm(m.group(1))] = m.group(3)
    return pins


def test_pins_agree_between_pyproject_and_environment():
    py, env = _pyproject_pins(), _environment_pins()
    assert py, "no exact pins found in pyproject.toml"
    assert py == env, f"pins differ: only pyproject {set(py.items()) - set(env.items())}, " \
                      f"only environment.yml {set(env.items()) - set(py.items())}"


def test_required_pins_are_present():
    py = _pyproject_pins()
    assert py["torch"] == "2.13.0" and py["torchvision"] == "0.28.0" and py["open-clip-torch"] == "3.3.0"
    assert py["jupyter-book"].startswith("1.")
    for name in ("nbval", "ipywidgets", "matplotlib", "numpy", "scikit-learn", "jupyterlab"):
        assert name in py, name


def test_requested_top_level_layout():
    for name in ("book", "vtfusion", "notebooks", "data", "tests", "environment.yml", "_config.yml",
                 "_toc.yml", "pyproject.toml", "README.md", "Makefile", ".ci/run"):
        assert (REPO / name).exists(), name


def test_every_notebook_is_in_the_toc_and_committed_without_outputs():
    import json

    toc = (REPO / "_toc.yml").read_text()
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{nb.stem}" in toc, f"{nb.name} is not in _toc.yml"
        cells = json.loads(nb.read_text())["cells"]
        outputs = [c for c in cells if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
        assert not outputs, f"{nb.name} is committed with outputs; clear them"


def _run(cmd: list, **kwargs):
    import subprocess

    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_wheel_ships_its_resources_and_reproduces_outside_the_checkout(tmp_path, toy_root):
    """Build the wheel, install it (no deps) into a fresh venv that borrows this environment's
    packages, and run `vtfusion reproduce` from a temporary folder with an empty data dir."""
    import os
    import shutil
    import sys
    import sysconfig
    import zipfile

    src = tmp_path / "src"  # a snapshot, so the build writes nothing into the checkout
    shutil.copytree(REPO / "vtfusion", src / "vtfusion", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", src])
    [wheel] = (tmp_path / "dist").glob("vtfusion-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("vtfusion/resources/paper/tables.csv", "vtfusion/resources/paper/tables.json",
                 "vtfusion/resources/shots/mvtec/bottle/k2_seed0.json", "vtfusion/resources/shots/toy/weave/k2_seed0.json",
                 "vtfusion/explorer.js", "vtfusion/explorer.css"):
        assert name in names, f"{name} is not in the wheel"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # This environment's packages (torch, ...), but not its editable vtfusion: a path added by a
    # .pth file is not a site dir, so the editable install's own .pth there is not run.
    Path(site, "borrowed_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel])

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(VTFUSION_DATA_DIR=str(tmp_path / "user_data"), VTFUSION_TOY_ROOT=str(toy_root),
               VTFUSION_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    probe = ("import vtfusion; from vtfusion.data.shots import load_shots; from vtfusion.paper_tables import paper_value; "
             "print(vtfusion.__file__); print(load_shots('toy', 'weave', 2, 0).files); "
             "print(paper_value('I', 'vtfusion', 'mvtec', 'image', k=2)); "
             "from vtfusion.explorer import HeatmapExplorer; print('export default' in HeatmapExplorer._esm)")
    out = _run([python, "-c", probe], cwd=work, env=env).stdout.splitlines()
    assert Path(out[0]).resolve().is_relative_to(venv.resolve()), f"imported {out[0]}, not the installed wheel"
    assert out[2] == "96.8" and out[3] == "True"  # the explorer's front end is package data
    run = _run([venv / "bin" / "vtfusion", "reproduce", "table1", "--profile", "quick", "--categories", "weave",
                "--shots", "2", "--seeds", "0", "--iterations", "2", "--device", "cpu", "--results", "results",
                "--runs", "runs", "--quiet"], cwd=work, env=env)
    assert "vtfusion" in run.stdout and "96.8" in run.stdout, run.stdout
    assert list((work / "results").rglob("*.json")) and list((work / "results").rglob("*.md"))
    assert not (tmp_path / "user_data" / "paper").exists()
