#!/usr/bin/env bash
# The Python `safetensors` package reads what tessel writes: every shard of a checkpoint saved
# by 2 ranks under ZeRO-1 with AdamW (parameters and moments split over the ranks), and the
# model `tessel export --checkpoint` writes; each piece equals its slice of the exported whole,
# where checkpoint.json places it. Skipped with a message where no Python has the package
# (python3, or the interpreter in $TESSEL_PYTHON).
# Usage: safetensors_python.sh TESSEL_BINARY
set -u
T=$1
PY=""
for p in ${TESSEL_PYTHON:-} python3; do
  if "$p" -c "import safetensors, numpy" 2>/dev/null; then PY=$p; break; fi
done
if [ -z "$PY" ]; then echo "SKIP: no Python with the safetensors package (pip install safetensors, or set TESSEL_PYTHON)"; exit 77; fi
if [ ! -d /usr/share/datasets/fashion-mnist ]; then echo "SKIP: no fashion-mnist"; exit 77; fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$T" train --model mlp:784-64-64-10 --dataset fashion-mnist --batch 64 --steps 4 --optimizer adamw --lr 1e-3 \
  --devices 2 --dp 2 --zero 1 --checkpoint-dir "$WORK/ckpt" --quiet >/dev/null 2>"$WORK/train.err" ||
  { echo "FAIL: training"; cat "$WORK/train.err"; exit 1; }
"$T" export --checkpoint "$WORK/ckpt" -o "$WORK/model.safetensors" 2>/dev/null || { echo "FAIL: export"; exit 1; }
"$PY" - "$WORK" <<'EOF'
import glob, json, os, sys
import numpy as np
from safetensors.numpy import load_file
work = sys.argv[1]
step = sorted(glob.glob(os.path.join(work, "ckpt", "step-*")))[-1]
meta = json.load(open(os.path.join(step, "checkpoint.json")))
files = {os.path.basename(f): load_file(f) for f in glob.glob(os.path.join(step, "*.safetensors"))}
model = load_file(os.path.join(work, "model.safetensors"))
pieces = 0
for t in meta["tensors"]:
    shape = [int(d) for d in t.get("shape", [])]  # proto3 JSON leaves empty lists out
    if t.get("parameter"):
        assert list(model[t["name"]].shape) == shape, (t["name"], model[t["name"]].shape, shape)
    for p in t["pieces"]:
        a = files[p["file"]][p.get("tensor", t["name"])]
        assert list(a.shape) == [int(d) for d in p.get("shape", [])], (t["name"], a.shape, p.get("shape"))
        if t.get("parameter"):
            sl = tuple(slice(int(o), int(o) + int(d)) for o, d in zip(p.get("offsets", []), p.get("shape", [])))
            assert np.array_equal(model[t["name"]][sl], a), t["name"]
        pieces += 1
split = sum(len(t["pieces"]) > 1 for t in meta["tensors"])
assert split > 0, "nothing was split over the ranks"
print(f"PASS: {len(files)} shard files, {pieces} pieces ({split} tensors split over ranks) and the exported model "
      f"({len(model)} parameters) load in the safetensors package")
EOF
