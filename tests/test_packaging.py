"""Packaging facts: pins agree between pyproject.toml and environment.yml; layout is complete."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
