#!/usr/bin/env bash
# Installs the build tree into a temporary prefix, builds the outside project against it
# with find_package(tessel), and runs it. Removes what it made.
#   check.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$src/tests/install/project" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$tmp/build" -j"$(nproc)" >/dev/null
"$tmp/build/outside"
