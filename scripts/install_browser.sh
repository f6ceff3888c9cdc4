#!/usr/bin/env bash
# Install Debian's chromium for tests/test_web.py (the headless browser test of the chat page).
# A no-op when /usr/bin/chromium already exists. Needs root (CI and the dev machines run as root).
#
#     bash scripts/install_browser.sh
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "error: installing chromium needs root; run: sudo bash scripts/install_browser.sh" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
