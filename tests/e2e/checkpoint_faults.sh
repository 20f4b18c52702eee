#!/usr/bin/env bash
# Checkpoints under faults, through the CLI:
#  - kill -9 a run that saves a checkpoint after every step, at a random moment, 20 times:
#    afterwards the newest committed checkpoint always loads (tessel inspect says complete),
#    a save the kill cut off is listed as ignored, and a run resumes from it;
#  - tessel launch --max-restarts 2 with a rank killed mid-run: the job restarts from its newest
#    checkpoint and ends with the parameters of a run never stopped;
#  - a full disk (a 12 MiB tmpfs, room for two saves, where root may mount one; skipped with a
#    message elsewhere): the run stops with an error naming the path and the reason, the save
#    that failed leaves nothing behind, and the checkpoints saved before stay loadable.
# Usage: checkpoint_faults.sh TESSEL_BINARY. Exits 77 when it can run nothing here.
set -u
T=$1
WORK=$(mktemp -d)
MNT=""
cleanup() {
  pkill -9 -f "checkpoint-dir $WORK" 2>/dev/null
  if [ -n "$MNT" ]; then umount "$MNT" 2>/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
if [ ! -d /usr/share/datasets/fashion-mnist ]; then echo "SKIP: no fashion-mnist"; exit 77; fi

# 3.2 MB of parameters and as much momentum: a save takes a few ms, so kills land inside saves too.
JOB="train --model mlp:784-512-512-10 --dataset fashion-mnist --batch 64 --optimizer sgd --lr 0.05 --momentum 0.9 --seed 2 --quiet"
fail=0 cut=0
RANDOM=7
for try in $(seq 1 20); do
  D="$WORK/kill$try"
  "$T" $JOB --steps 100000 --checkpoint-dir "$D" --checkpoint-every 1 --keep 2 >/dev/null 2>&1 &
  pid=$!
  # Let it save some first (startup is under a second), then kill at a random moment.
  sleep "1.$((RANDOM % 10))$((RANDOM % 10))"
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  out=$("$T" inspect "$D" --format json 2>&1)
  if ! grep -q '"complete":true' <<<"$out"; then
    echo "FAIL try $try: the newest checkpoint does not load: $out"
    fail=1
    continue
  fi
  step=$(sed -n 's/.*"step":\([0-9]*\).*/\1/p' <<<"$out")
  grep -q '"ignored":\["' <<<"$out" && cut=$((cut + 1))
  if [ $((try % 5)) -eq 0 ]; then  # and a run continues from it
    if ! "$T" $JOB --steps $((step + 1)) --resume "$D" >"$WORK/resume.out" 2>&1; then
      echo "FAIL try $try: resuming from step $step: $(tail -3 "$WORK/resume.out")"
      fail=1
    fi
  fi
  echo "try $try: killed after step $step was committed"
done
echo "20 kills: the newest checkpoint loaded every time; $cut of them cut a save off (left a partial one, ignored)"
[ "$fail" -eq 0 ] && echo "PASS kill -9 while saving" || echo "FAIL kill -9 while saving"

# An elastic restart: tessel launch --max-restarts 2, one rank killed mid-run; the job resumes
# from its newest checkpoint and ends with the parameters of a run never stopped.
ELASTIC="train --model mlp:784-256-256-10 --dataset fashion-mnist --batch 64 --optimizer adamw --lr 1e-3 --seed 4 --quiet --dp 2 --steps 300"
"$T" $ELASTIC --devices 2 --save "$WORK/whole.tsg" >/dev/null 2>&1 || { echo "FAIL elastic: the uninterrupted run"; fail=1; }
"$T" launch --nproc 2 --max-restarts 2 -- "$T" $ELASTIC --checkpoint-dir "$WORK/elastic" --checkpoint-every 20 \
  --save "$WORK/restarted.tsg" >"$WORK/elastic.out" 2>&1 &
launcher=$!
for _ in $(seq 100); do [ -d "$WORK/elastic/step-00000040" ] && break; sleep 0.1; done
victim=$(pgrep -n -f "checkpoint-dir $WORK/elastic")
kill -9 "$victim" 2>/dev/null
wait "$launcher"
rc=$?
if [ "$rc" -eq 0 ] && grep -q "restarting the job (1 of 2)" "$WORK/elastic.out" && cmp -s "$WORK/whole.tsg" "$WORK/restarted.tsg"; then
  echo "$(grep -m1 'restarting the job' "$WORK/elastic.out")"
  echo "PASS an elastic restart ends with the parameters of a run never stopped"
else
  echo "FAIL an elastic restart (exit $rc):"; cat "$WORK/elastic.out"; fail=1
fi

# A full disk.
if [ "$(id -u)" -eq 0 ] && mkdir -p "$WORK/small" && mount -t tmpfs -o size=12m tmpfs "$WORK/small" 2>/dev/null; then
  MNT="$WORK/small"
  "$T" $JOB --steps 40 --checkpoint-dir "$MNT/ckpt" --checkpoint-every 1 >"$WORK/full.out" 2>&1
  rc=$?
  msg=$(grep -m1 "No space left on device" "$WORK/full.out")
  if [ "$rc" -ne 0 ] && [ -n "$msg" ] && grep -q "$MNT/ckpt" <<<"$msg" && ! grep -qi "segmentation\|core dumped\|terminate called" "$WORK/full.out"; then
    echo "full disk: exit $rc, \"$msg\""
    if ! "$T" inspect "$MNT/ckpt" >/dev/null 2>&1 || ls "$MNT/ckpt" | grep -q partial; then
      echo "FAIL a full disk: the checkpoints saved before do not load, or the failed save left a partial one:"
      ls -la "$MNT/ckpt"; fail=1
    else
      echo "PASS a full disk stops the run cleanly"
    fi
  else
    echo "FAIL a full disk: exit $rc"; cat "$WORK/full.out"; fail=1
  fi
else
  echo "SKIP a full disk: cannot mount a small tmpfs here (needs root)"
fi
exit "$fail"
