#!/usr/bin/env bash
# All-experiments assignment with exposure logging, a fresh unit per
# request: serves BIN on a temporary data directory with two running
# experiments, runs wrk for DURATION (default 10s, 2 threads, 32
# connections), and prints the server's RSS before, right after, and
# again after a quiet wait. Loopback only; bounded by wrk's duration.
#   load/wrk/assign_all.sh ./target/release/abacus [10s] [extra wrk args]
# NO_EXPOSURE=1 sends the same requests without exposure logging.
set -euo pipefail
bin=${1:?usage: assign_all.sh BIN [DURATION]}
duration=${2:-10s}
shift $(( $# > 1 ? 2 : 1 ))
here=$(cd "$(dirname "$0")" && pwd)
data=$(mktemp -d)
port=$(( 20000 + RANDOM % 20000 ))
ABACUS_SERVER__BIND=127.0.0.1:$port ABACUS_STORAGE__PATH=$data/data RUST_LOG=warn \
  "$bin" serve >"$data/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
url=http://127.0.0.1:$port
for _ in $(seq 100); do curl -fs "$url/readyz" >/dev/null && break; sleep 0.1; done
for key in first second; do
  curl -fs -X POST "$url/v1/experiments" -H 'content-type: application/json' \
    -d "{\"key\":\"$key\",\"name\":\"$key\",\"variants\":[{\"key\":\"control\",\"weight\":1},{\"key\":\"treatment\",\"weight\":1}]}" >/dev/null
  curl -fs -X POST "$url/v1/experiments/$key/start" >/dev/null
done
rss() { awk '/VmRSS/ {print int($2/1024) " MB"}' /proc/$pid/status; }
echo "RSS before: $(rss)"
wrk -t2 -c32 -d"$duration" --latency -s "$here/assign_all.lua" "$@" "$url" \
  ${NO_EXPOSURE:+-- no-exposure}
echo "RSS right after: $(rss)"
sleep 5
echo "RSS 5 s later: $(rss)"
