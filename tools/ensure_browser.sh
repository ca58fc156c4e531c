#!/usr/bin/env bash
# Make sure headless Chromium and its WebDriver are present for tests/test_book_browser.py.
# Idempotent: does nothing when both `chromium` and `chromedriver` are already installed.
# Otherwise installs Debian's `chromium` and `chromium-driver` packages with apt-get
# (non-interactive; through sudo only when not root). Browser builds downloaded by other
# tools (Selenium Manager, webdriver-manager, Playwright) are not used: the machines this
# project runs on reach package registries only.
set -euo pipefail

PACKAGES=(chromium chromium-driver)

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
    exit 0
fi

fail() {
    echo "ensure_browser.sh: $*" >&2
    echo "ensure_browser.sh: install the Debian packages '${PACKAGES[*]}' (apt-get install ${PACKAGES[*]})," >&2
    echo "ensure_browser.sh: or deselect the browser test with: pytest -m 'not browser'" >&2
    exit 1
}

if ! have apt-get; then
    fail "chromium/chromedriver are missing and apt-get is not available on this machine"
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if have sudo && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        fail "chromium/chromedriver are missing and installing them needs root (no password-less sudo)"
    fi
fi

echo "ensure_browser.sh: installing ${PACKAGES[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq || fail "apt-get update failed"
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null \
    || fail "apt-get install ${PACKAGES[*]} failed"

have chromium && have chromedriver || fail "apt-get ran but chromium/chromedriver are still not on PATH"
echo "ensure_browser.sh: $(chromium --version 2>/dev/null | tail -n 1); $(chromedriver --version 2>/dev/null | head -n 1)" >&2
