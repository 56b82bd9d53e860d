#!/usr/bin/env bash
# Runs one libFuzzer target of fuzz/Package.swift: first every committed regression input
# (each a crash found once, now fixed), then RUNS new inputs (or SECONDS seconds) grown from
# the committed seed corpus. Prints libFuzzer's final stats; fails on any crash, sanitizer
# report or leak.
#   fuzz/run.sh TARGET [RUNS] [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${1:?target}
runs=${2:-1000000}
seconds=${3:-0}
binary=$(find "$here/.build" -path "*/${FUZZ_CONFIG:-debug}/$target" -type f -perm -u+x | head -n 1)
[ -x "$binary" ] || { echo "fuzz: $target is not built (make fuzz-build)" >&2; exit 1; }
work=$here/.work/$target
mkdir -p "$work/corpus" "$work/artifacts"
regressions=$here/regressions/$target
if [ -d "$regressions" ] && [ -n "$(ls -A "$regressions")" ]; then
    "$binary" -runs=0 "$regressions"/* > "$work/regressions.log" 2>&1 \
        || { cat "$work/regressions.log"; echo "fuzz: $target fails on a regression input" >&2; exit 1; }
    echo "$target: $(ls "$regressions" | wc -l) regression inputs pass"
fi
limit=(-runs="$runs")
[ "$seconds" -gt 0 ] && limit=(-max_total_time="$seconds")
# ASan's leak check runs at exit; every finding is an error.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
"$binary" "${limit[@]}" -max_len=4096 -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
    -dict="$here/$target.dict" "$work/corpus" "$here/corpus/$target" > "$work/run.log" 2>&1 \
    || { tail -n 60 "$work/run.log"; echo "fuzz: $target found a failure; the input is in $work/artifacts" >&2; exit 1; }
grep -E "^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb|new_units_added)" "$work/run.log" \
    | sed "s/^stat::/$target: /"
