# Sluice: the two commands a new machine needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
E2E_DIR := tests/e2e

.PHONY: run test lint unit e2e bench bench-build callgrind callgrind-baseline bench-files fuzz-build fuzz clean

## Serve the demo and every endpoint on http://localhost:4000 with embedded defaults.
run:
	$(CARGO) run --release --bin sluice -- serve

## Everything CI checks: formatting, lints, unit + integration tests, the
## end-to-end suite with the official phoenix client, that benches and fuzz
## targets compile, the hot paths' instruction counts (callgrind), and a
## short side-by-side run against every peer (complete, error-free output).
test: lint unit bench-build callgrind fuzz-build e2e bench-compare-smoke

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

bench-build:
	$(CARGO) bench --workspace --locked --no-run

## Instruction counts (valgrind callgrind) of the echo, broadcast and frame-read
## hot paths against benches/callgrind/baseline.txt; fails on a >5% regression
## (CALLGRIND_TOLERANCE=percent).
callgrind:
	CARGO=$(CARGO) benches/callgrind/guard.sh

## Store the current instruction counts as the callgrind baseline.
callgrind-baseline:
	UPDATE=1 CARGO=$(CARGO) benches/callgrind/guard.sh

## Compile the fuzz targets on stable (no sanitizer instrumentation); `make fuzz` runs them.
fuzz-build:
	$(CARGO) build --manifest-path tests/fuzz/Cargo.toml --bins

## Run every fuzz target for FUZZ_SECONDS each (needs `cargo install cargo-fuzz`).
FUZZ_SECONDS ?= 60
fuzz:
	for t in decode_v1 decode_v2 decode_binary decode_etf decode_ws_frames token_verify; do \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run $$t --fuzz-dir tests/fuzz -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096 || exit 1; \
	done

e2e:
	$(CARGO) build --locked --bin sluice
	cd $(E2E_DIR) && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund; } && SLUICE_BIN=$(CURDIR)/target/debug/sluice npm test

bench:
	$(CARGO) bench --bench protocol --bench fanout --bench chunks

## Loopback file throughput and server CPU per GB, Sluice vs nginx (sendfile); installs nginx if missing.
bench-files:
	loadtest/files-bench.sh

.PHONY: bench-compare bench-compare-smoke

## Side by side on this machine, same run, interleaved, 3 rounds (~20 min): Sluice
## against raw fastwebsockets, Bun, Node ws, nginx and iperf3 (installed by
## loadtest/peers/install.sh); the report goes into docs/BENCHMARKS.md.
bench-compare:
	bash loadtest/peers/install.sh
	$(CARGO) build --release --locked -p sluice -p sluice-load --bins
	taskset -c 1 target/release/sluice-compare --write-docs docs/BENCHMARKS.md

## The same, small and short (1 round, ~1 min, no docs written); fails if a peer
## is missing, a run fails or any error or timeout is counted.
bench-compare-smoke:
	bash loadtest/peers/install.sh
	$(CARGO) build --release --locked -p sluice -p sluice-load --bins
	taskset -c 1 target/release/sluice-compare --quick --require-all --json-out target/compare/smoke.json

clean:
	$(CARGO) clean
	rm -rf $(E2E_DIR)/node_modules
