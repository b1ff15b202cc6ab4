# One entry point for the whole test suite: unit + integration tests, then the
# end-to-end runs with real clients (Python SDKs, the MCP SDK, curl, Node)
# against a real clavis binary. Every script installs what it needs itself.
.PHONY: test test-rust test-e2e test-soak soak fuzz fuzz-ci bench

CLAVIS_BIN ?= $(CURDIR)/target/debug/clavis
E2E_SCRIPTS := $(sort $(wildcard tests/e2e*/run.sh))

test: test-rust test-e2e test-soak

test-rust:
	cargo test --all-targets

test-e2e:
	cargo build
	@set -e; for script in $(E2E_SCRIPTS); do \
		echo "== $$script"; \
		CLAVIS_BIN=$(CLAVIS_BIN) bash $$script; \
	done

# The soak test (tests/soak): 3 minutes here; SOAK_SECONDS=3600 make soak for the long run.
test-soak soak:
	cargo build
	CLAVIS_BIN=$(CLAVIS_BIN) bash tests/soak/run.sh

# The fuzz targets' entry points as bounded property tests (part of
# test-rust already; this runs them alone). `make fuzz` runs libFuzzer.
fuzz-ci:
	cargo test --test fuzz_props

fuzz:
	bash fuzz/run.sh

bench:
	bash bench/run.sh
