#!/usr/bin/env bash
# Make sure a headless Chromium is there for the book's browser test (called by `make test`).
# Installs Debian's `chromium` through apt when it is missing and this user can; otherwise says how.
# Opt out explicitly with ATOMS_SKIP_BROWSER=1 (the browser test is then skipped, and says so).
set -uo pipefail
if [ "${ATOMS_SKIP_BROWSER:-0}" = "1" ]; then
  echo ">> ATOMS_SKIP_BROWSER=1: the headless-browser check of the book will be skipped"; exit 0
fi
for c in chromium chromium-browser google-chrome; do
  command -v "$c" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo ">> installing Debian's chromium for the browser test (about a minute, once)"
  log=$(mktemp)
  if DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >>"$log" 2>&1; then
    rm -f "$log"; exit 0
  fi
  tail -n 20 "$log"; echo "apt-get install chromium failed (log: $log)" >&2
fi
echo "No headless Chromium: install Debian's 'chromium' package (as root: apt-get install chromium)," >&2
echo "or run with ATOMS_SKIP_BROWSER=1 to skip the browser check of the book on purpose." >&2
exit 1
