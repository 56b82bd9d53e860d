#!/usr/bin/env bash
# Starts tidepoold on a private endpoint, runs daemon_bench against it, stops it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
private=$(mktemp -d /tmp/tidepool-bench.XXXXXX)
trap 'kill -TERM "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -rf "$private"' EXIT
endpoint="ipc://$private/tidepool.sock"
# The daemon prints one line once bound: read it through a FIFO (kept open on fd 3).
mkfifo "$private/ready"
"$root/.build/release/tidepoold" --endpoint "$endpoint" --log-level warning > "$private/ready" 2> "$private/log" &
daemon=$!
exec 3< "$private/ready"
read -r line <&3
[[ "$line" == *"listening on"* ]] || { echo "tidepoold did not start: $line"; cat "$private/log"; exit 1; }
echo "tidepoold daemon benchmark, $(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -m)"
"$root/benchmarks/build/daemon_bench" "$endpoint"
