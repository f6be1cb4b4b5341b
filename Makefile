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

bench-io: build bench-io-deps ## I/O benchmarks: echo servers + uvicorn per loop, Rust floor (bench/io/results.md)
	$(VPY) bench/io/run.py

# wrk (Debian package) drives the uvicorn cell; apt only when it is missing.
# The load client and floor server are this workspace's bench/io/echo-client.
bench-io-deps: ## wrk (apt, if missing) and the compiled echo client / floor server
	@if ! command -v wrk >/dev/null; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "bench-io-deps: wrk missing and not root: install wrk; the HTTP cell will skip"; \
		else \
			apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; \
		fi; \
	fi
	$(MAKE) test-deps
	cargo build --release -q -p echo-client

lint: $(STAMP) test-deps ## rustfmt, clippy -D warnings, ruff, mypy stubtest (+ libssl-dev for the bench crate)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -q -- -D warnings
	$(VPY) -m ruff check python tests bench examples conformance
	$(VPY) -m ruff format --check python
	$(VPY) -m mypy.stubtest ferroloop._ferroloop --allowlist python/stubtest-allowlist.txt

test: build ## everything: lint, cargo test, pytest, seeds, fast conformance subset
	$(MAKE) test-deps
	$(MAKE) lint
	cargo test --workspace -q
	$(VPY) -m pytest -q -p no:cacheprovider --durations=15
	$(VPY) examples/demo.py --quick
	$(VPY) -m conformance.run --fast

# Debian packages of the servers the ecosystem tests run (tests/ecosystem),
# and OpenSSL's headers for the bench crate's TLS floor (echo-floor --tls,
# compiled by cargo clippy/test): installed only when something is missing,
# so a no-op (no apt) once present.
test-deps: ## Debian packages: redis-server, postgresql, openssl, libssl-dev, if missing
	@if command -v redis-server >/dev/null && command -v openssl >/dev/null && \
	    pkg-config --exists openssl 2>/dev/null && \
	    { command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1; then \
		exit 0; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "test-deps: redis-server, PostgreSQL, openssl or libssl-dev missing and not root:" \
		     "install redis-server postgresql openssl libssl-dev pkg-config"; \
	else \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			redis-server postgresql openssl libssl-dev pkg-config; \
	fi

conformance: build ## CPython's test_asyncio and uvloop's tests on ferroloop -> conformance/RESULTS.md, UVLOOP_RESULTS.md
	$(VPY) -m conformance.run
	$(VPY) -m conformance.uvloop_suite

clean: ## remove build products
	cargo clean
	rm -rf $(VENV)

.PHONY: help venv build demo bench bench-io bench-io-deps lint test test-deps conformance clean
