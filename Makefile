# qemu-postcopy: a patch series against Debian 12's QEMU 7.2.
#
#   make check   set up the host, fetch and verify the base, apply the
#                series, build, and run every test (the CI entry point)
#   make tree    (re)generate build/qemu: the base plus patches/series
#   make export  write build/qemu's commits back into patches/
#   make build   build the current build/qemu incrementally
#   make test    run the tests against the current build, without
#                regenerating the tree
#   make check-series  build every patch of the series in turn
#   make stable-fixes  the series' leading fixes for stock 7.2 as a quilt
#                series with DEP-3 headers (build/stable-fixes/), each
#                checked to apply to the base and build
#   make stable-fix-tests  each fix's test against the base with the
#                fixes before it (must fail) and with it (must pass)
#   make demo    set up what is missing, migrate a running Linux guest with
#                postcopy and print a summary (docs/testing.md)
#   make bench   the demo's migration with ours and with stock 7.2, N times
#                each; results in build/bench/ (docs/benchmarks.md)
#
# Variables: ONLY=<substring> limits the migration-test cases run,
# PAIRINGS=ours-ours,stock-ours,ours-stock picks the pairings,
# DEMO_ARGS='...' passes options to scripts/demo.py, BENCH_N=3 sets the
# bench's repetitions, BENCH_ARGS='...' passes options to scripts/bench.py.

SHELL := /bin/bash
TOP := $(CURDIR)
OBJ := $(TOP)/build/obj
PAIRINGS ?= ours-ours,stock-ours,ours-stock
ONLY ?=
DEMO_ARGS ?=
BENCH_N ?= 3
BENCH_ARGS ?=

.PHONY: all setup base tree export build checkpatch check-series stable-fixes stable-fix-tests guest test check demo bench clean

all: build

setup:
	@bash scripts/setup-host.sh

base: setup
	@bash scripts/fetch-base.sh

tree: base
	@bash scripts/make-tree.sh

export:
	@bash scripts/export.sh

build:
	@bash scripts/build.sh

checkpatch:
	@bash scripts/checkpatch.sh

# The demo's Linux guest, which the TCG dirty tracking test boots too
guest: setup
	@bash scripts/make-guest.sh

check-series:
	@bash scripts/check-series.sh

stable-fixes:
	@bash scripts/stable-fixes.sh

stable-fix-tests:
	@bash scripts/stable-fix-tests.sh

test:
	@python3 tests/run-migration-tests.py \
	    --ours $(OBJ)/qemu-system-x86_64 \
	    --test $(OBJ)/tests/qtest/migration-test \
	    --obj $(OBJ) --tree $(TOP)/build/qemu \
	    --pairings $(PAIRINGS) --only '$(ONLY)' \
	    --logdir $(TOP)/build/test-logs \
	    --json $(TOP)/build/test-results.json

check: tree
	@$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory checkpatch
	@$(MAKE) --no-print-directory guest
	@$(MAKE) --no-print-directory test

demo: setup
	@bash scripts/prepare-run.sh
	@python3 scripts/demo.py $(DEMO_ARGS)

# Debian's python3: the picture needs its python3-matplotlib.
bench: setup
	@bash scripts/setup-bench.sh
	@bash scripts/prepare-run.sh
	@/usr/bin/python3 scripts/bench.py --reps $(BENCH_N) $(BENCH_ARGS)

clean:
	rm -rf build/obj build/test-logs build/test-results.json
