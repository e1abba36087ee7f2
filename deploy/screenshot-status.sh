#!/bin/sh
# Render the status page of `airbridge demo` in headless Chromium and check the PNG.
#
#   deploy/screenshot-status.sh [OUT.png]      (default docs/status.png)
#
# Env: AIRBRIDGE (binary, default target/debug/airbridge, built if missing), PORT (18088),
# WARM (seconds of history before the shot, default 45), CHROMIUM (default: chromium).
# Exit 77 (skipped) when Chromium is not installed (Debian: apt-get install chromium).
set -eu
out=${1:-docs/status.png}
bin=${AIRBRIDGE:-target/debug/airbridge}
port=${PORT:-18088}
warm=${WARM:-45}
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$chromium" ]; then
    echo "skipped: chromium is not installed (apt-get install chromium)" >&2
    exit 77
fi
[ -x "$bin" ] || cargo build --quiet
profile=$(mktemp -d)
log=$(mktemp)
"$bin" demo --duration "$((warm + 60))s" --status "127.0.0.1:$port" >"$log" 2>&1 &
demo=$!
trap 'kill "$demo" 2>/dev/null || true; rm -rf "$profile" "$log"' EXIT INT TERM

up=no
for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/status" >/dev/null 2>&1; then up=yes; break; fi
    sleep 0.1
done
if [ "$up" != yes ]; then
    echo "the demo's status page did not come up:" >&2
    cat "$log" >&2
    exit 1
fi
echo "demo up on http://127.0.0.1:$port/; collecting ${warm}s of history" >&2
sleep "$warm"

rm -f "$out"
"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=1280,980 \
    --virtual-time-budget=4000 --screenshot="$out" "http://127.0.0.1:$port/" >/dev/null 2>&1

# A PNG of the requested size, not a blank page.
[ -s "$out" ] || { echo "no screenshot written" >&2; exit 1; }
sig=$(od -An -tx1 -N8 "$out" | tr -d ' \n')
[ "$sig" = "89504e470d0a1a0a" ] || { echo "$out is not a PNG ($sig)" >&2; exit 1; }
dims=$(od -An -tu1 -j16 -N8 "$out" | awk '{print $1*16777216+$2*65536+$3*256+$4 "x" $5*16777216+$6*65536+$7*256+$8}')
[ "$dims" = "1280x980" ] || { echo "$out is $dims, expected 1280x980" >&2; exit 1; }
size=$(wc -c <"$out")
[ "$size" -gt 40000 ] || { echo "$out is only $size bytes: a blank page?" >&2; exit 1; }
echo "$out: PNG $dims, $size bytes" >&2
