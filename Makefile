# Tidepool: `make run` installs what is missing, builds and starts the daemon;
# `make test` runs every suite (Swift, C, Python). Both work on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := build

SWIFT ?= swift
PYTHON ?= python3
CC ?= cc
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

BUILD_DIR := .build/release
LIB := $(BUILD_DIR)/libtidepool.so
VENV := .venv
VENV_STAMP := $(VENV)/.installed
C_BUILD := bindings/c/build
CFLAGS_STRICT := -std=c99 -Wall -Wextra -Werror -O2 -Iinclude

.PHONY: build c-programs deps system-deps venv test test-swift test-c test-python test-fuzz test-install run bench bench-grid bench-pyramid \
	clean fuzz fuzz-build sanitize sanitize-swift sanitize-c soak man install uninstall wheel test-wheel test-rust

## Dependencies ---------------------------------------------------------------

# libzmq (Debian's libzmq3-dev) for the daemon; installed only when pkg-config lacks it.
system-deps:
	@if ! pkg-config --exists libzmq 2>/dev/null; then \
		echo "installing libzmq3-dev"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libzmq3-dev pkg-config; \
	fi

$(VENV_STAMP): bindings/python/requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r bindings/python/requirements-test.txt
	touch $@

venv: $(VENV_STAMP)

deps: system-deps venv

## Build --------------------------------------------------------------------------

# One build for every x86-64: the kernels are compiled for baseline x86-64 and for AVX2
# (Sources/TidepoolKernels*) and chosen at run time; TIDEPOOL_CPU=baseline forces the first.

SWIFT_RELEASE_FLAGS := -c release --static-swift-stdlib

# The Swift runtime is linked statically so libtidepool.so loads into plain C and Python
# processes with no Swift toolchain on the library path.
build: system-deps
	$(SWIFT) build $(SWIFT_RELEASE_FLAGS)
	@# Programs linked here record the SONAME, libtidepool.so.0, and find it beside the library.
	@ln -sf libtidepool.so $(BUILD_DIR)/libtidepool.so.0

## Tests --------------------------------------------------------------------------

test: test-swift test-c test-python test-rust test-fuzz test-install test-wheel

test-swift: system-deps
	$(SWIFT) test

C_PROGRAMS := $(C_BUILD)/dlopen_example $(C_BUILD)/link_example $(C_BUILD)/errors_test $(C_BUILD)/remote_example \
	$(C_BUILD)/readme_example $(C_BUILD)/compat_v2_test
LINK_TIDEPOOL := -L$(BUILD_DIR) -ltidepool -Wl,-rpath,$(abspath $(BUILD_DIR))

$(C_BUILD)/dlopen_example: bindings/c/dlopen_example.c include/tidepool.h
	@mkdir -p $(C_BUILD)
	$(CC) $(CFLAGS_STRICT) -o $@ $< -ldl -lm

$(C_BUILD)/%: bindings/c/%.c include/tidepool.h $(LIB)
	@mkdir -p $(C_BUILD)
	$(CC) $(CFLAGS_STRICT) -o $@ $< $(LINK_TIDEPOOL) -lpthread -lm

# The README's C example, taken from the README itself so that the front page's program
# always compiles (strict C99) and runs.
$(C_BUILD)/readme_example.c: README.md
	@mkdir -p $(C_BUILD)
	awk '/^```c$$/ { inside = 1; next } /^```$$/ { if (inside) exit } inside' README.md > $@

$(C_BUILD)/readme_example: $(C_BUILD)/readme_example.c include/tidepool.h $(LIB)
	$(CC) $(CFLAGS_STRICT) -o $@ $< $(LINK_TIDEPOOL) -lpthread -lm

$(LIB): build

c-programs: build $(C_PROGRAMS)

test-c: c-programs
	bindings/c/run_tests.sh

# The Rust crate (bindings/rust, no dependencies) against the library and daemon just built.
test-rust: build
	CARGO_TARGET_DIR=$(CURDIR)/bindings/rust/target cargo test --offline --manifest-path bindings/rust/Cargo.toml

# Plain PYTHONPATH, as a user without `pip install -e` would run it; the library is found
# in the repository's .build/release.
test-python: build venv c-programs
	PYTHONPATH=bindings/python $(VENV)/bin/python -m pytest -q bindings/python/tests
	@# The kernels every x86-64 runs, forced where the CPU has better ones, so they cannot rot:
	@# MLX parity, strided views, thread counts, gradients.
	TIDEPOOL_CPU=baseline PYTHONPATH=bindings/python $(VENV)/bin/python -m pytest -q \
	    bindings/python/tests/test_mlx_parity.py bindings/python/tests/test_strided.py \
	    bindings/python/tests/test_threads.py bindings/python/tests/test_api.py bindings/python/tests/test_gradients.py

# make install into a temporary prefix (and a DESTDIR staging), a C program built with
# pkg-config against it, the installed daemon, then make uninstall.
test-install: build
	bindings/c/run_install_test.sh

## Fuzzing ------------------------------------------------------------------------

# libFuzzer targets (fuzz/Package.swift) over the daemon's request handling and the C ABI,
# built with coverage and AddressSanitizer. One -sanitize=fuzzer,address flag: given as two
# flags, swiftc keeps only the last, and the library would lose its coverage. --sanitize=fuzzer
# also tells SwiftPM that libFuzzer provides main.
FUZZ_TARGETS := tidepool-fuzz-daemon tidepool-fuzz-cabi
FUZZ_CONFIG ?= debug
FUZZ_BUILD_FLAGS := --package-path fuzz --scratch-path fuzz/.build -c $(FUZZ_CONFIG) --sanitize=fuzzer \
	-Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address -Xswiftc -use-ld=lld
FUZZ_RUNS ?= 1000000
HOSTILE_MESSAGES ?= 100000
# Seconds per libFuzzer target in `make test`: every submission is fuzzed a little.
TEST_FUZZ_SECONDS ?= 30

fuzz-build: system-deps
	$(SWIFT) build $(FUZZ_BUILD_FLAGS)

# The long run: FUZZ_RUNS inputs per libFuzzer target (release build, for speed), then
# HOSTILE_MESSAGES through the process-level hostile client against a real daemon.
# The libFuzzer targets run side by side, one per core.
fuzz: build venv
	$(MAKE) fuzz-build FUZZ_CONFIG=release
	@pids=""; for target in $(FUZZ_TARGETS); do FUZZ_CONFIG=release fuzz/run.sh $$target $(FUZZ_RUNS) & pids="$$pids $$!"; done; \
		status=0; for pid in $$pids; do wait $$pid || status=1; done; exit $$status
	PYTHONPATH=bindings/python:bindings/python/tests $(VENV)/bin/python bindings/python/tests/hostile.py --spawn \
		--messages $(HOSTILE_MESSAGES)

# The short run of `make test`: the regression inputs, then TEST_FUZZ_SECONDS per target.
test-fuzz: fuzz-build
	@pids=""; for target in $(FUZZ_TARGETS); do fuzz/run.sh $$target 0 $(TEST_FUZZ_SECONDS) & pids="$$pids $$!"; done; \
		status=0; for pid in $$pids; do wait $$pid || status=1; done; exit $$status

## Sanitizers -----------------------------------------------------------------------

# The Swift suites under ThreadSanitizer and AddressSanitizer (each in its own build
# directory), and the C examples under AddressSanitizer against an AddressSanitizer build of
# libtidepool.so.
sanitize: sanitize-swift sanitize-c

sanitize-swift: system-deps
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" $(SWIFT) test --scratch-path .build-tsan --sanitize=thread
	ASAN_OPTIONS="detect_leaks=1 halt_on_error=1" LSAN_OPTIONS="suppressions=$(CURDIR)/lsan.supp" \
		$(SWIFT) test --scratch-path .build-asan --sanitize=address

sanitize-c: system-deps
	bindings/c/run_sanitized.sh

## Soak -------------------------------------------------------------------------------

# 8 client processes with mixed shared-memory and inline jobs against one daemon, killed
# and restarted in the middle; every result checked. SOAK_SECONDS long.
SOAK_SECONDS ?= 120
soak: build venv
	PYTHONPATH=bindings/python:bindings/python/tests $(VENV)/bin/python bindings/python/tests/soak.py \
		--seconds $(SOAK_SECONDS)

## Install --------------------------------------------------------------------------

# One version, the header's (TP_VERSION_MAJOR.MINOR.PATCH): the library's file name, the
# pkg-config file and (through the header) the library, the daemon and the Python package.
VERSION := $(shell sed -n 's/^\#define TP_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$$/\2/p' include/tidepool.h | paste -sd.)
SOVERSION := $(word 1,$(subst ., ,$(VERSION)))
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
SYSTEMDSYSTEMUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSTEMDUSERUNITDIR ?= $(PREFIX)/lib/systemd/user
MAN_BUILD := .build/man
# Manual dates follow the last commit, so a rebuild of the same commit gives the same page.
MAN_DATE := $(shell git log -1 --format=%cs 2>/dev/null || date -u +%F)

# tidepoold(1), generated from the daemon's argument parser (swift-argument-parser's tool).
man: build
	$(SWIFT) build --product generate-manual
	@mkdir -p $(MAN_BUILD)
	.build/debug/generate-manual $(BUILD_DIR)/tidepoold --date $(MAN_DATE) --output-directory $(MAN_BUILD)

INSTALLED_FILES := $(BINDIR)/tidepoold $(BINDIR)/.debug/tidepoold.debug \
	$(LIBDIR)/libtidepool.so.$(VERSION) $(LIBDIR)/libtidepool.so.$(VERSION).debug \
	$(LIBDIR)/libtidepool.so.$(SOVERSION) $(LIBDIR)/libtidepool.so $(LIBDIR)/pkgconfig/tidepool.pc \
	$(INCLUDEDIR)/tidepool.h $(MANDIR)/man1/tidepoold.1 \
	$(SYSTEMDSYSTEMUNITDIR)/tidepoold.service $(SYSTEMDUSERUNITDIR)/tidepoold.service

# Binaries are stripped; their debug info goes beside them (found by gdb through
# .gnu_debuglink: next to the library, in bin/.debug for the daemon).
install: build man
	install -d $(DESTDIR)$(BINDIR)/.debug $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(MANDIR)/man1 \
		$(DESTDIR)$(SYSTEMDSYSTEMUNITDIR) $(DESTDIR)$(SYSTEMDUSERUNITDIR)
	objcopy --only-keep-debug $(LIB) $(DESTDIR)$(LIBDIR)/libtidepool.so.$(VERSION).debug
	objcopy --strip-debug --strip-unneeded --add-gnu-debuglink=$(DESTDIR)$(LIBDIR)/libtidepool.so.$(VERSION).debug \
		$(LIB) $(DESTDIR)$(LIBDIR)/libtidepool.so.$(VERSION)
	chmod 644 $(DESTDIR)$(LIBDIR)/libtidepool.so.$(VERSION).debug
	chmod 755 $(DESTDIR)$(LIBDIR)/libtidepool.so.$(VERSION)
	ln -sf libtidepool.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libtidepool.so.$(SOVERSION)
	ln -sf libtidepool.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libtidepool.so
	objcopy --only-keep-debug $(BUILD_DIR)/tidepoold $(DESTDIR)$(BINDIR)/.debug/tidepoold.debug
	objcopy --strip-all --add-gnu-debuglink=$(DESTDIR)$(BINDIR)/.debug/tidepoold.debug \
		$(BUILD_DIR)/tidepoold $(DESTDIR)$(BINDIR)/tidepoold
	chmod 644 $(DESTDIR)$(BINDIR)/.debug/tidepoold.debug
	chmod 755 $(DESTDIR)$(BINDIR)/tidepoold
	install -m 644 include/tidepool.h $(DESTDIR)$(INCLUDEDIR)/tidepool.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
		packaging/tidepool.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/tidepool.pc
	install -m 644 $(MAN_BUILD)/tidepoold.1 $(DESTDIR)$(MANDIR)/man1/tidepoold.1
	sed 's|@BINDIR@|$(BINDIR)|g' packaging/tidepoold.service > $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/tidepoold.service
	sed 's|@BINDIR@|$(BINDIR)|g' packaging/tidepoold.user.service > $(DESTDIR)$(SYSTEMDUSERUNITDIR)/tidepoold.service
	@# The dynamic linker's cache, when installing for real (not staging) as root.
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig > /dev/null; then ldconfig; fi
	@echo "installed tidepool $(VERSION) under $(DESTDIR)$(PREFIX)"

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED_FILES))
	-rmdir $(DESTDIR)$(BINDIR)/.debug 2>/dev/null

## Python wheel ----------------------------------------------------------------------

# dist/tidepool-VERSION-py3-none-manylinux_X_Y_x86_64.whl: the package with libtidepool.so
# (stripped) inside, built from a staging copy so the checkout keeps no library in its package.
WHEEL_STAGE := .build/wheel
wheel: build venv
	rm -rf $(WHEEL_STAGE) && mkdir -p $(WHEEL_STAGE) dist
	cp -r bindings/python/pyproject.toml bindings/python/setup.py bindings/python/tidepool include/tidepool.h $(WHEEL_STAGE)/
	find $(WHEEL_STAGE) -name __pycache__ -prune -exec rm -rf {} +
	objcopy --strip-debug --strip-unneeded $(LIB) $(WHEEL_STAGE)/tidepool/libtidepool.so
	rm -f dist/tidepool-$(VERSION)-*.whl
	$(VENV)/bin/pip wheel -q --no-deps --no-build-isolation -w $(WHEEL_STAGE)/linux $(WHEEL_STAGE)
	@# auditwheel checks every symbol version the library needs and tags the wheel with the
	@# oldest manylinux it fits (glibc of the build machine); it grafts nothing, since the
	@# library needs only libc, libm, libstdc++ and libgcc_s.
	$(VENV)/bin/pip install -q -r bindings/python/requirements-wheel.txt
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/auditwheel repair -w dist $(WHEEL_STAGE)/linux/tidepool-$(VERSION)-*.whl
	@ls dist/tidepool-$(VERSION)-*.whl

# The wheel installed into a fresh venv and used from outside the checkout.
test-wheel: wheel
	bindings/python/run_wheel_test.sh dist/tidepool-$(VERSION)-py3-none-manylinux_*_x86_64.whl

## Run ----------------------------------------------------------------------------

# tidepoold in the foreground on the default endpoint (TIDEPOOL_ENDPOINT overrides it);
# extra options through TIDEPOOLD_ARGS, e.g. make run TIDEPOOLD_ARGS="--threads 2".
run: build
	$(BUILD_DIR)/tidepoold $(TIDEPOOLD_ARGS)

## Benchmarks -----------------------------------------------------------------------

BENCH_BUILD := benchmarks/build

BENCH_VENV := .venv-bench
# Peers measured beside the engine when they install: MLX and JAX by default; add torch
# with BENCH_PEERS="mlx[cpu] jax[cpu] torch" (PyPI's torch wheel is several GB).
BENCH_PEERS ?= mlx[cpu] jax[cpu]

$(BENCH_BUILD)/%: benchmarks/%.c benchmarks/bench_util.h include/tidepool.h $(LIB)
	@mkdir -p $(BENCH_BUILD)
	$(CC) $(CFLAGS_STRICT) -o $@ $< $(LINK_TIDEPOOL) -lpthread -lm

$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q numpy
	for peer in $(BENCH_PEERS); do $(BENCH_VENV)/bin/pip install -q "$$peer" || echo "bench: $$peer not installed, left out"; done
	touch $@

# The engine's cases are listed once, in benchmarks/cases.txt. CASE=text runs only the cases
# whose name contains text (e.g. make bench CASE="k5 s1 p2"), and skips the daemon's part.
CASE ?=
bench: build $(BENCH_BUILD)/daemon_bench $(BENCH_BUILD)/engine_bench $(BENCH_BUILD)/tiny_bench $(BENCH_VENV)/.installed
	@echo "Tidepool engine benchmark, $$(date -u +%Y-%m-%d), $$(nproc) CPUs, $$(uname -m)"
	CASE="$(CASE)" $(BENCH_VENV)/bin/python benchmarks/engine_bench.py
	CASE="$(CASE)" PYTHONPATH=bindings/python:benchmarks $(BENCH_VENV)/bin/python benchmarks/gradient_bench.py
	@if [ -z "$(CASE)" ]; then PYTHONPATH=bindings/python $(BENCH_VENV)/bin/python benchmarks/tiny_bench.py; fi
	@if [ -z "$(CASE)" ]; then benchmarks/run_daemon_bench.sh; fi

# The grid of cells (benchmarks/grid_bench.py): kernels 2-11, strides, channels 1-64 and every
# dtype for the six layers, each against its floor; GRID_ARGS="--peers" adds MLX, JAX and
# PyTorch (slow: minutes per 3-d cell for some), GRID_ARGS="--only k7" a subset.
GRID_ARGS ?=
bench-grid: build $(BENCH_VENV)/.installed
	PYTHONPATH=bindings/python:benchmarks $(BENCH_VENV)/bin/python benchmarks/grid_bench.py $(GRID_ARGS)

# Multiscale pyramids of a volume on disk larger than memory (benchmarks/pyramid_bench.py):
# tidepool.dask against dask.array.coarsen and skimage's downscale_local_mean, side by side.
# PYRAMID_ARGS="--shape 512 512 512" for a quick one.
PYRAMID_ARGS ?=
bench-pyramid: build $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/pip install -q "dask[array]" zarr scikit-image
	PYTHONPATH=bindings/python $(BENCH_VENV)/bin/python benchmarks/pyramid_bench.py $(PYRAMID_ARGS)

clean:
	rm -rf .build .build-tsan .build-asan fuzz/.build fuzz/.work $(C_BUILD) $(BENCH_BUILD) dist bindings/rust/target
