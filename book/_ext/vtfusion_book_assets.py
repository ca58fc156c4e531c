"""Sphinx extension of the book: each page loads a given script only once.

sphinx-thebe 0.3.1 (pulled in by Jupyter Book 1.x) can register its inline configuration
script (``const THEBE_JS_URL = ...``) twice, and a second ``const`` declaration is a
JavaScript error on every page. The book does not use thebe (it is offline by design),
but a clean console is what the browser test checks, so duplicates are dropped here
rather than tolerated there.
"""

from __future__ import annotations


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
    # Late, after the handlers that add a page's scripts. (Sphinx stops calling these
    # handlers at the first that returns a template name; none of the book's does.)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
