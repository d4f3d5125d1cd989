# The two commands of the README's quick start, and a few helpers.
# Each target first installs what a fresh machine lacks (clang for RocksDB).

.PHONY: serve test lint cluster bootstrap bootstrap-test

# Tools the bootstrap installs for tests (nats-server) come first.
export PATH := $(CURDIR)/.tools/bin:$(PATH)

bootstrap:
	@./scripts/bootstrap.sh

bootstrap-test:
	@./scripts/bootstrap.sh test

## Serve on 127.0.0.1:8080 with RocksDB under ./data and the embedded config.
serve: bootstrap
	cargo run --release -- serve

## Unit tests, black-box tests against the real binary, a few-second
## smoke run of every load-harness scenario (no latency gate), then the
## deployment files checked against the binary (deploy/check.sh).
test: bootstrap-test
	cargo test
	./scripts/smoke.sh
	./deploy/check.sh "$${CARGO_TARGET_DIR:-target}/debug/abacus"

## Three nats-server processes (JetStream) and three abacus nodes on
## loopback, sharing their experiments; Ctrl-C stops them all.
cluster:
	./scripts/cluster.sh

## Formatting and lints as CI would want them.
lint: bootstrap
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
