#!/usr/bin/env bash
# Runs every Rust benchmark of issue 17 in one go, on a release build, and
# keeps their output with the date and the machine's load beside it:
#   nexus-bench, nexus-bench-tools, nexus-bench-http, nexus-bench-reliability.
# Not part of CI (figures from a shared CI machine say little); run it on a
# quiet machine and copy the figures into BENCHMARKS.md with the date and
# the load printed at the top of the output.
#
#   bench/all.sh [OUT_DIR]      (default: target/bench-YYYY-MM-DDTHHMM)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-$(date -u +%Y-%m-%dT%H%M)}
mkdir -p "$out"

echo "building release binaries..." >&2
cargo build --release --workspace --quiet

run() {
    local name=$1
    shift
    {
        echo "# $name $*"
        echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, $(git rev-parse --short HEAD)"
        "target/release/$name" "$@"
        echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    } 2>&1 | tee "$out/$name.txt"
}

run nexus-bench
run nexus-bench-tools
run nexus-bench-http
run nexus-bench-reliability
echo "figures kept in $out" >&2
