#!/usr/bin/env bash
# A local abacus cluster on loopback: three nats-server processes (one
# JetStream cluster, experiments replicated three times) and three abacus
# nodes, each with its own data directory under $CLUSTER_DIR (default
# ./cluster-data). Ctrl-C stops them all.
#
#   scripts/cluster.sh            # or: make cluster
#
# abacus nodes:   http://127.0.0.1:8081  :8082  :8083
# NATS clients:   nats://127.0.0.1:4222  :4223  :4224 (monitoring :8222 ...)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh cluster
export PATH="$PWD/.tools/bin:$PATH"
cargo build --release
bin=${CARGO_TARGET_DIR:-target}/release/abacus
dir=${CLUSTER_DIR:-./cluster-data}
mkdir -p "$dir"

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping the cluster" >&2
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

routes="nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224"
for i in 0 1 2; do
  nats-server -a 127.0.0.1 -n "nats-$i" -js -sd "$dir/nats-$i" \
    -p $((4222 + i)) -m $((8222 + i)) \
    --cluster_name abacus --cluster "nats://127.0.0.1:$((6222 + i))" --routes "$routes" \
    >"$dir/nats-$i.log" 2>&1 &
  pids+=($!)
done

urls='["nats://127.0.0.1:4222","nats://127.0.0.1:4223","nats://127.0.0.1:4224"]'
for i in 1 2 3; do
  ABACUS_SERVER__BIND="127.0.0.1:$((8080 + i))" \
  ABACUS_STORAGE__PATH="$dir/node-$i" \
  ABACUS_CLUSTER__ENABLED=true \
  ABACUS_CLUSTER__NATS_URLS="$urls" \
  ABACUS_CLUSTER__NODE_ID="node-$i" \
  ABACUS_CLUSTER__REPLICAS=3 \
    "$bin" serve >"$dir/node-$i.log" 2>&1 &
  pids+=($!)
done

for i in 1 2 3; do
  for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$((8080 + i))/readyz" >/dev/null && break
    kill -0 "${pids[$((2 + i))]}" 2>/dev/null || { echo "node-$i exited; see $dir/node-$i.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "node-$i ready on http://127.0.0.1:$((8080 + i))"
done
echo "logs and data in $dir; Ctrl-C stops everything"
wait -n "${pids[@]}"
echo "a process of the cluster exited; see the logs in $dir" >&2
