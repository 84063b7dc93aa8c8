# bpz — every workflow in one place. `make help` lists the targets.
# Needs only Python 3.10+ with pip and a Rust toolchain (cargo); Go for the Go reader's tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed
# Each suite appends its totals here (.ci/suite); `make test` prints them all at the end.
SUITE := .ci/suite

.PHONY: help demo test install vectors clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# bpz and its runtime dependencies only (numpy, ml_dtypes): all the demo needs.
$(RUNTIME_STAMP): $(PY) pyproject.toml Cargo.toml rust/bpz/Cargo.toml rust/bpz-python/Cargo.toml $(shell find rust -name '*.rs')
	$(PY) -m pip install -q -e .
	touch $(RUNTIME_STAMP)

# The test dependencies on top (jax, brainpy, h5py, scipy, ...: about 1 GB).
$(STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP) ## build the extension and install bpz with its test dependencies into .venv

demo: $(RUNTIME_STAMP) ## save and load a spiking-network state, printing what happens and how long it takes
	$(PY) examples/demo.py --out m.bpz

TEST_SUITES := lint test-rust test-python test-brainpy29 test-jaxmin test-go test-c fuzz-smoke bench-smoke

# -k: one failing suite doesn't hide the others; the summary is printed whatever happened.
test: ## install everything needed, run every suite, end with every suite's totals
	@$(SUITE) --reset
	@$(MAKE) --no-print-directory -k $(TEST_SUITES); made=$$?; \
	$(SUITE) --report $$made

.PHONY: $(TEST_SUITES)
# One check per tool (ruff check only: ruff format is not adopted). mypy's settings: pyproject [tool.mypy].
# Every check runs (and is counted) even when an earlier one fails.
lint: $(STAMP) ## static checks: cargo fmt --check, clippy -D warnings, ruff, mypy, stubtest of _bpz.pyi
	@failed=0; \
	$(SUITE) lint-rustfmt check -- cargo fmt --all --check || failed=1; \
	$(SUITE) lint-clippy check -- cargo clippy --workspace --all-targets -- -D warnings || failed=1; \
	$(SUITE) lint-ruff check -- $(PY) -m ruff check python/bpz || failed=1; \
	$(SUITE) lint-mypy check -- $(PY) -m mypy || failed=1; \
	$(SUITE) lint-stubtest check -- $(PY) -m mypy.stubtest bpz._bpz || failed=1; \
	exit $$failed

test-rust: ## the format crate's tests (unit, property, conformance vectors)
	$(SUITE) rust-core cargo -- cargo test -p bpz --features remote
	$(SUITE) rust-capi cargo -- cargo test -p bpz-capi

test-python: $(STAMP) remote-servers ## the Python API tests and the independent spec reader
	$(SUITE) python pytest -- $(PY) -m pytest -q

test-go: ## the Go reader, written from spec/FORMAT.md alone
	@if [ -d spec/readers/go ]; then cd spec/readers/go && ../../../$(SUITE) go go -- go test -v ./...; fi

# The C ABI (rust/bpz-capi, include/bpz.h), used from C and C++ with only cc, c++ and cargo.
CAPI_TARGET := $(or $(CARGO_TARGET_DIR),target)
CAPI_LIB := $(CAPI_TARGET)/release
CAPI_OUT := $(CAPI_TARGET)/c-tests
CAPI_SRC := rust/bpz-capi/tests/c
CAPI_CFLAGS := -std=c99 -pedantic -O2 -Wall -Wextra -Werror -Iinclude
CAPI_CXXFLAGS := -std=c++17 -pedantic -O2 -Wall -Wextra -Werror -Iinclude
CAPI_LINK := -L$(CAPI_LIB) -lbpz -Wl,-rpath,$(abspath $(CAPI_LIB))

.PHONY: test-c
test-c: $(STAMP) remote-servers ## libbpz from C and C++: the conformance vectors, bpz_dump (files, and URLs on nginx and the S3 server), the C++ example
	cargo build -p bpz-capi --release
	@mkdir -p $(CAPI_OUT)
	cargo run -q --release -p bpz-capi --example c_expectations -- spec/vectors $(CAPI_OUT)/expectations.txt
	$(CC) $(CAPI_CFLAGS) -o $(CAPI_OUT)/conformance $(CAPI_SRC)/conformance.c $(CAPI_SRC)/sha256.c $(CAPI_LINK)
	$(CC) $(CAPI_CFLAGS) -o $(CAPI_OUT)/bpz_dump $(CAPI_SRC)/bpz_dump.c $(CAPI_SRC)/sha256.c $(CAPI_LINK)
	$(CXX) $(CAPI_CXXFLAGS) -o $(CAPI_OUT)/example $(CAPI_SRC)/example.cpp $(CAPI_LINK)
	$(SUITE) c-conformance check -- $(CAPI_OUT)/conformance $(CAPI_OUT)/expectations.txt spec/vectors
	$(SUITE) c-dump check -- $(CAPI_OUT)/bpz_dump spec/vectors/nested_tree.bpz
	$(SUITE) c-dump-versions check -- $(CAPI_OUT)/bpz_dump --versions spec/vectors/v11_versions.bpz
	$(SUITE) c-dump-remote check -- $(PY) tests/remote/c_dump_remote.py $(CAPI_OUT)/bpz_dump
	$(SUITE) cpp-example check -- $(CAPI_OUT)/example spec/vectors/nested_tree.bpz 'net/E~1I/V' net/l1/W

vectors: ## regenerate spec/vectors from the reference writer
	rm -rf spec/vectors/*.bpz spec/vectors/*.json spec/vectors/invalid
	cargo run -q -p bpz --example gen_vectors -- spec/vectors

clean: ## remove every build folder, venv, cache and demo output (cargo-fuzz in target/tools too)
	rm -rf target $(CAPI_TARGET) rust/bpz/fuzz/target rust/bpz/fuzz/corpus rust/bpz/fuzz/artifacts \
	  $(VENV) $(VENV312) $(VENV_JAXMIN) build dist bench/out .pytest_cache .hypothesis \
	  python/bpz/*.so python/bpz/*.pyd m.bpz demo.bpz
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' -o -name .pytest_cache \
	  -o -name .hypothesis \) -prune -exec rm -rf {} +

# The real servers of tests/remote: nginx-light (apt) and versitygw, an S3 server built with
# `go install` once into a cache outside the work tree (minutes; reused afterwards).
.PHONY: remote-servers
remote-servers: ## install nginx and build the S3 server the remote-archive tests start
	@tests/remote/install-servers.sh

.PHONY: bench-smoke
bench-smoke: $(STAMP) ## a tiny run of the benchmark harness (light tools only), so it never rots; timings in target/logs
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(SUITE) bench-smoke check --quiet -- $(PY) bench/run.py --scale 0.002 --repeat 1 --strict --verify \
	  --tools bpz,safetensors,npz,npz-deflate,npy-dir,npy-dir/mmap,h5py,h5py-gzip1,h5py-lzf,msgpack,limits,codec:zstd-mt,codec:zstd-chunks \
	  --workdir "$$tmp/work" --out "$$tmp/RESULTS.md" --plot "$$tmp/throughput.png" --json "$$tmp/results.json"

.PHONY: fuzz-smoke
fuzz-smoke: $(STAMP) ## every fuzz target (Rust reader, Python entry points) for 30 s each
	$(SUITE) fuzz-smoke fuzz -- tests/fuzz/run.sh 30

.PHONY: test-reliability
test-reliability: $(STAMP) ## crash safety, corruption, hostile files, concurrency, then every fuzz target for 60 s
	$(PY) -m pytest -q tests/reliability tests/attacks
	tests/fuzz/run.sh 60

# ---------------------------------------------------------------- other Python / BrainPy / jax versions
# bpz's native module is abi3: built once by .venv's editable install, it is imported from
# python/ (PYTHONPATH) by these venvs, which hold only the third-party packages, pinned.

# BrainPy 2.9 (Python >= 3.12 only) with the versions it resolved to on 2026-12-04.
VENV312 ?= .venv312
BP29_STAMP := $(VENV312)/.installed
BP29_PINS := brainpy==2.9.0 brainstate==0.6.0 brainunit==0.6.0 saiunit==0.6.0 braintools==0.4.0 brainevent==0.3.0 \
  jax==0.12.0.1 jaxlib==0.12.0.1 numpy==2.5.5 ml_dtypes==0.7.0 msgpack==1.2.4 scipy==1.18.1 optax==0.2.8 \
  pytest==9.2.0 hypothesis==6.170.27 h5py==3.16.0 zstandard==0.25.0 safetensors==0.8.0

$(BP29_STAMP): Makefile .ci/find-python
	rm -rf $(VENV312)
	py=$$(.ci/find-python 3.12) && "$$py" -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install -q --disable-pip-version-check $(BP29_PINS)
	touch $(BP29_STAMP)

.PHONY: test-brainpy29
test-brainpy29: $(STAMP) $(BP29_STAMP) ## real BrainPy 2.9.0 on Python 3.12: bpz.brainpy tests, braintools' own checkpoint tests, the E/I example
	PYTHONPATH=python JAX_PLATFORMS=cpu $(SUITE) brainpy29 pytest -- $(VENV312)/bin/python -m pytest -q -p no:cacheprovider \
	  tests/test_brainpy_real.py tests/test_brainpy29.py tests/test_brainpy_install.py tests/test_leaves.py
	PYTHONPATH=python:tests/braintools_suite JAX_PLATFORMS=cpu $(SUITE) braintools-suite pytest -- \
	  $(VENV312)/bin/python -m pytest -q -p no:cacheprovider -p bpz_behind_braintools \
	  "$$($(VENV312)/bin/python -c 'import braintools.file as f, os; print(os.path.dirname(f.__file__))')/_msg_checkpoint_test.py"
	PYTHONPATH=python JAX_PLATFORMS=cpu $(SUITE) brainpy29-example check -- $(VENV312)/bin/python examples/brainpy29_ei_units.py

# The lowest jax bpz supports (pyproject: the "jax" extra), on Python 3.11 with numpy 1.x.
VENV_JAXMIN ?= .venv-jaxmin
JAXMIN_STAMP := $(VENV_JAXMIN)/.installed
JAXMIN_PINS := jax==0.4.13 jaxlib==0.4.13 numpy==1.26.4 ml_dtypes==0.4.1 scipy==1.11.4 \
  msgpack==1.2.4 pytest==9.2.0 hypothesis==6.170.27 h5py==3.16.0 zstandard==0.25.0
JAXMIN_TESTS := tests/test_jax.py tests/test_save_load.py tests/test_leaves.py tests/test_brainpy_compat.py tests/test_checkpoints.py

$(JAXMIN_STAMP): Makefile .ci/find-python
	rm -rf $(VENV_JAXMIN)
	py=$$(.ci/find-python 3.11) && "$$py" -m venv $(VENV_JAXMIN)
	$(VENV_JAXMIN)/bin/python -m pip install -q --disable-pip-version-check $(JAXMIN_PINS)
	touch $(JAXMIN_STAMP)

.PHONY: test-jaxmin
test-jaxmin: $(STAMP) $(JAXMIN_STAMP) ## the lowest supported jax (0.4.13, numpy 1.26) on Python 3.11
	PYTHONPATH=python JAX_PLATFORMS=cpu $(SUITE) jaxmin pytest -- $(VENV_JAXMIN)/bin/python -m pytest -q -p no:cacheprovider $(JAXMIN_TESTS)
