#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the web console's browser tests (tests/ui), installed when missing.
# The tests call this from a session fixture; they skip (with this script's output) only if it fails.
set -euo pipefail
have() { command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; }
have && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "chromium missing and not root (no sudo) to apt-get it" >&2; exit 1; }
  SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale or absent on a fresh machine: update once if the first try fails.
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
  || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; }
have || { echo "apt-get ran but chromium/chromedriver are still missing" >&2; exit 1; }
