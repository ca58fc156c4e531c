"""Pinned copies of the book's third-party browser assets, so the built HTML loads nothing from another host.

Without them Sphinx and myst-nb point every page at CDNs (MathJax at cdn.jsdelivr.net,
require.js at cdnjs.cloudflare.com, the Jupyter widget html-manager at cdn.jsdelivr.net), and
offline every equation shows raw TeX and no widget appears. The html-manager would also fetch
anywidget, the base of the heatmap explorer, from a CDN; its AMD module is served here too. This script takes each package at
an exact version from the npm registry (``npm pack``), checks the tarball against the pinned
``sha512`` integrity, and copies only the files the pages load at run time into
``book/_static/offline/`` (gitignored). ``_config.yml`` points ``mathjax_path`` and
``nb_ipywidgets_js`` there, and ``book/_ext/vtfusion_book_assets.py`` adds the folder to the
static files (and stops the build, naming this script, when it is missing).

Usage::

    python tools/book_assets.py           # install what is missing or outdated (idempotent)
    python tools/book_assets.py --check   # exit 1 unless the pinned versions are installed
    python tools/book_assets.py --force   # download and copy again

``make book`` runs it before ``jupyter-book build``, and so does the browser test
(``tests/test_book_browser.py``) before its own build. Standard library only, plus ``npm``
(Node 20 / npm 10) on the PATH; tarballs are cached in ``_build/.vendor-cache/``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / "book" / "_static" / "offline"
CACHE = REPO / "_build" / ".vendor-cache"
#: npm registry for the fallback without npm (npm itself reads its own configuration).
REGISTRY = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
STAMP = VENDOR / "VERSIONS.json"

# require.js and @jupyter-widgets/html-manager are the versions myst-nb's defaults load from
# CDNs (require.js 2.3.4, html-manager 1.0.6: widget protocol 2, as ipywidgets 8 saves it);
# book/_static/widgets_offline.js adapts the manager to local fonts and to MathJax 3.
PACKAGES = {
    "mathjax": {
        "version": "3.2.2",
        "integrity": "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
    },
    "requirejs": {
        "version": "2.3.4",
        "integrity": "sha512-qPD5gRrj6kGQ0ZySAJgqbArkaDqPMbQIT0zSZDkIv1mfA17w/tR2Faq5l2qqRf2CdQx6FWln9nUrgd2UDzb19A==",
    },
    "@jupyter-widgets/html-manager": {
        "version": "1.0.6",
        "integrity": "sha512-+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
    },
    # The front end of the heatmap explorer's widget base (vtfusion/explorer.py): an AMD module
    # that the html-manager loads through require.js. The same version as the Python pin in
    # pyproject.toml (tests/test_explorer.py checks), so pages and kernel speak one protocol.
    "anywidget": {
        "version": "0.11.0",
        "integrity": "sha512-LHZgW2j5UjyerZSZcO+BtZPXGMSORQV2bUT480hOR5x/BXS8sOradi/71amJfMueSEnKX0dqPwTfsOGHTsyZpQ==",
    },
}

# Files each page refers to (relative to book/_static/, as in _config.yml); --check and the
# Sphinx extension look for these.
ENTRY_POINTS = (
    "offline/mathjax/tex-mml-chtml.js",
    "offline/requirejs/require.js",
    "offline/html-manager/embed-amd.js",
    "offline/anywidget/index.js",
)

# MathJax's es5 bundle that the pages load, and the top-level files the loader can still ask for.
MATHJAX_TOP = {"tex-mml-chtml.js", "core.js", "loader.js", "startup.js"}
WIDGET_FONT_SUFFIXES = (".woff2", ".woff", ".ttf", ".eot", ".svg")


def _copy_mathjax(pkg: Path, dest: Path) -> None:
    """``es5/tex-mml-chtml.js`` plus what it loads on demand: the CHTML fonts
    (``output/chtml/fonts/woff-v2``), TeX extensions (``input/tex/extensions``, via autoload
    and ``\\require``), the menu's ``ui/``, ``a11y/`` and the speech rule engine ``sre/``.
    The other combined bundles and the SVG output are left out."""
    es5 = pkg / "es5"

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        if here == es5:
            return {n for n in names if (here / n).is_file() and n not in MATHJAX_TOP}
        if here == es5 / "output":
            return {n for n in names if n.startswith("svg")}
        return set()

    shutil.copytree(es5, dest, ignore=ignore)
    shutil.copy2(pkg / "LICENSE", dest / "LICENSE")


def _copy_requirejs(pkg: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    shutil.copy2(pkg / "require.js", dest / "require.js")


def _copy_html_manager(pkg: Path, dest: Path) -> None:
    """``dist/embed-amd.js`` (what the CDN URL pointed to) and the Font Awesome files it
    loads next to itself (webpack's public path is the script's own folder)."""
    dist = pkg / "dist"
    dest.mkdir(parents=True)
    for f in dist.iterdir():
        if f.name in ("embed-amd.js", "embed.js.LICENSE.txt") or f.name.endswith(WIDGET_FONT_SUFFIXES):
            shutil.copy2(f, dest / f.name)


def _copy_anywidget(pkg: Path, dest: Path) -> None:
    """``dist/index.js``, the AMD module ``book/_static/widgets_offline.js`` maps ``anywidget`` to."""
    dest.mkdir(parents=True)
    shutil.copy2(pkg / "dist" / "index.js", dest / "index.js")
    shutil.copy2(pkg / "LICENSE", dest / "LICENSE")


COPY = {
    "mathjax": ("mathjax", _copy_mathjax),
    "requirejs": ("requirejs", _copy_requirejs),
    "@jupyter-widgets/html-manager": ("html-manager", _copy_html_manager),
    "anywidget": ("anywidget", _copy_anywidget),
}


class AssetError(RuntimeError):
    pass


def _wanted() -> dict[str, str]:
    return {name: spec["version"] for name, spec in PACKAGES.items()}


def installed() -> bool:
    """True when the stamp names the pinned versions and every entry point is there."""
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return False
    return stamp == _wanted() and all((VENDOR.parent / p).is_file() for p in ENTRY_POINTS)


def _sri(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _tarball(name: str, version: str, integrity: str) -> Path:
    """The package's tarball from the cache, or from the registry through ``npm pack``."""
    CACHE.mkdir(parents=True, exist_ok=True)
    filename = f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    cached = CACHE / filename
    if cached.is_file() and _sri(cached) == integrity:
        return cached
    npm = shutil.which("npm")
    if not npm:  # the registry's own tarball URL, with the same integrity check
        _download(f"{REGISTRY}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz", cached, name, version)
    else:
        _npm_pack(npm, name, version, cached)
    got = _sri(cached)
    if got != integrity:
        cached.unlink()
        raise AssetError(f"{name}@{version}: tarball integrity {got[:30]}... != pinned {integrity[:30]}...")
    return cached


def _download(url: str, target: Path, name: str, version: str) -> None:
    """Fetch ``url`` into ``target`` atomically (no npm on the PATH)."""
    tmp = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
    except (OSError, urllib.error.URLError) as err:
        tmp.unlink(missing_ok=True)
        raise AssetError(f"{name}@{version}: download from {url} failed (registry unreachable?): {err}") from None
    tmp.replace(target)


def _npm_pack(npm: str, name: str, version: str, cached: Path) -> None:
    proc = subprocess.run([npm, "pack", f"{name}@{version}", "--pack-destination", str(CACHE), "--json"],
                          cwd=CACHE, capture_output=True, text=True)
    if proc.returncode != 0 or not cached.is_file():
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "ERR" in ln or "error" in ln.lower()), lines[-1] if lines else "")
        raise AssetError(f"{name}@{version}: `npm pack` failed (registry unreachable?): {why}")


def install(force: bool = False) -> bool:
    """Install the pinned assets into ``book/_static/offline``; False when already there."""
    if installed() and not force:
        return False
    with tempfile.TemporaryDirectory(prefix="book-assets-") as tmp:
        staging = Path(tmp) / "vendor"
        staging.mkdir()
        for name, spec in PACKAGES.items():
            tgz = _tarball(name, spec["version"], spec["integrity"])
            unpacked = Path(tmp) / "unpacked" / COPY[name][0]
            with tarfile.open(tgz) as tar:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                    tar.extractall(unpacked, filter="data")
                else:
                    tar.extractall(unpacked)
            COPY[name][1](unpacked / "package", staging / COPY[name][0])
        (staging / "VERSIONS.json").write_text(json.dumps(_wanted(), indent=2) + "\n")
        if VENDOR.exists():
            shutil.rmtree(VENDOR)
        VENDOR.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), VENDOR)
    if not installed():
        raise AssetError(f"installed into {VENDOR}, but an entry point is missing: {ENTRY_POINTS}")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when missing or outdated")
    ap.add_argument("--force", action="store_true", help="download and copy again")
    args = ap.parse_args(argv)
    pins = ", ".join(f"{n}@{v}" for n, v in _wanted().items())
    if args.check:
        ok = installed()
        print(f"book assets {'up to date' if ok else 'missing or outdated'} in {VENDOR.relative_to(REPO)} ({pins})")
        return 0 if ok else 1
    try:
        changed = install(force=args.force)
    except AssetError as e:
        print(f"book_assets: error: {e}", file=sys.stderr)
        return 1
    print(f"book assets {'installed' if changed else 'already present'} in {VENDOR.relative_to(REPO)} ({pins})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
