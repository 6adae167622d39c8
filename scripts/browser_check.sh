#!/usr/bin/env bash
# Opens a report's index.html in headless Chromium (installed here from the Debian package if
# missing: CI starts from a clean machine) and fails unless the page's script ran without a
# console error: the page writes data-ready="1" on <body> when its script finished, and
# Chromium's stderr log must hold no "Uncaught" or console error. Leaves a screenshot.
# Usage: scripts/browser_check.sh PAGE [SCREENSHOT]   (about 10 s once Chromium is installed)
set -euo pipefail
page=$(realpath "$1")
shot=$(realpath -m "${2:-.cache/browser-check.png}")
test -f "$page" || { echo "browser-check: no page $page (run the report first)" >&2; exit 2; }
if ! command -v chromium >/dev/null; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
fi
mkdir -p "$(dirname "$shot")"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --user-data-dir="$profile" --enable-logging=stderr --v=0
       --window-size=1200,2000)
timeout 60 chromium "${flags[@]}" --dump-dom "file://$page" >"$profile/dom.html" 2>"$profile/log.txt" || {
    echo "browser-check: chromium failed on $page" >&2; tail -20 "$profile/log.txt" >&2; exit 1; }
if grep -E "Uncaught|ERROR:CONSOLE|CONSOLE\(.*(Error|error)" "$profile/log.txt" >&2; then
    echo "browser-check: console errors on $page" >&2; exit 1
fi
grep -q 'data-ready="1"' "$profile/dom.html" || {
    echo "browser-check: the page's script did not finish (no data-ready on <body>) on $page" >&2; exit 1; }
timeout 60 chromium "${flags[@]}" --screenshot="$shot" "file://$page" 2>/dev/null
test -s "$shot" || { echo "browser-check: no screenshot written to $shot" >&2; exit 1; }
echo "browser-check: $page loads without console errors; screenshot in $shot"
