#!/usr/bin/env bash
# Smoke-runs every load-harness scenario for a couple of seconds against a
# server the harness starts itself (debug build, fresh data directory).
# Proves the harness works; gates on errors, never on latency.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}/debug"
# The harness alone: built together with the server, cargo would unify
# dependency features differently and compile RocksDB a second time.
cargo build --quiet -p abacus-load
# The server `cargo test` just built; build it only when run on its own.
[ -x "$target/abacus" ] || cargo build --quiet --bin abacus
run() {
  echo "smoke: abacus-load $*" >&2
  "$target/abacus-load" --serve "$target/abacus" --duration 2s --assert-no-errors "$@" | sed 's/^/  /'
}

run --scenario assign --rate 200
run --scenario assign --no-exposure --rate 200
run --scenario health --rate 200
run --scenario assign-all --experiments 3 --rate 200
run --scenario ingest --rate 200
run --scenario ingest --rate 200 --stream-clients 5
run --scenario ingest-batch --batch 50 --rate 50 --footprint
run --scenario results --rate 50
run --scenario mixed --rate 200
run --scenario webhooks --subscribers 3 --rate 20
run --scenario assign --closed-loop --concurrency 4
echo "smoke: every scenario ran" >&2
