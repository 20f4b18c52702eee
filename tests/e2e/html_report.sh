#!/usr/bin/env bash
# The HTML plan report in a real browser: `tessel plan --html` for an MLP on 4 local devices
# and for a GPT on two A100 nodes, and `tessel train --html` (the measured parts too); each page is opened in headless Chromium, whose rendered DOM
# must hold every part of the report with SVG bars in its timeline and memory parts, and whose
# screenshot must not be blank (at least 1 % of the pixels differ from the most common colour,
# at least 8 distinct colours). Skipped (77) where Chromium is not installed.
# TESSEL_HTML_REPORT_KEEP=DIR keeps the pages and screenshots there.
# Usage: html_report.sh TESSEL_BINARY
set -euo pipefail
TESSEL=$1

CHROMIUM=""
for c in chromium chromium-browser; do
  if command -v "$c" >/dev/null 2>&1; then CHROMIUM=$(command -v "$c"); break; fi
done
if [ -z "$CHROMIUM" ]; then echo "SKIP: chromium is not installed (scripts/test.sh installs it)"; exit 77; fi
command -v python3 >/dev/null 2>&1 || { echo "SKIP: no python3 to read the screenshots"; exit 77; }

T=$(mktemp -d)
GROUPS_FILE=$T/process-groups
: >"$GROUPS_FILE"
cleanup() {
  # Each browser ran as the leader of its own process group (timeout makes one): end what is
  # left of those groups (crashpad, zygotes), then remove the files.
  local g
  while read -r g; do kill -KILL -- "-$g" 2>/dev/null || true; done <"$GROUPS_FILE"
  rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$T/home/.config" "$T/home/.cache" "$T/home/.local/share" "$T/runtime"
chmod 700 "$T/runtime"

now() { date +%s.%N; }
took() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f} s')" "$1" "$(now)"; }

# chromium ARGS... : one headless run under `timeout 60`, HOME and XDG_* in the temp dir (it
# writes crash reports and dconf there otherwise); its output to stdout, its noise to a log.
chromium_run() {
  local rc=0 pid
  HOME=$T/home XDG_CONFIG_HOME=$T/home/.config XDG_CACHE_HOME=$T/home/.cache \
    XDG_DATA_HOME=$T/home/.local/share XDG_RUNTIME_DIR=$T/runtime \
    timeout 60 "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --user-data-dir="$T/profile" \
    "$@" 2>>"$T/chromium.log" &
  pid=$!
  echo "$pid" >>"$GROUPS_FILE"
  wait "$pid" || rc=$?
  kill -KILL -- "-$pid" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    echo "FAIL: chromium exited with $rc (124: timed out) on $*"
    tail -n 40 "$T/chromium.log"
    exit 1
  fi
}

check_dom() {  # DOM_FILE [measured]: every part present, SVG bars where the plan is drawn
  python3 - "$1" "${2:-}" <<'EOF'
import re, sys
dom = open(sys.argv[1], encoding="utf-8").read()
fails = []
parts = ["summary", "mesh", "stages", "memory", "timeline-simulated", "alternatives"]
if sys.argv[2] == "measured":
    parts += ["timeline-measured", "predicted-vs-measured"]
for part in parts:
    m = re.search(r'<section[^>]*\bid="%s"[^>]*>(.*?)</section>' % part, dom, re.S)
    if not m:
        fails.append("no part with id=%s" % part)
        continue
    rects = len(re.findall(r"<rect\b", m.group(1)))
    need = {"timeline-simulated": 4, "timeline-measured": 4, "memory": 2, "mesh": 1}.get(part, 0)
    if rects < need:
        fails.append("part %s draws %d SVG rects, expected at least %d" % (part, rects, need))
    if need:
        print("  %-19s %4d rects" % (part, rects))
if "<title>" not in dom:
    fails.append("no <title>")
if fails:
    print("FAIL: " + "; ".join(fails))
    sys.exit(1)
EOF
}

check_png() {  # PNG_FILE: decode (stdlib only) and count colours
  python3 - "$1" <<'EOF'
import collections, struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, ihdr = 8, [], None
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        ihdr = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
        idat.append(body)
    elif kind == b"IEND":
        break
    pos += 12 + n
width, height, depth, colour, _, _, interlace = ihdr
if depth != 8 or colour not in (2, 6) or interlace != 0:
    print("FAIL: unexpected PNG format: depth %d, colour type %d, interlace %d" % (depth, colour, interlace))
    sys.exit(1)
bpp = 3 if colour == 2 else 4
raw = zlib.decompress(b"".join(idat))
stride = width * bpp
prev = bytearray(stride)
counts = collections.Counter()
for y in range(height):
    f = raw[y * (stride + 1)]
    line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    if f == 1:
        for i in range(bpp, stride):
            line[i] = (line[i] + line[i - bpp]) & 255
    elif f == 2:
        line = bytearray((a + b) & 255 for a, b in zip(line, prev))
    elif f == 3:
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
    elif f == 4:
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    elif f != 0:
        print("FAIL: unknown PNG filter %d" % f)
        sys.exit(1)
    counts.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp))
    prev = line
total = width * height
common, n = counts.most_common(1)[0]
other = 1 - n / total
print("  %dx%d, %d colours, %.1f %% of pixels differ from the most common colour #%s"
      % (width, height, len(counts), 100 * other, common.hex()))
if other < 0.01 or len(counts) < 8:
    print("FAIL: the screenshot is blank")
    sys.exit(1)
EOF
}

render() {  # NAME [measured]: the page $T/NAME.html, its DOM and a screenshot
  local name=$1 t
  t=$(now)
  chromium_run --dump-dom "file://$T/$name.html" >"$T/$name.dom.html"
  echo "  dump-dom $(took "$t")"
  check_dom "$T/$name.dom.html" "${2:-}" || exit 1
  t=$(now)
  chromium_run --screenshot="$T/$name.png" --window-size=1280,1600 "file://$T/$name.html" >/dev/null
  echo "  screenshot $(took "$t")"
  [ -s "$T/$name.png" ] || { echo "FAIL: no screenshot of $name"; exit 1; }
  t=$(now)
  check_png "$T/$name.png" || exit 1
  echo "  screenshot checked in $(took "$t")"
  if [ -n "${TESSEL_HTML_REPORT_KEEP:-}" ]; then
    mkdir -p "$TESSEL_HTML_REPORT_KEEP"
    cp "$T/$name.html" "$T/$name.png" "$TESSEL_HTML_REPORT_KEEP/"
  fi
}

plan() {  # NAME tessel-plan-args...: write $T/NAME.html
  local name=$1 t
  shift
  t=$(now)
  "$TESSEL" plan "$@" --html "$T/$name.html" >"$T/$name.txt" 2>"$T/$name.err" ||
    { echo "FAIL: tessel plan $*"; cat "$T/$name.err"; exit 1; }
  grep -q "wrote $T/$name.html" "$T/$name.err" || { echo "FAIL: tessel plan did not say it wrote the page"; exit 1; }
  echo "$name: tessel plan $(took "$t"), $(wc -c <"$T/$name.html") bytes"
  if grep -Eq 'https?://|<script|<link' "$T/$name.html"; then
    echo "FAIL: $name.html is not self-contained"; exit 1
  fi
}

plan mlp --model mlp:784-1024-1024-10 --batch 256 --cluster local:4
render mlp
plan gpt --model gpt:layers=8,d_model=512,heads=8,seq=256,vocab=4096 --batch 64 --cluster a100-80g:nodes=2
render gpt
# A training run's report: the plan with the run's measured timeline and figures beside it.
"$TESSEL" train --model mlp:784-256-256-10 --dataset fashion-mnist --batch 128 --steps 8 --devices 2 --tp 2 --quiet \
  --html "$T/trained.html" >"$T/trained.txt" 2>"$T/trained.err" || { echo "FAIL: tessel train --html"; cat "$T/trained.err"; exit 1; }
render trained measured

# No browser process may outlive the test: none may still use the profile in the temp dir.
sleep 0.5
if pgrep -f -- "--user-data-dir=$T/profile" >/dev/null; then
  echo "FAIL: chromium processes left behind:"
  pgrep -af -- "--user-data-dir=$T/profile"
  exit 1
fi
echo "PASS: the three reports render in headless Chromium with every part drawn"
