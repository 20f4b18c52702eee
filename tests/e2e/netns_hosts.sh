#!/usr/bin/env bash
# Two hosts made of Linux network namespaces joined by a veth link: a job of 2 hosts x 2 ranks
# (one `tessel launch` per host, the TCP store served by host 0's launcher) trains what 4
# simulated devices of one process train; then a link cut mid-run stops both hosts cleanly
# within the communication timeout. Needs root (CAP_NET_ADMIN); skips (exit 77) without it.
# With EQUIVALENCE_TEST (the equivalence suite's binary), its 4-device cases also run across
# the two hosts, 2 ranks each.
# Usage: netns_hosts.sh TESSEL_BINARY README_FILE [EQUIVALENCE_TEST]
set -u
T=$1
TEXT=$2
EQ=${3:-}
id=$$
A=tsl_a_$id B=tsl_b_$id VA=tla$id VB=tlb$id
net=10.213.$((id % 250)).
WORK=$(mktemp -d)
cleanup() {
  # Ranks first (their launchers kill them on the way out), then the hosts and the files.
  for p in $(jobs -p); do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  ip netns pids "$A" 2>/dev/null | xargs -r kill -9 2>/dev/null
  ip netns pids "$B" 2>/dev/null | xargs -r kill -9 2>/dev/null
  ip netns del "$A" 2>/dev/null
  ip netns del "$B" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! ip netns add "$A" 2>/dev/null; then
  echo "SKIP: cannot create network namespaces here (needs root / CAP_NET_ADMIN and iproute2)"
  exit 77
fi
ip netns add "$B" && ip link add "$VA" netns "$A" type veth peer name "$VB" netns "$B" &&
  ip -n "$A" addr add "${net}1/24" dev "$VA" && ip -n "$B" addr add "${net}2/24" dev "$VB" &&
  ip -n "$A" link set lo up && ip -n "$B" link set lo up &&
  ip -n "$A" link set "$VA" up && ip -n "$B" link set "$VB" up || { echo "FAIL: could not set up the hosts"; exit 1; }
echo "hosts $A (${net}1) and $B (${net}2)"

fail=0
json() { sed -n 's/.*"'"$2"'":\([-0-9.e+]*\).*/\1/p' "$1" | tail -1; }

# $1: name, $2: the train arguments. Each host runs two ranks.
train_on_two_hosts() {
  local name=$1 job=$2 port=$((29400 + RANDOM % 500))
  local master="${net}1:$port"
  ip netns exec "$B" timeout 120 "$T" launch --nproc 2 --nnodes 2 --node-rank 1 --master "$master" --token "tok$id" \
    -- "$T" $job >"$WORK/$name.b.out" 2>"$WORK/$name.b.err" &
  local b=$!
  ip netns exec "$A" timeout 120 "$T" launch --nproc 2 --nnodes 2 --node-rank 0 --master "$master" --token "tok$id" \
    -- "$T" $job >"$WORK/$name.a.out" 2>"$WORK/$name.a.err"
  local rc_a=$?
  wait $b
  local rc_b=$?
  "$T" $job --devices 4 >"$WORK/$name.one.out" 2>"$WORK/$name.one.err"
  local ok=1
  [ $rc_a -eq 0 ] && [ $rc_b -eq 0 ] || ok=0
  for key in final_loss test_loss; do
    local x y
    x=$(json "$WORK/$name.a.out" $key)
    y=$(json "$WORK/$name.one.out" $key)
    if [ -z "$x" ] || [ -z "$y" ] || ! awk -v x="$x" -v y="$y" 'BEGIN { d = x - y; if (d < 0) d = -d; exit !(d <= 1e-6 * (y < 0 ? -y : (y > 1 ? y : 1))) }'; then
      ok=0
    fi
    echo "  $name $key: 2 hosts x 2 ranks $x, 4 simulated devices $y"
  done
  if [ $ok -eq 1 ]; then
    echo "PASS $name"
  else
    echo "FAIL $name (rc $rc_a/$rc_b)"
    tail -5 "$WORK/$name.a.err" "$WORK/$name.b.err" "$WORK/$name.one.err"
    fail=1
  fi
}

GPT="train --model gpt:layers=2,d_model=32,heads=4,seq=16,vocab=256 --dataset text:$TEXT --steps 6 --batch 8 --optimizer adamw --lr 0.003 --seed 5 --eval-batches 4 --format json --quiet"
train_on_two_hosts dp2_tp2 "$GPT --dp 2 --tp 2 --sp"
train_on_two_hosts dp2_pp2 "$GPT --dp 2 --pp 2 --microbatches 2 --zero 1"

# The equivalence suite across the hosts: each of the 4 processes runs its rank of every
# 4-device case (tests/runtime/equivalence_test.cc); both launchers exit 0 when all pass.
if [ -n "$EQ" ]; then
  port=$((29400 + RANDOM % 500))
  ip netns exec "$B" timeout 180 "$T" launch --nproc 2 --nnodes 2 --node-rank 1 --master "${net}1:$port" --token "tok$id" \
    -- "$EQ" >"$WORK/eq.b.out" 2>&1 &
  eb=$!
  ip netns exec "$A" timeout 180 "$T" launch --nproc 2 --nnodes 2 --node-rank 0 --master "${net}1:$port" --token "tok$id" \
    -- "$EQ" >"$WORK/eq.a.out" 2>&1
  rc_a=$?
  wait $eb
  rc_b=$?
  echo "  equivalence suite: $(grep -c '\[       OK \]' "$WORK/eq.a.out") passes on host 0, $(grep -c '\[       OK \]' "$WORK/eq.b.out") on host 1 (rc $rc_a/$rc_b)"
  if [ $rc_a -eq 0 ] && [ $rc_b -eq 0 ] && grep -q '\[  PASSED  \]' "$WORK/eq.a.out"; then
    echo "PASS equivalence_suite"
  else
    echo "FAIL equivalence_suite"
    grep -E 'FAILED|Failure|exception' "$WORK/eq.a.out" "$WORK/eq.b.out" | head -20
    fail=1
  fi
fi

# A link cut mid-run: both hosts' ranks fail within the timeout (4 s) and both launchers exit
# non-zero naming a rank; nothing is left running.
port=$((29900 + RANDOM % 90))
LONG="train --model gpt:layers=2,d_model=32,heads=4,seq=16,vocab=256 --dataset text:$TEXT --steps 100000 --batch 8 --dp 2 --tp 2 --comm-timeout 4"
mkdir -p "$WORK/cut.a" "$WORK/cut.b"
ip netns exec "$B" timeout 120 "$T" launch --nproc 2 --nnodes 2 --node-rank 1 --master "${net}1:$port" --token "tok$id" \
  --log-dir "$WORK/cut.b" -- "$T" $LONG >/dev/null 2>"$WORK/cut.b.err" &
cb=$!
ip netns exec "$A" timeout 120 "$T" launch --nproc 2 --nnodes 2 --node-rank 0 --master "${net}1:$port" --token "tok$id" \
  --log-dir "$WORK/cut.a" -- "$T" $LONG >/dev/null 2>"$WORK/cut.a.err" &
ca=$!
for _ in $(seq 600); do grep -q ' parameters, batch' "$WORK/cut.a/rank-0.log" 2>/dev/null && break; sleep 0.1; done
sleep 1
start=$(date +%s%N)
ip -n "$B" link set "$VB" down
wait $ca
rc_a=$?
wait $cb
rc_b=$?
ms=$((($(date +%s%N) - start) / 1000000))
secs=$((ms / 1000)).$(printf %03d $((ms % 1000)))
echo "  link cut: host 0 launcher rc $rc_a, host 1 launcher rc $rc_b, both done ${secs} s after the cut"
echo "  host 0: $(grep 'tessel launch: rank' "$WORK/cut.a.err" | tail -1)"
echo "  host 1: $(grep 'tessel launch: rank' "$WORK/cut.b.err" | tail -1)"
if [ $rc_a -ne 0 ] && [ $rc_a -ne 124 ] && [ $rc_b -ne 0 ] && [ $rc_b -ne 124 ] &&
   grep -q 'tessel launch: rank [0-9]' "$WORK/cut.a.err" && grep -q 'tessel launch: rank [0-9]' "$WORK/cut.b.err" &&
   awk -v s="$secs" 'BEGIN { exit !(s < 30) }'; then
  echo "PASS link_cut"
else
  echo "FAIL link_cut"
  tail -5 "$WORK/cut.a.err" "$WORK/cut.b.err"
  fail=1
fi
left=$( (ip netns pids "$A"; ip netns pids "$B") 2>/dev/null | wc -l)
if [ "$left" -ne 0 ]; then
  echo "FAIL: $left processes left in the hosts"
  fail=1
fi
exit $fail
