#!/usr/bin/env bash
# Runs the C suite: the header compiles as strict C99 and C++, the examples run and check
# their outputs, the error-path test passes, and the exported symbols match the header.
# Prints "N passed, M failed" and fails if any failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$root/bindings/c/build
library=$root/.build/release/libtidepool.so
passed=0 failed=0

run() {
    local name=$1; shift
    if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}

run "header is strict C99" ${CC:-cc} -std=c99 -pedantic -Wall -Wextra -Werror -fsyntax-only -x c "$root/include/tidepool.h"
run "header is strict C++" ${CXX:-c++} -std=c++11 -pedantic -Wall -Wextra -Werror -fsyntax-only -x c++ "$root/include/tidepool.h"
run "dlopen example" "$build/dlopen_example" "$library"
run "linked example" "$build/link_example"
run "error paths" "$build/errors_test"
run "a caller built against 0.1.0's header (API version 2)" "$build/compat_v2_test"
run "error paths, baseline kernels" env TIDEPOOL_CPU=baseline "$build/errors_test"
run "linked example, baseline kernels" env TIDEPOOL_CPU=baseline "$build/link_example"
run "AVX only in kernels chosen at run time (library)" "$root/bindings/c/check_isa.sh" "$library"
run "AVX only in kernels chosen at run time (daemon)" "$root/bindings/c/check_isa.sh" "$root/.build/release/tidepoold"
run "the README's C example" bash -c "'$build/readme_example' | grep -qx 'output (8, 8, 16, 16, 4), y\[0\] = 2.625'"
run "in-process use needs no libzmq (not NEEDED)" bash -c "! readelf -d '$library' | grep -q 'NEEDED.*libzmq'"
run "exports match the header" "$root/bindings/c/check_symbols.sh" "$root/include/tidepool.h" "$library"

# The remote example against a real daemon on a private endpoint, stopped with SIGTERM.
source "$root/bindings/c/daemon.sh"
start_daemon "$root"
run "remote example through tidepoold" "$build/remote_example" "$endpoint"
run "tidepoold exits 0 on SIGTERM" stop_daemon
echo "C suite: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
