"""Write a notebook from a compact Python description (cells as strings).

Used by maintainers to (re)generate chapter notebooks without outputs::

    from tools.make_notebook import md, code, write
    write("notebooks/01_data.ipynb", [md("# Title"), code("x = 1")])
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(textwrap.dedent(text).strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def write(path: str | Path, cells: list) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    Path(path).write_text(nbformat.writes(nb))
