#!/usr/bin/env bash
# The whole test suite: install, build, run every test (slow ones included); then the same
# suite, minus the slow end-to-end runs and the heavy planner searches, built with
# AddressSanitizer + UBSan; then short fuzzing runs of the graph-file reader, the TCP store and
# the checkpoint readers.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

# Chromium (and fonts for its screenshots) for the HTML plan report's rendering test.
TESSEL_EXTRA_PACKAGES="chromium fonts-dejavu-core ${TESSEL_EXTRA_PACKAGES:-}" scripts/setup.sh build
# Every test sees the same local:N, the uncalibrated one, whatever `tessel calibrate` left in
# this machine's cache (the calibration tests point TESSEL_CALIBRATION at files of their own).
export TESSEL_CALIBRATION=off
(cd build && ctest --output-on-failure -j"$jobs" --timeout 900)

echo "== sanitizers (ASan + UBSan) =="
# Asserts on (Debug) at -O1, as the sanitizers' documentation advises: the planner's searches
# run several times faster than at -O0 and every check stays. Line tables only (-g1): the
# sanitizers' reports keep file and line, the build is quicker. The "heavy" planner searches
# (minutes each under the sanitizers) ran above.
scripts/setup.sh build-asan -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-g1 -O1" -DTESSEL_SANITIZE=ON -DTESSEL_BUILD_BENCH=OFF
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure -j"$jobs" -LE "slow|heavy" --timeout 900)

echo "== fuzzing the graph-file reader (45 s), the TCP store's protocol (30 s) and the checkpoint readers (15 s) =="
CC=clang CXX=clang++ scripts/setup.sh build-fuzz -DTESSEL_FUZZ=ON -DTESSEL_BUILD_TESTS=OFF -DTESSEL_BUILD_BENCH=OFF -DTESSEL_NATIVE=OFF
mkdir -p build-fuzz/corpus build-fuzz/store_corpus build-fuzz/checkpoint_corpus
# One core each: the graph reader on one, the store then the checkpoint readers on the other;
# each one's summary printed after all end, failing if any did.
build-fuzz/tests/graph_fuzz -max_total_time=45 -rss_limit_mb=2048 -print_final_stats=1 \
  build-fuzz/corpus tests/data/graph_corpus > build-fuzz/graph_fuzz.log 2>&1 & graph=$!
( rc=0; build-fuzz/tests/store_fuzz -max_total_time=30 -rss_limit_mb=2048 -print_final_stats=1 \
    build-fuzz/store_corpus tests/data/store_corpus > build-fuzz/store_fuzz.log 2>&1 || rc=$?
  echo "$rc" > build-fuzz/store_fuzz.rc
  rc=0; build-fuzz/tests/checkpoint_fuzz -max_total_time=15 -rss_limit_mb=2048 -print_final_stats=1 \
    build-fuzz/checkpoint_corpus tests/data/checkpoint_corpus > build-fuzz/checkpoint_fuzz.log 2>&1 || rc=$?
  echo "$rc" > build-fuzz/checkpoint_fuzz.rc ) & other=$!
graph_rc=0
wait "$graph" || graph_rc=$?
wait "$other" || true
store_rc=$(cat build-fuzz/store_fuzz.rc) checkpoint_rc=$(cat build-fuzz/checkpoint_fuzz.rc)
echo "-- the graph-file reader (exit $graph_rc)"
tail -n "$((graph_rc ? 80 : 15))" build-fuzz/graph_fuzz.log
echo "-- the TCP store (exit $store_rc)"
tail -n "$((store_rc ? 80 : 15))" build-fuzz/store_fuzz.log
echo "-- the checkpoint readers (exit $checkpoint_rc)"
tail -n "$((checkpoint_rc ? 80 : 15))" build-fuzz/checkpoint_fuzz.log
exit "$((graph_rc || store_rc || checkpoint_rc))"
