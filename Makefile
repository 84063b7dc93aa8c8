# bpz — every workflow in one place. `make help` lists the targets.
# Needs only Python 3.10+ with pip and a Rust toolchain (cargo); Go for the Go reader's tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help demo test test-rust test-python test-go install vectors clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml Cargo.toml rust/bpz/Cargo.toml rust/bpz-python/Cargo.toml $(shell find rust -name '*.rs')
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP) ## build the extension and install bpz with its test dependencies into .venv

demo: $(STAMP) ## save and load a spiking-network state, printing what happens and how long it takes
	$(PY) examples/demo.py --out m.bpz

test: test-rust test-python test-go ## install everything needed and run every test

test-rust: ## the format crate's tests (unit, property, conformance vectors)
	cargo test -p bpz

test-python: $(STAMP) ## the Python API tests and the independent spec reader
	$(PY) -m pytest -q

test-go: ## the Go reader, written from spec/FORMAT.md alone
	@if [ -d spec/readers/go ]; then cd spec/readers/go && go test ./...; fi

vectors: ## regenerate spec/vectors from the reference writer
	rm -rf spec/vectors/*.bpz spec/vectors/*.json spec/vectors/invalid
	cargo run -q -p bpz --example gen_vectors -- spec/vectors

clean: ## remove build outputs
	cargo clean
	rm -rf $(VENV) m.bpz demo.bpz
