"""Sphinx extension of the book: each page loads a given script only once.

sphinx-thebe 0.3.1 (pulled in by Jupyter Book 1.x) can register its inline configuration
script (``const THEBE_JS_URL = ...``) twice, and a second ``const`` declaration is a
JavaScript error on every page. The book does not use thebe (it is offline by design),
but a clean console is what the browser test checks, so duplicates are dropped here
rather than tolerated there.

It also serves the book's third-party browser assets from the book itself: MathJax, require.js,
the Jupyter widget manager and anywidget's front end (for the heatmap explorer), pinned copies that ``tools/book_assets.py`` puts in
``book/_static/offline/`` (``_config.yml`` points ``mathjax_path`` and ``nb_ipywidgets_js`` at
them). The folder is added to ``html_static_path`` here rather than through a top-level
``_static/``, because Jupyter Book would put every ``.js`` under that on every page. A build
without the assets stops at once, naming the script, instead of producing pages that try a CDN.
"""

from __future__ import annotations

from pathlib import Path

from sphinx.errors import ExtensionError

STATIC = Path(__file__).resolve().parents[1] / "_static"  # book/_static
# Must match tools/book_assets.py ENTRY_POINTS (paths relative to _static, as in _config.yml).
VENDOR_ENTRY_POINTS = (
    "offline/mathjax/tex-mml-chtml.js",
    "offline/requirejs/require.js",
    "offline/html-manager/embed-amd.js",
    "offline/anywidget/index.js",
)


def _add_vendor_static(app, config) -> None:
    missing = [p for p in VENDOR_ENTRY_POINTS if not (STATIC / p).is_file()]
    if missing:
        raise ExtensionError(f"book assets missing ({', '.join(missing)} under {STATIC}): "
                             "run `python tools/book_assets.py` (or `make book`) first")
    if str(STATIC) not in map(str, config.html_static_path):
        config.html_static_path.append(str(STATIC))


def _script_key(script) -> tuple:
    # An inline script can come with filename None (builder) or "" (registry): the same.
    filename = getattr(script, "filename", str(script)) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return filename, tuple(sorted((k, str(v)) for k, v in attributes.items()))


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: handlers after this one add to the same list


def setup(app):
    app.connect("config-inited", _add_vendor_static)
    # Late, after the handlers that add a page's scripts. (Sphinx stops calling these
    # handlers at the first that returns a template name; none of the book's does.)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
