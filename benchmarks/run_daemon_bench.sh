#!/usr/bin/env bash
# Starts tidepoold on a private endpoint, runs daemon_bench against it, stops it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bindings/c/daemon.sh"
start_daemon "$root"
trap stop_daemon EXIT
echo "tidepoold daemon benchmark, $(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -m)"
"$root/benchmarks/build/daemon_bench" "$endpoint"
