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

.PHONY: build c-programs deps system-deps venv test test-swift test-c test-python test-fuzz run bench clean \
	fuzz fuzz-build sanitize sanitize-swift sanitize-c soak

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

# The kernels vectorise twice as wide with AVX2: use it when this machine has it (the
# library is built where it runs). SWIFT_CPU= (empty) builds for baseline x86-64.
SWIFT_CPU ?= $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo && grep -qw f16c /proc/cpuinfo && grep -qw bmi2 /proc/cpuinfo && echo haswell)
SWIFT_RELEASE_FLAGS := -c release --static-swift-stdlib $(if $(SWIFT_CPU),-Xswiftc -target-cpu -Xswiftc $(SWIFT_CPU))

# The Swift runtime is linked statically so libtidepool.so loads into plain C and Python
# processes with no Swift toolchain on the library path.
build: system-deps
	$(SWIFT) build $(SWIFT_RELEASE_FLAGS)

## Tests --------------------------------------------------------------------------

test: test-swift test-c test-python test-fuzz

test-swift: system-deps
	$(SWIFT) test

C_PROGRAMS := $(C_BUILD)/dlopen_example $(C_BUILD)/link_example $(C_BUILD)/errors_test $(C_BUILD)/remote_example \
	$(C_BUILD)/readme_example
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

# Plain PYTHONPATH, as a user without `pip install -e` would run it; the library is found
# in the repository's .build/release.
test-python: build venv
	PYTHONPATH=bindings/python $(VENV)/bin/python -m pytest -q bindings/python/tests

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
bench: build $(BENCH_BUILD)/daemon_bench $(BENCH_BUILD)/engine_bench $(BENCH_VENV)/.installed
	@echo "Tidepool engine benchmark, $$(date -u +%Y-%m-%d), $$(nproc) CPUs, $$(uname -m), SWIFT_CPU=$(SWIFT_CPU)"
	CASE="$(CASE)" $(BENCH_VENV)/bin/python benchmarks/engine_bench.py
	@if [ -z "$(CASE)" ]; then benchmarks/run_daemon_bench.sh; fi

clean:
	rm -rf .build .build-tsan .build-asan fuzz/.build fuzz/.work $(C_BUILD) $(BENCH_BUILD)
