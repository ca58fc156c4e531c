# Two entry points for a fresh machine (Python >= 3.10, no conda, no GPU needed):
#   make book   -> .venv, install, execute every notebook, build _build/html
#   make test   -> .venv, install, run the whole test suite (pytest + nbval)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-stamp
# Book builds run in the quick profile unless the caller says otherwise.
export VTFUSION_PROFILE ?= quick
export PYTHONHASHSEED ?= 0

.PHONY: all install book-assets book test test-fast toy shots clean clean-book browser

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# `torch===2.13.0` (arbitrary equality) takes the registry's build of torch that
# matches torchvision 0.28.0; a plain `==` would also accept a local "+cpu" wheel
# from a find-links folder, and torchvision's compiled ops fail to load against it.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch===2.13.0" "torchvision===0.28.0"
	$(PIP) install -q -e ".[book,dev,cluster,deploy]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

# tools/book_assets.py: pinned MathJax, require.js and widget manager into book/_static/offline
# (npm registry, once), so that the built book loads nothing from another host.
book: $(STAMP)
	$(PY) -m vtfusion.data.toy --ensure
	$(PY) tools/book_assets.py
	$(VENV)/bin/jupyter-book build . -W --keep-going
	@echo "Book: $(CURDIR)/_build/html/index.html"

# Headless Chromium + chromedriver (Debian packages) for tests/test_book_browser.py.
browser:
	bash tools/ensure_browser.sh

# VTFUSION_REQUIRE_BROWSER=1: the browser test fails instead of skipping without Chromium.
test: $(STAMP) browser
	VTFUSION_REQUIRE_BROWSER=1 $(VENV)/bin/pytest

test-fast: $(STAMP)
	$(VENV)/bin/pytest tests -m "not slow"

shots: $(STAMP)
	$(VENV)/bin/vtfusion data shots --all

book-assets:
	$(PYTHON) tools/book_assets.py

clean-book:
	rm -rf _build

clean: clean-book
	rm -rf $(VENV) .pytest_cache
