#!/usr/bin/env bash
# `make test-install`: `make install` into a temporary prefix, then what a user of the installed
# files relies on: the library's SONAME and links, stripped binaries with their debug info
# beside them, pkg-config, a C program built with `pkg-config --cflags --libs tidepool` and run
# against the installed library, the installed daemon, the man page and the systemd units; the
# same under a DESTDIR staging; then `make uninstall` leaves nothing.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
passed=0 failed=0
check() {
    local name=$1; shift
    if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}
version=$(sed -n 's/^#define TP_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' "$root/include/tidepool.h" | paste -sd.)
major=${version%%.*}

make -C "$root" -s install PREFIX="$prefix" > "$work/install.log" 2>&1 || { cat "$work/install.log"; exit 1; }
lib=$prefix/lib
check "library installed as libtidepool.so.$version" test -f "$lib/libtidepool.so.$version"
check "libtidepool.so.$major -> libtidepool.so.$version" test "$(readlink "$lib/libtidepool.so.$major")" = "libtidepool.so.$version"
check "libtidepool.so -> libtidepool.so.$major" test "$(readlink "$lib/libtidepool.so")" = "libtidepool.so.$major"
check "SONAME is libtidepool.so.$major" bash -c "readelf -d '$lib/libtidepool.so.$version' | grep -q 'Library soname: \[libtidepool.so.$major\]'"
check "version node is not a build path" bash -c "! readelf -V '$lib/libtidepool.so.$version' | grep -q '\.build'"
check "library stripped, debug info beside it" bash -c "! readelf -S '$lib/libtidepool.so.$version' | grep -q debug_info \
    && readelf -S '$lib/libtidepool.so.$version.debug' | grep -q debug_info \
    && readelf -p .gnu_debuglink '$lib/libtidepool.so.$version' | grep -q 'libtidepool.so.$version.debug'"
check "daemon stripped, debug info in bin/.debug" bash -c "! readelf -S '$prefix/bin/tidepoold' | grep -q debug_info \
    && readelf -S '$prefix/bin/.debug/tidepoold.debug' 2>/dev/null | grep -q debug_info"
export PKG_CONFIG_PATH=$lib/pkgconfig
check "pkg-config version is the header's ($version)" test "$(pkg-config --modversion tidepool)" = "$version"

# The README's C program, built the way a user of the installed library would.
awk '/^```c$/ { inside = 1; next } /^```$/ { if (inside) exit } inside' "$root/README.md" > "$work/first.c"
check "C program builds with pkg-config" bash -c "${CC:-cc} -std=c99 -Wall -Wextra -Werror \$(pkg-config --cflags tidepool) \
    '$work/first.c' -o '$work/first' \$(pkg-config --libs tidepool) -Wl,-rpath,'$lib'"
check "C program runs on the installed library" bash -c "'$work/first' | grep -qx 'output (8, 8, 16, 16, 4), y\[0\] = 2.625' \
    && ldd '$work/first' | grep -q '$lib/libtidepool.so.$major'"
check "installed daemon --help" bash -c "'$prefix/bin/tidepoold' --help | grep -q -- '--endpoint'"
check "installed daemon --version is $version" test "$("$prefix/bin/tidepoold" --version)" = "$version"
check "man page tidepoold(1)" bash -c "grep -q '^\.Dt TIDEPOOLD 1' '$prefix/share/man/man1/tidepoold.1' \
    && MANWIDTH=80 man -l '$prefix/share/man/man1/tidepoold.1' 2>/dev/null | grep -q -- '--max-job-bytes'"
for unit in system user; do
    file=$prefix/lib/systemd/$unit/tidepoold.service
    check "$unit unit runs the installed daemon" grep -q "^ExecStart=$prefix/bin/tidepoold" "$file"
    if command -v systemd-analyze > /dev/null; then
        check "$unit unit passes systemd-analyze verify" bash -c "systemd-analyze verify --man=no '$file' 2>&1 \
            | grep -v -e 'Failed to connect' -e 'Cannot add dependency' | ( ! grep . >&2 )"
    fi
done

# A DESTDIR staging: every path under the stage, the pkg-config file naming the final prefix.
make -C "$root" -s install DESTDIR="$work/stage" PREFIX=/usr > "$work/stage.log" 2>&1 || { cat "$work/stage.log"; exit 1; }
check "DESTDIR stages under it" test -f "$work/stage/usr/lib/libtidepool.so.$version" -a -f "$work/stage/usr/bin/tidepoold"
check "staged pkg-config names the final prefix" grep -qx 'libdir=/usr/lib' "$work/stage/usr/lib/pkgconfig/tidepool.pc"

make -C "$root" -s uninstall PREFIX="$prefix" > /dev/null 2>&1
check "uninstall leaves no file" test -z "$(find "$prefix" ! -type d)"
make -C "$root" -s uninstall DESTDIR="$work/stage" PREFIX=/usr > /dev/null 2>&1
check "uninstall from DESTDIR leaves no file" test -z "$(find "$work/stage" ! -type d)"
echo "install suite: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
