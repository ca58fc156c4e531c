"""The built book in a real browser: every page loads with its images, links and scripts intact.

Builds the book (``jupyter-book build . -W --keep-going``, quick profile; the execution cache
makes a rebuild cheap) unless a build made by this test is newer than every source, serves
``_build/html`` on a free 127.0.0.1 port and loads every page of the table of contents (plus
``genindex``/``search``) in headless Chromium through Selenium. It fails, once, with a list of

* local images that did not load (``naturalWidth == 0``) and local ``<img>``/``<script>``/
  ``<link>`` resources that the server does not answer with 200;
* internal links to a missing file, or to a ``#fragment`` with no such ``id``/``name``;
* browser console errors (SEVERE) coming from our own files on the local server;
* anything the page asks of another host (an ``<img>``/``<script>``/``<link>`` in the live DOM,
  a fetched resource, a console error about one): the book is offline by design;
* on pages with math, MathJax output missing (no ``mjx-container`` in a ``.math`` element) or
  raw TeX (a ``mathcal`` command) left in the visible text;
* on pages with saved widget state, widgets the embedded widget manager did not render.

MathJax, require.js and the widget manager are pinned copies in ``book/_static/offline/``
(``tools/book_assets.py``, run before the build), not CDN URLs. External hosts are made
unreachable inside the browser (``--host-resolver-rules``), so a request to one fails fast
and shows. A static check, without a browser, reads every built ``*.html`` and fails on any
``<script src>``, ``<link href>`` (stylesheet, preload, icon) or ``<img src>`` on another
host. Screenshots of the intro and of the DAS chapter go to ``test-artifacts/``.

On every page with a heatmap explorer (``vtfusion.explorer``, saved as widget state), real
clicks and drags (Selenium ActionChains) on the next-image button, a map button, the
threshold slider, the score histogram and the opacity slider must each change the pixels of
the drawn canvas, with no kernel; a before/after screenshot pair of each explorer goes to
``test-artifacts/explorer-<chapter>-{before,after}.png``.

Chromium and chromedriver are Debian's packages (``tools/ensure_browser.sh`` installs them,
``make test`` runs it). Without them the test skips, unless ``VTFUSION_REQUIRE_BROWSER=1``
(set by ``make test``), where it fails.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.network]

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "_build"
HTML = BUILD / "html"
# Written after a build that exited 0; a rebuild is skipped only when it is newer than every source.
BUILD_OK_STAMP = BUILD / ".browser-test-build-ok"
SOURCES = ("notebooks", "book", "vtfusion", "_toc.yml", "_config.yml")
ARTIFACTS = REPO / "test-artifacts"
# Pages screenshotted as test artefacts: the book's root page and one chapter.
SCREENSHOTS = {"intro.png": "book/intro.html", "chapter-02_das.png": "notebooks/02_das.html"}
ENSURE = "tools/ensure_browser.sh"
BOOK_ASSETS = "tools/book_assets.py"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

# Chromium flags. Headless on a machine with no display, no GPU and no network:
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # the tests run as root in CI, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm; use /tmp instead
    # Every host but the local server fails at name resolution at once, instead of waiting
    # for a network that is not there: a request to another host fails fast and shows.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--no-proxy-server",  # ignore proxy environment variables; 127.0.0.1 is reached directly
    "--disable-background-networking",  # no update/safe-browsing/metrics requests of its own
    "--disable-component-update",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--window-size=1280,1000",
]


# ----------------------------------------------------------------------------- browser discovery


def _need_browser(reason: str):
    msg = f"{reason}; run `bash {ENSURE}` (installs Debian's chromium and chromium-driver)"
    if os.environ.get("VTFUSION_REQUIRE_BROWSER") == "1":
        pytest.fail(msg + " [VTFUSION_REQUIRE_BROWSER=1, so this is a failure, not a skip]")
    pytest.skip(msg)


def _find(name: str) -> str | None:
    default = Path("/usr/bin") / name
    return str(default) if default.is_file() else shutil.which(name)


@pytest.fixture(scope="session")
def browser_binaries() -> tuple[str, str]:
    chromium, driver = _find("chromium"), _find("chromedriver")
    if not chromium:
        _need_browser("chromium not found")
    if not driver:
        _need_browser("chromedriver not found")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _need_browser("selenium is not installed (pip install -e '.[dev]')")
    return chromium, driver


# ----------------------------------------------------------------------------- the book


def _newest_source_mtime() -> float:
    newest = 0.0
    for name in SOURCES:
        p = REPO / name
        files = [p] if p.is_file() else p.rglob("*")
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts and ".ipynb_checkpoints" not in f.parts:
                newest = max(newest, f.stat().st_mtime)
    return newest


@pytest.fixture(scope="session")
def built_book(toy_root) -> Path:
    """``_build/html``, rebuilt unless the last successful build is newer than every source."""
    # The pinned offline assets first (idempotent; fetched from the npm registry only once).
    proc = subprocess.run([sys.executable, BOOK_ASSETS], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"`python {BOOK_ASSETS}` exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    fresh = (BUILD_OK_STAMP.is_file() and (HTML / "index.html").is_file()
             and BUILD_OK_STAMP.stat().st_mtime > _newest_source_mtime())
    if not fresh:
        BUILD_OK_STAMP.unlink(missing_ok=True)
        jb = Path(sys.executable).parent / "jupyter-book"
        cmd = [str(jb) if jb.is_file() else "jupyter-book", "build", ".", "-W", "--keep-going"]
        env = {**os.environ, "VTFUSION_PROFILE": "quick"}
        started = time.time()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        took = time.time() - started
        log = (proc.stdout + proc.stderr)[-6000:]
        assert proc.returncode == 0, f"`{' '.join(cmd)}` exited {proc.returncode} after {took:.0f} s:\n{log}"
        BUILD.mkdir(exist_ok=True)
        BUILD_OK_STAMP.write_text(f"jupyter-book build exited 0 in {took:.1f} s\n")
        # Dated at the build's start: a source saved while the build ran still counts as newer.
        os.utime(BUILD_OK_STAMP, (started, started))
    assert (HTML / "index.html").is_file(), f"no {HTML / 'index.html'} after the build"
    return HTML


def _toc_pages(html: Path) -> list[str]:
    """Paths (relative to ``_build/html``) of the pages generated for ``_toc.yml``."""
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    pages = ["index.html"] + [re.sub(r"\.(md|ipynb|rst)$", "", f) + ".html" for f in files]
    pages += [p for p in ("genindex.html", "search.html") if (html / p).is_file()]
    return pages


# ----------------------------------------------------------------------------- server and driver


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - keep pytest output clean
        pass


@pytest.fixture(scope="session")
def server(built_book: Path):
    """Base URL (``http://127.0.0.1:PORT/``) of ``_build/html`` served in a thread."""
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def driver(browser_binaries):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_binaries
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Selenium Manager is never consulted: the driver path is given (it would try to download).
    try:
        drv = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    except Exception as e:  # noqa: BLE001 - e.g. chromium and chromedriver of different versions
        _need_browser(f"Chromium did not start through {chromedriver}: {type(e).__name__}: {e}")
    drv.set_page_load_timeout(120)
    drv.set_script_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


# ----------------------------------------------------------------------------- checks


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


@functools.lru_cache(maxsize=None)
def _http_status(url: str) -> int | str:
    try:
        with _OPENER.open(url, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return f"{type(e).__name__}: {e}"


class _ExternalLoads(HTMLParser):
    """``<script src>``, ``<link href>`` (stylesheet, preload, icon, manifest) and ``<img src>``/
    ``srcset`` of one HTML file that point to another host."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        urls = []
        if tag == "script":
            urls.append(a.get("src", ""))
        elif tag == "link" and re.search(r"stylesheet|preload|icon|manifest", a.get("rel", "").lower()):
            urls.append(a.get("href", ""))
        elif tag in ("img", "source"):
            urls.append(a.get("src", ""))
            urls += [c.strip().split(" ")[0] for c in a.get("srcset", "").split(",")]
        for url in urls:
            if _is_external(url):
                self.found.append(f"<{tag} {'href' if tag == 'link' else 'src'}={url!r}>")


class _Anchors(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if v and (k == "id" or (k == "name" and tag == "a")):
                self.ids.add(v)


@functools.lru_cache(maxsize=None)
def _anchors(path: Path) -> frozenset[str]:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


# A view the widget manager rendered: ipywidgets' controls carry `jupyter-widgets`; every view,
# anywidget's (the heatmap explorer) included, sits in the manager's `widget-subarea`.
_WIDGET_VIEWS = ("const WIDGET_VIEWS = '.jupyter-widgets.lm-Widget, .jupyter-widgets .lm-Widget, "
                 ".widget-subarea > .lm-Widget';\n")

# Everything the checks need from one loaded page, read from the live DOM (so links and
# images added by the theme's scripts count too). `src`/`href` properties are absolute URLs.
_COLLECT_JS = _WIDGET_VIEWS + """
const out = {url: location.href, imgs: [], resources: [], links: [], ids: []};
for (const img of document.images) {
  out.imgs.push({src: img.currentSrc || img.src, raw: img.getAttribute('src'),
                 complete: img.complete, w: img.naturalWidth});
}
for (const s of document.querySelectorAll('script[src]')) {
  out.resources.push({tag: 'script', url: s.src, raw: s.getAttribute('src')});
}
for (const l of document.querySelectorAll('link[href]')) {
  const rel = (l.getAttribute('rel') || '').toLowerCase();
  if (/stylesheet|preload|icon|manifest/.test(rel)) {
    out.resources.push({tag: 'link rel=' + rel, url: l.href, raw: l.getAttribute('href')});
  } else if (/^(next|prev|index|search|up|start)$/.test(rel)) {
    out.links.push({tag: 'link rel=' + rel, url: l.href, raw: l.getAttribute('href'), text: l.title || ''});
  }
}
for (const a of document.querySelectorAll('a[href]')) {
  out.links.push({tag: 'a', url: a.href, raw: a.getAttribute('href'),
                  text: (a.textContent || '').trim().replace(/\\s+/g, ' ').slice(0, 60)});
}
for (const e of document.querySelectorAll('[id], a[name]')) { out.ids.push(e.id || e.getAttribute('name')); }
// everything fetched so far (fonts from CSS, scripts loaded by MathJax or require.js, XHR)
out.fetched = performance.getEntriesByType('resource').map(r => r.name);
const maths = Array.from(document.querySelectorAll('.math'));
out.math = {count: maths.length, rendered: document.querySelectorAll('mjx-container').length,
            bare: maths.filter(m => !m.querySelector('mjx-container'))
                       .map(m => (m.textContent || '').trim().slice(0, 60)),
            rawTeX: (document.body.innerText.match(/\\\\mathcal\\b.{0,30}/g) || []).slice(0, 5)};
out.widgets = {saved: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
               rendered: document.querySelectorAll(WIDGET_VIEWS).length};
return out;
"""

# Waits (bounded) for every image, lazy ones included, to finish loading or fail.
_WAIT_IMAGES_JS = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.images);
imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
const pending = imgs.filter(i => !i.complete).map(i => new Promise(r => {
  i.addEventListener('load', r, {once: true}); i.addEventListener('error', r, {once: true});
}));
Promise.race([Promise.all(pending), new Promise(r => setTimeout(r, 15000))]).then(() => done(true));
"""

# Waits (bounded) for MathJax to typeset a page with math and the widget manager to render
# saved widgets. Both scripts are deferred/asynchronous; a page without either returns at once.
_WAIT_MATH_AND_WIDGETS_JS = _WIDGET_VIEWS + """
const done = arguments[arguments.length - 1];
const hasMath = document.querySelector('.math') !== null;
const hasWidgets = document.querySelector('script[type="application/vnd.jupyter.widget-view+json"]') !== null;
const deadline = Date.now() + 30000;
function ready() {
  const mathOk = !hasMath || (window.MathJax && MathJax.startup && MathJax.startup.promise &&
                              document.querySelector('mjx-container') !== null);
  const widgetsOk = !hasWidgets || document.querySelector(WIDGET_VIEWS) !== null;
  return mathOk && widgetsOk;
}
(function poll() {
  if (ready()) {
    const p = hasMath && window.MathJax && MathJax.startup ? MathJax.startup.promise : Promise.resolve();
    p.then(() => done(true), () => done(false));
  } else if (Date.now() > deadline) { done(false); } else { setTimeout(poll, 100); }
})();
"""


def _is_local(url: str, base: str) -> bool:
    return url.startswith(base)


def _is_external(url: str) -> bool:
    """An http(s) or protocol-relative URL on a host other than this machine."""
    url = (url or "").strip()
    if url.startswith("//"):
        url = "http:" + url
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and (parts.hostname or "") not in LOCAL_HOSTS


def _local_file(url: str, base: str, html: Path) -> Path:
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    rel = path[len(urllib.parse.urlsplit(base).path):]
    target = html / rel
    if not rel or rel.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target


def _check_page(drv, base: str, html: Path, page: str, problems: list, tolerated: list) -> None:
    """Load ``page`` and append ``(page, problem)`` pairs; the browser's own requests go to ``tolerated``."""
    from selenium.webdriver.support.ui import WebDriverWait

    url = base + page
    try:
        # Every page as a first visit (no stored theme mode etc.): results do not depend on page order.
        drv.execute_script("try { localStorage.clear(); sessionStorage.clear(); } catch (e) {}")
        drv.get(url)
        if 'http-equiv="Refresh"' in (html / page).read_text(encoding="utf-8", errors="replace"):
            # index.html is a redirect: wait for the target page before looking at anything
            WebDriverWait(drv, 30).until(lambda d: d.current_url.split("#")[0] != url)
            WebDriverWait(drv, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
        drv.execute_async_script(_WAIT_IMAGES_JS)
        drv.execute_async_script(_WAIT_MATH_AND_WIDGETS_JS)
        time.sleep(0.3)  # let deferred and async scripts run and report
        info = drv.execute_script(_COLLECT_JS)
    except Exception as e:  # noqa: BLE001 - report and go on with the other pages
        problems.append((page, f"could not load the page ({type(e).__name__}: {e})"))
        return
    if info["url"].split("#")[0] != url:
        shown = info["url"][len(base):] if info["url"].startswith(base) else info["url"]
        page = f"{page} (-> {shown})"

    # (a) images and resources from our server
    for img in info["imgs"]:
        src = img["src"] or ""
        label = (img["raw"] or src)[:100]
        if src.startswith("data:") or _is_local(src, base):
            if not img["complete"] or not img["w"]:
                problems.append((page, f"<img src={label!r}> did not load (naturalWidth={img['w']})"))
        elif src:
            problems.append((page, f"<img src={label!r}> is on another host (the book is offline)"))
        if _is_local(src, base):
            status = _http_status(src.split("#")[0])
            if status != 200:
                problems.append((page, f"<img src={label!r}> -> HTTP {status}"))
    for res in info["resources"]:
        if _is_local(res["url"], base):
            status = _http_status(res["url"].split("#")[0])
            if status != 200:
                problems.append((page, f"<{res['tag']} href/src={res['raw']!r}> -> HTTP {status}"))
        elif _is_external(res["url"]):
            problems.append((page, f"<{res['tag']} href/src={res['raw']!r}> is on another host"))
    for fetched in info["fetched"]:
        if _is_external(fetched):
            problems.append((page, f"fetched from another host: {fetched}"))

    # (d) math typeset by the local MathJax, widgets rendered by the local widget manager
    math = info["math"]
    if math["count"] and (math["bare"] or math["rendered"] < math["count"]):
        problems.append((page, f"MathJax rendered {math['rendered']} of {math['count']} math elements; "
                               f"not typeset: {math['bare'][:3]}"))
    if math["rawTeX"]:
        problems.append((page, f"raw TeX visible in the page text: {math['rawTeX']}"))
    if info["widgets"]["saved"] and not info["widgets"]["rendered"]:
        problems.append((page, f"{info['widgets']['saved']} saved widget view(s), none rendered"))

    # (b) internal links: the file exists and so does the #fragment
    page_ids = set(info["ids"])
    current = info["url"].split("#")[0]
    for link in info["links"]:
        target = link["url"] or ""
        if not _is_local(target, base):
            continue  # external, mailto:, javascript:
        no_frag, _, frag = target.partition("#")
        file = _local_file(no_frag, base, html)
        label = f"<{link['tag']} href={link['raw']!r}> ({link['text']!r})"
        if not file.is_file():
            problems.append((page, f"{label} -> missing file {file.relative_to(html).as_posix()}"))
            continue
        frag = urllib.parse.unquote(frag)
        if frag and file.suffix == ".html":
            ids = _anchors(file) | (page_ids if no_frag == current else set())
            if frag not in ids:
                problems.append((page, f"{label} -> no element with id or name {frag!r} in "
                                       f"{file.relative_to(html).as_posix()}"))

    # (c) console errors: ours fail, and so do requests to other hosts (the book is offline)
    for entry in drv.get_log("browser"):
        if entry.get("level") != "SEVERE":
            continue
        msg = entry.get("message", "")
        source = msg.split(" ", 1)[0]
        kind = f"console {entry.get('source', '')} error"
        if source == base + "favicon.ico":
            # Chromium asks for /favicon.ico by itself when a page declares no icon; no file of
            # the book refers to it (declared icons are checked as <link rel=icon> resources).
            tolerated.append((page, f"implicit request: {msg.replace(base, '/')}"))
        elif source.startswith(base):
            # "<url> <line>:<col> <text>": name the file, drop positions so pages group together
            msg = re.sub(r"^(\S+) \d+:\d+ ", r"\1 ", msg)
            msg = msg.replace(current + " ", "<this page> ", 1)
            problems.append((page, f"{kind}: {msg.replace(base, '/')}"))
        elif _is_external(source):
            problems.append((page, f"{kind} from another host: {msg}"))
        else:  # no source URL: cannot be shown to be someone else's
            problems.append((page, f"{kind} (no source URL): {msg}"))


def _grouped(pairs: list) -> list[str]:
    """One entry per distinct message, with the pages it occurs on."""
    groups: dict[str, list[str]] = {}
    for page, msg in pairs:
        groups.setdefault(msg, []).append(page)
    return [f"{msg}\n      on {len(pages)} page(s): {', '.join(dict.fromkeys(pages))}"
            for msg, pages in groups.items()]


# ----------------------------------------------------------------------------- tests


def test_every_page_loads_its_images_links_and_scripts(browser_binaries, built_book, server, driver):
    pages = _toc_pages(built_book)
    missing = [p for p in pages if not (built_book / p).is_file()]
    assert not missing, f"pages of _toc.yml that the build did not produce: {missing}"
    problems: list[tuple[str, str]] = []
    tolerated: list[tuple[str, str]] = []
    math_pages = [p for p in pages if 'class="math' in (built_book / p).read_text(encoding="utf-8")]
    assert math_pages, "no page of the book has math: the MathJax check would check nothing"
    for page in pages:
        _check_page(driver, server, built_book, page, problems, tolerated)
    if tolerated:  # printed (see -rA, or the captured output of a failure); never a failure itself
        print(f"Tolerated, the browser's own requests ({len(tolerated)}):")
        print("  " + "\n  ".join(_grouped(tolerated)))
    assert not problems, (f"{len(problems)} problem(s) in the built book ({len(pages)} pages checked):\n  "
                          + "\n  ".join(_grouped(problems)))


def test_no_built_page_loads_from_another_host(built_book):
    """Static, no browser: every built ``*.html`` loads its scripts, styles and images locally."""
    pages = sorted(built_book.rglob("*.html"))
    assert pages, f"no HTML files under {built_book}"
    problems = []
    for path in pages:
        parser = _ExternalLoads()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        problems += [(path.relative_to(built_book).as_posix(), f) for f in parser.found]
    assert not problems, (f"{len(problems)} load(s) from another host in the built book ({len(pages)} "
                          f"HTML files; the book is offline, see {BOOK_ASSETS}):\n  "
                          + "\n  ".join(_grouped(problems)))


def test_screenshots_of_intro_and_a_chapter(browser_binaries, built_book, server, driver):
    from PIL import Image

    ARTIFACTS.mkdir(exist_ok=True)
    for name, page in SCREENSHOTS.items():
        out = ARTIFACTS / name
        out.unlink(missing_ok=True)
        driver.get(server + page)
        driver.execute_async_script(_WAIT_IMAGES_JS)
        assert driver.save_screenshot(str(out)), f"screenshot of {page} failed"
        assert out.is_file() and out.stat().st_size > 10_000, f"{out} missing or too small"
        with Image.open(out) as im:
            assert im.format == "PNG", f"{out} is {im.format}, not PNG"
            assert im.width >= 800 and im.height >= 600, f"{out} is only {im.size}"
            colours = im.convert("RGB").resize((160, 125)).getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 16, f"{out} looks blank ({len(colours)} colours)"


# ----------------------------------------------------------------------------- the explorers

# Marks a page whose saved widget state holds a heatmap explorer (anywidget's id of the class).
EXPLORER_MARK = re.compile(r'"_anywidget_id":\s*"vtfusion\.explorer\.HeatmapExplorer"')

# In-page helpers: a copy of a canvas's pixels, and the share of pixels that differ from it.
_SNAPSHOT_JS = """
const canvas = arguments[0];
window.__vtfSnapshots = window.__vtfSnapshots || new Map();
window.__vtfSnapshots.set(canvas, canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height));
"""
_CHANGED_JS = """
const canvas = arguments[0];
const before = window.__vtfSnapshots.get(canvas);
const after = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
if (before.width !== after.width || before.height !== after.height) return 1;
let changed = 0;
for (let i = 0; i < after.data.length; i += 4) {
  if (after.data[i] !== before.data[i] || after.data[i + 1] !== before.data[i + 1] ||
      after.data[i + 2] !== before.data[i + 2]) changed++;
}
return changed / (after.width * after.height);
"""
_RENDERED_JS = """
const c = document.querySelector('.vtf-explorer canvas.vtf-main');
return c !== null && c.width > 0 && c.height > 0;
"""


def _explorer_pages(html: Path) -> list[str]:
    return sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                  if EXPLORER_MARK.search(p.read_text(encoding="utf-8", errors="replace")))


def _notebooks_with_explorers() -> set[str]:
    return {f"notebooks/{nb.stem}.html" for nb in (REPO / "notebooks").glob("*.ipynb")
            if "heatmap_explorer(" in nb.read_text(encoding="utf-8")}


def _interact_and_measure(drv, root) -> dict[str, float]:
    """Real clicks and drags on one explorer; the share of changed pixels after each."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    main = root.find_element(By.CSS_SELECTOR, "canvas.vtf-main")
    histogram = root.find_element(By.CSS_SELECTOR, "canvas.vtf-histogram")
    changes: dict[str, float] = {}

    def act(name: str, canvas, action) -> None:
        drv.execute_script(_SNAPSHOT_JS, canvas)
        action()
        time.sleep(0.2)  # drawing is synchronous; leave room for the event loop
        changes[name] = drv.execute_script(_CHANGED_JS, canvas)

    image = root.find_element(By.CSS_SELECTOR, "select.vtf-image")
    first = image.get_attribute("value")
    act("image (next button)", main,
        lambda: ActionChains(drv).click(root.find_element(By.CSS_SELECTOR, "button.vtf-next")).perform())
    changes["image (selected index moved)"] = float(image.get_attribute("value") != first)
    other = root.find_element(By.CSS_SELECTOR, "button.vtf-map[aria-pressed='false']")
    act("map (button)", main, lambda: ActionChains(drv).click(other).perform())
    threshold = root.find_element(By.CSS_SELECTOR, "input.vtf-threshold")
    act("threshold (slider drag)", main, lambda: ActionChains(drv).click_and_hold(threshold)
        .move_by_offset(-threshold.size["width"] // 4, 0).release().perform())
    # a click on the histogram, a quarter in from its right end, moves the threshold line
    act("threshold (histogram click)", histogram, lambda: ActionChains(drv)
        .move_to_element_with_offset(histogram, histogram.size["width"] // 4, 0).click().perform())
    opacity = root.find_element(By.CSS_SELECTOR, "input.vtf-opacity")
    act("opacity (slider drag)", main, lambda: ActionChains(drv).click_and_hold(opacity)
        .move_by_offset(-opacity.size["width"] // 3, 0).release().perform())
    return changes


def test_explorers_respond_to_clicks_and_drags_without_a_kernel(browser_binaries, built_book, server, driver):
    """On every page with an explorer: real clicks and drags on the image, map, threshold
    (slider and histogram) and opacity controls change the drawn pixels. A before/after
    screenshot pair of each explorer goes to ``test-artifacts/explorer-<page>-{before,after}.png``."""
    from PIL import Image, ImageChops
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pages = _explorer_pages(built_book)
    assert set(pages) == _notebooks_with_explorers(), (
        f"pages with a saved explorer {pages} differ from the notebooks that call heatmap_explorer "
        f"{sorted(_notebooks_with_explorers())}: an explorer was not saved in the built page")
    ARTIFACTS.mkdir(exist_ok=True)
    problems = []
    for page in pages:
        stem = Path(page).stem
        driver.get(server + page)
        try:
            WebDriverWait(driver, 60).until(lambda d: d.execute_script(_RENDERED_JS))
        except Exception:  # noqa: BLE001 - reported with the others
            problems.append(f"{page}: the explorer did not render within 60 s")
            continue
        root = driver.find_element(By.CSS_SELECTOR, ".vtf-explorer")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", root)
        time.sleep(0.3)
        shots = {when: ARTIFACTS / f"explorer-{stem}-{when}.png" for when in ("before", "after")}
        assert root.screenshot(str(shots["before"])), f"screenshot of the explorer on {page} failed"
        changes = _interact_and_measure(driver, root)
        assert root.screenshot(str(shots["after"])), f"screenshot of the explorer on {page} failed"
        problems += [f"{page}: {what} changed no pixel" for what, share in changes.items() if share <= 0]
        with Image.open(shots["before"]) as before, Image.open(shots["after"]) as after:
            same_size = before.size == after.size
            if same_size and ImageChops.difference(before.convert("RGB"), after.convert("RGB")).getbbox() is None:
                problems.append(f"{page}: the before and after screenshots are identical")
        print(f"{page}: share of pixels changed " + ", ".join(f"{k} {v:.3f}" for k, v in changes.items()))
    assert not problems, "explorers that did not respond:\n  " + "\n  ".join(problems)
