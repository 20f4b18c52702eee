#!/usr/bin/env bash
# `tessel calibrate`: measures this host in under 60 s and writes a cluster spec that local:N
# then derives its devices from (and says so in `tessel plan` and `tessel train`); the spec
# also loads as --cluster FILE; a damaged one is refused naming the file.
#   calibrate_test.sh TESSEL
set -euo pipefail
TESSEL=$1
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export TESSEL_CALIBRATION=$T/cal.pbtxt
fail() { echo "FAIL: $*"; exit 1; }

start=$(date +%s.%N)
timeout 300 "$TESSEL" calibrate --format json > "$T/cal.json" 2> "$T/cal.err" || { cat "$T/cal.err"; fail "calibrate exited non-zero"; }
took=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
echo "calibrate took $took s"
python3 -c "import sys; sys.exit(0 if $took < 60 else 1)" || fail "calibrate took $took s (limit 60 s)"
[ -s "$TESSEL_CALIBRATION" ] || fail "no file at $TESSEL_CALIBRATION"
python3 - "$T/cal.json" <<'PY'
import json, os, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
threads = sorted({g["threads"] for g in j["gemm"]})
assert threads[0] == 1 and threads[-1] == os.cpu_count(), threads
assert all(g["flops_per_s"] > 1e8 for g in j["gemm"]), j["gemm"]
assert len(j["stream_bandwidth"]) == os.cpu_count() and all(b > 1e8 for b in j["stream_bandwidth"])
assert j["memcpy_bandwidth"] > 1e8 and 0 < j["dispatch_s"] < 1e-4
# A transformer layer's other kernels: size classes at every measured thread count, each rate
# below what its cores could stream at best (a few TB/s) and above a crawl.
lk = j["layer_kernels"]
assert sorted({k["threads"] for k in lk}) == threads, lk
assert all(k["bytes"] >= 1 and 1e6 < k["bytes_per_s"] < 1e13 for k in lk), lk
engines = {(a["engine"], a["ranks"]) for a in j["all_reduce"]}
assert ("inprocess", 2) in engines and ("gloo", 2) in engines, engines
print(f"calibrate: {len(j['gemm'])} products at threads {threads}, memcpy {j['memcpy_bandwidth'] / 1e9:.1f} GB/s")
PY

"$TESSEL" plan --model mlp:784-256-10 --batch 64 --cluster local:2 > "$T/plan.out" 2>&1 || { cat "$T/plan.out"; fail "plan on the calibrated local:2"; }
grep -q "calibrated" "$T/plan.out" || { cat "$T/plan.out"; fail "tessel plan does not say local:2 is calibrated"; }
"$TESSEL" train --model mlp:784-64-10 --dataset fashion-mnist --batch 64 --steps 2 --devices 2 > /dev/null 2> "$T/train.err" || { cat "$T/train.err"; fail "train"; }
grep -q "(calibrated " "$T/train.err" || { cat "$T/train.err"; fail "tessel train does not say local:2 is calibrated"; }
"$TESSEL" plan --model mlp:784-256-10 --batch 64 --cluster "$TESSEL_CALIBRATION" > "$T/file.out" 2>&1 || { cat "$T/file.out"; fail "--cluster FILE"; }

# Without it, the estimates, saying so.
TESSEL_CALIBRATION=off "$TESSEL" train --model mlp:784-64-10 --dataset fashion-mnist --batch 64 --steps 2 --devices 2 > /dev/null 2> "$T/off.err"
grep -q "not calibrated" "$T/off.err" || { cat "$T/off.err"; fail "an uncalibrated local:2 is not said to be so"; }

# A damaged file: refused, naming it.
echo "calibration { threads: zero }" > "$TESSEL_CALIBRATION"
if "$TESSEL" plan --model mlp:784-256-10 --batch 64 --cluster local:2 > "$T/bad.out" 2>&1; then fail "a damaged calibration was accepted"; fi
grep -q "$TESSEL_CALIBRATION" "$T/bad.out" || { cat "$T/bad.out"; fail "the error does not name the file"; }
echo "PASS"
