#!/usr/bin/env bash
# `tessel train --trace`: the file is valid trace-event JSON with both streams of every rank,
# every op inside its step, the steps (every timed one: --trace-steps above their count) lasting
# what the run reports (median within 5 %), on one device, on simulated devices (data
# parallel; a pipeline), and across two Gloo processes (one file, merged by rank 0); and the
# run's report sets the measured step and its parts beside the planner's prediction.
#   trace_test.sh TESSEL
set -euo pipefail
TESSEL=$1
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
MODEL=(--model mlp:784-512-512-10 --dataset fashion-mnist --batch 256 --steps 24 --seed 3 --format json --quiet)

check() {  # NAME RANKS [trace_check flags] -- TESSEL ARGS...
  local name=$1 ranks=$2; shift 2
  local flags=()
  while [ "$1" != "--" ]; do flags+=("$1"); shift; done
  shift
  echo "== $name"
  if ! timeout 300 "$@" > "$T/$name.out" 2> "$T/$name.err"; then
    cat "$T/$name.err"; echo "FAIL: $name: tessel exited non-zero"; exit 1
  fi
  python3 "$HERE/trace_check.py" "$T/$name.json" "$T/$name.out" "$ranks" "${flags[@]}"
}

check one_device 1 -- "$TESSEL" train "${MODEL[@]}" --trace "$T/one_device.json" --trace-steps 30
check dp2 2 --comm -- "$TESSEL" train "${MODEL[@]}" --devices 2 --dp 2 --trace "$T/dp2.json" --trace-steps 30
check pp2 2 --recv -- "$TESSEL" train "${MODEL[@]}" --devices 2 --pp 2 --microbatches 4 --trace "$T/pp2.json" --trace-steps 30
check gloo2 2 --comm -- "$TESSEL" launch --nproc 2 -- "$TESSEL" train "${MODEL[@]}" --dp 2 --trace "$T/gloo2.json" --trace-steps 30

# The report: the prediction and the measurement, the parts of the measured step adding up to it.
python3 - "$T/dp2.out" <<'PY'
import json, sys
r = json.loads([l for l in open(sys.argv[1]).read().splitlines() if l.strip()][-1])
for k in ("predicted_step_ms", "step_ms_median", "predicted_peak_bytes", "measured_peak_bytes", "predicted", "measured", "ranks"):
    assert k in r, f"the report lacks {k}: {sorted(r)}"
m = r["measured"]
parts = m["compute_ms"] + m["optimizer_ms"] + m["exposed_comm_ms"] + m["bubble_ms"] + m["other_ms"]
assert abs(parts - m["step_ms"]) <= 0.02 * m["step_ms"] + 0.05, f"measured parts {parts} do not add up to the step {m['step_ms']}"
assert len(r["ranks"]) == 2 and all(x["measured_peak_bytes"] > 0 and x["predicted_peak_bytes"] > 0 for x in r["ranks"]), r["ranks"]
assert m["compute_ms"] > 0 and r["predicted"]["compute_ms"] > 0
print(f"report: predicted {r['predicted_step_ms']:.2f} ms, measured {r['step_ms_median']:.2f} ms; parts add up")
PY
# The text form, on the terminal's side (stderr).
timeout 300 "$TESSEL" train --model mlp:784-64-10 --dataset fashion-mnist --batch 64 --steps 5 --devices 2 > /dev/null 2> "$T/text.err"
grep -q "predicted vs measured" "$T/text.err" || { cat "$T/text.err"; echo "FAIL: no predicted-vs-measured table"; exit 1; }
grep -q "peak memory per rank" "$T/text.err" || { cat "$T/text.err"; echo "FAIL: no per-rank memory"; exit 1; }
echo "PASS"
