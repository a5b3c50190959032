#!/usr/bin/env sh
# Install Debian's Chromium for the dashboard's browser tests (Playwright drives it through
# executable_path; it never downloads a browser of its own). Does nothing when one is present.
set -eu

if command -v chromium >/dev/null 2>&1; then
    echo "chromium present: $(command -v chromium)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
echo "chromium installed: $(command -v chromium)"
