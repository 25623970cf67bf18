#!/usr/bin/env bash
# Headless Chromium for the HTML report's screenshot test (tests/test_reports.py).
# Installs Debian's `chromium` package when /usr/bin/chromium is missing; without it that one test
# is skipped, so a failed install must not fail CI (.ci/run tolerates a non-zero exit).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo unknown version)"
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "cannot install chromium (needs root and apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# apt-get update may already have run (scripts/ci_postgres.sh); a second one is cheap.
timeout 600 apt-get update -qq
timeout 600 apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
