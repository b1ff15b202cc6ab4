# One entry point for the whole test suite: unit + integration tests, then the
# end-to-end run with real clients (Python SDKs, curl, Node) through the proxy.
.PHONY: test test-rust test-e2e bench

test: test-rust test-e2e

test-rust:
	cargo test --all-targets

test-e2e:
	bash tests/e2e/run.sh

bench:
	bash bench/run.sh
