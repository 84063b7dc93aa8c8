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

test: test-rust test-python test-go test-c fuzz-smoke bench-smoke ## install everything needed and run every test

test-rust: ## the format crate's tests (unit, property, conformance vectors)
	cargo test -p bpz
	cargo test -p bpz-capi

test-python: $(STAMP) ## the Python API tests and the independent spec reader
	$(PY) -m pytest -q

test-go: ## the Go reader, written from spec/FORMAT.md alone
	@if [ -d spec/readers/go ]; then cd spec/readers/go && go test ./...; fi

# The C ABI (rust/bpz-capi, include/bpz.h), used from C and C++ with only cc, c++ and cargo.
CAPI_TARGET := $(or $(CARGO_TARGET_DIR),target)
CAPI_LIB := $(CAPI_TARGET)/release
CAPI_OUT := $(CAPI_TARGET)/c-tests
CAPI_SRC := rust/bpz-capi/tests/c
CAPI_CFLAGS := -std=c99 -pedantic -O2 -Wall -Wextra -Werror -Iinclude
CAPI_CXXFLAGS := -std=c++17 -pedantic -O2 -Wall -Wextra -Werror -Iinclude
CAPI_LINK := -L$(CAPI_LIB) -lbpz -Wl,-rpath,$(abspath $(CAPI_LIB))

.PHONY: test-c
test-c: ## libbpz from C and C++: the conformance vectors, bpz_dump, the C++ example
	cargo build -p bpz-capi --release
	@mkdir -p $(CAPI_OUT)
	cargo run -q --release -p bpz-capi --example c_expectations -- spec/vectors $(CAPI_OUT)/expectations.txt
	$(CC) $(CAPI_CFLAGS) -o $(CAPI_OUT)/conformance $(CAPI_SRC)/conformance.c $(CAPI_SRC)/sha256.c $(CAPI_LINK)
	$(CC) $(CAPI_CFLAGS) -o $(CAPI_OUT)/bpz_dump $(CAPI_SRC)/bpz_dump.c $(CAPI_SRC)/sha256.c $(CAPI_LINK)
	$(CXX) $(CAPI_CXXFLAGS) -o $(CAPI_OUT)/example $(CAPI_SRC)/example.cpp $(CAPI_LINK)
	$(CAPI_OUT)/conformance $(CAPI_OUT)/expectations.txt spec/vectors
	$(CAPI_OUT)/bpz_dump spec/vectors/nested_tree.bpz
	$(CAPI_OUT)/example spec/vectors/nested_tree.bpz 'net/E~1I/V' net/l1/W

vectors: ## regenerate spec/vectors from the reference writer
	rm -rf spec/vectors/*.bpz spec/vectors/*.json spec/vectors/invalid
	cargo run -q -p bpz --example gen_vectors -- spec/vectors

clean: ## remove build outputs
	cargo clean
	rm -rf $(VENV) m.bpz demo.bpz

.PHONY: bench-smoke
bench-smoke: $(STAMP) ## a tiny run of the benchmark harness (light tools only), so it never rots
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PY) bench/run.py --scale 0.002 --repeat 1 --strict --verify \
	  --tools bpz,safetensors,npz,npz-deflate,npy-dir,npy-dir/mmap,h5py,h5py-gzip1,h5py-lzf,msgpack,limits,codec:zstd-mt,codec:zstd-chunks \
	  --workdir "$$tmp/work" --out "$$tmp/RESULTS.md" --plot "$$tmp/throughput.png" --json "$$tmp/results.json"

.PHONY: fuzz-smoke
fuzz-smoke: $(STAMP) ## every fuzz target (Rust reader, Python entry points) for 30 s each
	tests/fuzz/run.sh 30

.PHONY: test-reliability
test-reliability: $(STAMP) ## crash safety, corruption, hostile files, concurrency, then every fuzz target for 60 s
	$(PY) -m pytest -q tests/reliability tests/attacks
	tests/fuzz/run.sh 60
