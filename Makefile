# bpz — every workflow in one place. `make help` lists the targets.
.PHONY: help demo test test-rust vectors clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

demo: ## save and load a spiking-network state, printing what happens
	cargo run --release -q -p bpz --example demo -- demo.bpz

test: test-rust ## install everything needed and run every test

test-rust: ## the format crate's tests (unit, property, conformance vectors)
	cargo test -p bpz

vectors: ## regenerate spec/vectors from the reference writer
	cargo run -q -p bpz --example gen_vectors -- spec/vectors

clean: ## remove build outputs
	cargo clean
	rm -f demo.bpz
