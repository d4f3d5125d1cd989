#!/usr/bin/env bash
# Smoke-runs every load-harness scenario for a couple of seconds against a
# server the harness starts itself (debug build, fresh data directory).
# Proves the harness works; gates on errors, never on latency.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p abacus -p abacus-load
target="${CARGO_TARGET_DIR:-target}/debug"
run() {
  echo "smoke: abacus-load $*" >&2
  "$target/abacus-load" --serve "$target/abacus" --duration 2s --assert-no-errors "$@" | sed 's/^/  /'
}

run --scenario assign --rate 200
run --scenario assign-all --experiments 3 --rate 200
run --scenario ingest --rate 200
run --scenario ingest-batch --batch 50 --rate 50
run --scenario results --rate 50
run --scenario mixed --rate 200
run --scenario webhooks --subscribers 3 --rate 20
run --scenario assign --closed-loop --concurrency 4
echo "smoke: every scenario ran" >&2
