# ferroloop — every target sets itself up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp
SO := python/ferroloop/.build-stamp

.DEFAULT_GOAL := help

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(STAMP) ## create .venv with build and test dependencies

build: $(STAMP) ## release build of the extension, installed into .venv
	$(VPY) -m maturin develop --release -q

demo: build ## run the seed examples on asyncio and ferroloop side by side, then a speed comparison
	$(VPY) examples/demo.py

bench: build ## benchmarks: asyncio vs uvloop vs ferroloop (ratios of medians)
	$(VPY) bench/run.py

lint: $(STAMP) ## rustfmt, clippy -D warnings, ruff, mypy stubtest
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -q -- -D warnings
	$(VPY) -m ruff check python tests bench examples conformance
	$(VPY) -m ruff format --check python
	$(VPY) -m mypy.stubtest ferroloop._ferroloop --allowlist python/stubtest-allowlist.txt

test: build ## everything: lint, cargo test, pytest, seeds, fast conformance subset
	$(MAKE) lint
	cargo test --workspace -q
	$(VPY) -m pytest -q -p no:cacheprovider
	$(VPY) examples/demo.py --quick
	$(VPY) -m conformance.run --fast

conformance: build ## CPython's test_asyncio on ferroloop -> conformance/RESULTS.md
	$(VPY) -m conformance.run

clean: ## remove build products
	cargo clean
	rm -rf $(VENV)

.PHONY: help venv build demo bench lint test conformance clean
