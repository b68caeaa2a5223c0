#!/usr/bin/env bash
# Debian's Chromium and its matching chromedriver, for tests/browser (the HTML matrix is driven in
# a real headless browser by Selenium). Debian builds both from one source, so their versions
# always match; no browser download from the network. Idempotent; fails loudly.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "chromium already installed: $(chromium --version 2>/dev/null | head -1)"
  exit 0
fi
command -v apt-get >/dev/null || { echo "30-chromium: apt-get is missing (Debian/Ubuntu only)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver
chromium --version
chromedriver --version
