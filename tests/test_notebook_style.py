"""Readable chapter notebooks: short code lines, no committed outputs, cells that parse and have ids.

Fast (reads JSON only, never executes a notebook), so it runs with every test pass.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINE = 88


def _toc_notebooks() -> list[Path]:
    """Every notebook the book's table of contents lists, plus any other under notebooks/."""
    toc = (REPO / "_toc.yml").read_text(encoding="utf-8")
    listed = {REPO / f"{name}.ipynb" for name in re.findall(r"file:\s*(notebooks/\S+)", toc)}
    return sorted(listed | set((REPO / "notebooks").glob("*.ipynb")))


NOTEBOOKS = _toc_notebooks()


def _code_cells(path: Path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            source = cell["source"]
            yield index, cell, source if isinstance(source, str) else "".join(source)


def _without_magics(source: str) -> str:
    """IPython magics and shell escapes are not Python: blank them, keeping line numbers."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.split("\n"))


def test_notebooks_are_found():
    assert NOTEBOOKS, "no notebooks under notebooks/"
    missing = [p.name for p in NOTEBOOKS if not p.is_file()]
    assert not missing, f"_toc.yml lists notebooks that do not exist: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_lines_are_at_most_88_characters(path):
    long_lines = [f"{path.name} cell {index} line {number + 1} ({len(line)} chars): {line}"
                  for index, _, source in _code_cells(path)
                  for number, line in enumerate(source.split("\n"))
                  if len(line) > MAX_LINE]
    assert not long_lines, (f"code lines longer than {MAX_LINE} characters:\n"
                            + "\n".join(long_lines))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    dirty = [f"{path.name} cell {index}" for index, cell, _ in _code_cells(path)
             if cell.get("outputs") or cell.get("execution_count") is not None]
    assert not dirty, "committed with outputs or execution counts; clear them: " + ", ".join(dirty)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_cell_parses(path):
    errors = []
    for index, _, source in _code_cells(path):
        try:
            ast.parse(_without_magics(source))
        except SyntaxError as err:
            errors.append(f"{path.name} cell {index} line {err.lineno}: {err.msg}")
    assert not errors, "code cells that do not parse:\n" + "\n".join(errors)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_cell_has_a_unique_id(path):
    """nbformat 4.5 cells carry ids; a cell added by hand without one is a warning today and
    an error in later nbformat versions."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    missing = [index for index, cell in enumerate(cells) if not cell.get("id")]
    ids = [cell.get("id") for cell in cells if cell.get("id")]
    assert not missing, f"{path.name}: cells without an id: {missing}"
    assert len(ids) == len(set(ids)), f"{path.name}: repeated cell ids"
