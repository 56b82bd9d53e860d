#!/usr/bin/env bash
# `make sanitize-c`: the C examples and the error-path test under AddressSanitizer (with its
# leak checker), linked against a libtidepool.so built with AddressSanitizer too, so that a
# bad read or write on either side of the C ABI is reported. The remote example runs against
# the release daemon. Uses the Swift toolchain's clang, whose ASan runtime the library uses.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
swift=${SWIFT:-swift}
toolchain=$(dirname "$(command -v "$swift")")
clang=$toolchain/clang
scratch=$root/.build-asan-lib
build=$root/bindings/c/build-asan
mkdir -p "$build"
"$swift" build --package-path "$root" --scratch-path "$scratch" -c debug -Xswiftc -sanitize=address --product tidepool
library_dir=$(dirname "$(find "$scratch" -name libtidepool.so -path "*debug*" | head -n 1)")
# Programs linked against it record its SONAME.
ln -sf libtidepool.so "$library_dir/libtidepool.so.0"
runtime_dir=$(dirname "$("$clang" -print-file-name=libclang_rt.asan-x86_64.so)")
flags=(-std=c99 -Wall -Wextra -Werror -g -O1 -fsanitize=address -shared-libasan -fno-omit-frame-pointer -I"$root/include")
rpath=(-Wl,-rpath,"$library_dir" -Wl,-rpath,"$runtime_dir")
"$clang" "${flags[@]}" -o "$build/dlopen_example" "$root/bindings/c/dlopen_example.c" -ldl -lm "${rpath[@]}"
for program in link_example errors_test remote_example; do
    "$clang" "${flags[@]}" -o "$build/$program" "$root/bindings/c/$program.c" -L"$library_dir" -ltidepool -lpthread -lm "${rpath[@]}"
done
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=1 SWIFT_BACKTRACE=enable=no
# The library's static Swift runtime keeps caches for the life of the process (metadata,
# conformances): allocations reachable at exit, not leaks. LeakSanitizer reports only the
# unreachable ones; any report fails.
"$build/dlopen_example" "$library_dir/libtidepool.so"
"$build/link_example"
"$build/errors_test"
source "$root/bindings/c/daemon.sh"
start_daemon "$root"
"$build/remote_example" "$endpoint"
stop_daemon
echo "sanitize-c: the C examples and error paths are clean under AddressSanitizer"
