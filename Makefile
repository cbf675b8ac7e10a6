# SignalDB developer entry points. `make help` lists them.
# `make test` and `make run` must work on a fresh machine: they install what they need.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.deps-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help venv build test test-rust test-python bench stress lint run clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "maturin>=1.5,<2" "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100" \
	    "pytest-benchmark>=4" "rocksdict>=0.3"
	touch $(STAMP)

venv: $(STAMP) ## create .venv with build and test dependencies

build: $(STAMP) ## build the Rust extension (release) into the venv
	cd $(CURDIR) && $(VENV)/bin/maturin develop --release -q

test-rust: ## cargo test and clippy (the WAL engine and bindings)
	cargo test --workspace --release
	cargo clippy --workspace --tests --release -q -- -D warnings

test-python: build ## pytest
	$(PY) -m pytest -q

test: build test-rust test-python ## everything CI runs: cargo test + pytest

bench: build ## benchmarks with baselines, one side-by-side table from one run
	$(PY) benches/run.py

stress: build ## long soak/stress runs (not part of CI)
	SIGNALDB_STRESS=1 $(PY) -m pytest -q -m stress tests

run: ## build and start the pipeline on local storage
	@echo "make run: the acceptor/writer pipeline is not built yet (issues 5 and 6); only the WAL exists." >&2
	@exit 1

clean: ## remove build outputs (keeps the venv)
	cargo clean
	rm -f python/signaldb/_native*.so
