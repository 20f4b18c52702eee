#!/usr/bin/env bash
# The whole test suite: install, build, run every test (slow ones included); then the same
# suite, minus the slow end-to-end runs and the heavy planner searches, built with
# AddressSanitizer + UBSan; then short fuzzing runs of the graph-file reader and the TCP store.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

scripts/setup.sh build
(cd build && ctest --output-on-failure -j"$jobs" --timeout 900)

echo "== sanitizers (ASan + UBSan) =="
# Asserts on (Debug) at -O1, as the sanitizers' documentation advises: the planner's searches
# run several times faster than at -O0 and every check stays. Line tables only (-g1): the
# sanitizers' reports keep file and line, the build is quicker. The "heavy" planner searches
# (minutes each under the sanitizers) ran above.
scripts/setup.sh build-asan -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-g1 -O1" -DTESSEL_SANITIZE=ON -DTESSEL_BUILD_BENCH=OFF
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure -j"$jobs" -LE "slow|heavy" --timeout 900)

echo "== fuzzing the graph-file reader (45 s) and the TCP store's protocol (30 s) =="
CC=clang CXX=clang++ scripts/setup.sh build-fuzz -DTESSEL_FUZZ=ON -DTESSEL_BUILD_TESTS=OFF -DTESSEL_BUILD_BENCH=OFF -DTESSEL_NATIVE=OFF
mkdir -p build-fuzz/corpus build-fuzz/store_corpus
# Side by side, one core each; each one's summary printed after both end, failing if either did.
build-fuzz/tests/graph_fuzz -max_total_time=45 -rss_limit_mb=2048 -print_final_stats=1 \
  build-fuzz/corpus tests/data/graph_corpus > build-fuzz/graph_fuzz.log 2>&1 & graph=$!
build-fuzz/tests/store_fuzz -max_total_time=30 -rss_limit_mb=2048 -print_final_stats=1 \
  build-fuzz/store_corpus tests/data/store_corpus > build-fuzz/store_fuzz.log 2>&1 & store=$!
graph_rc=0 store_rc=0
wait "$graph" || graph_rc=$?
wait "$store" || store_rc=$?
echo "-- the graph-file reader (exit $graph_rc)"
tail -n "$((graph_rc ? 80 : 15))" build-fuzz/graph_fuzz.log
echo "-- the TCP store (exit $store_rc)"
tail -n "$((store_rc ? 80 : 15))" build-fuzz/store_fuzz.log
exit "$((graph_rc || store_rc))"
