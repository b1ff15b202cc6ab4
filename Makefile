# One entry point for the whole test suite: unit + integration tests, then the
# end-to-end runs with real clients (Python SDKs, the MCP SDK, curl, Node)
# against a real clavis binary. Every script installs what it needs itself.
.PHONY: test test-rust test-e2e bench

CLAVIS_BIN ?= $(CURDIR)/target/debug/clavis
E2E_SCRIPTS := $(sort $(wildcard tests/e2e*/run.sh))

test: test-rust test-e2e

test-rust:
	cargo test --all-targets

test-e2e:
	cargo build
	@set -e; for script in $(E2E_SCRIPTS); do \
		echo "== $$script"; \
		CLAVIS_BIN=$(CLAVIS_BIN) bash $$script; \
	done

bench:
	bash bench/run.sh
