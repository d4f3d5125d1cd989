#!/usr/bin/env bash
# A big store, filled and measured: serves BIN on a fresh data directory
# with the embedded defaults (storage.cache_mb = 128), creates three
# experiments and fills UNITS units split evenly across them, ten events
# per unit (the harness's mix: an exposure, eight clicks, a conversion),
# sent in batches of 100 by a closed loop that retries 503s so every event
# lands. Then it reports, in order:
#   - the fill: events/s and the batch latency;
#   - resident memory (VmRSS from /proc) and disk per event once ingest has
#     drained, and again after a minute of quiet (compaction);
#   - a restart: SIGTERM, start on the same data, time until /readyz is 200,
#     and the resident memory right after;
#   - assignment of the first experiment at 10,000 requests/s for 30 s,
#     drawing units of which half are already exposed to it and half new;
#   - results reads of that experiment at 50 requests/s for 20 s;
#   - resident memory at the end.
# Loopback only; every load step is bounded in time and count.
#   load/store.sh ./target/release/abacus [UNITS] [CONCURRENCY]
# The harness is ./target/release/abacus-load unless LOAD names another.
# With KEEP=DIR the store is kept in DIR, and a DIR already filled is not
# filled again: the same store measured with another build.
set -euo pipefail
bin=${1:?usage: store.sh BIN [UNITS] [CONCURRENCY]}
units=${2:-10000000}
concurrency=${3:-8}
here=$(cd "$(dirname "$0")" && pwd)
load=${LOAD:-$here/../target/release/abacus-load}
data=${KEEP:-$(mktemp -d)}
mkdir -p "$data"
refill=true
[ -n "${KEEP:-}" ] && [ -f "$data/filled" ] && refill=false
port=$(( 20000 + RANDOM % 20000 ))
url=http://127.0.0.1:$port
pid=
serve() {
  ABACUS_SERVER__BIND=127.0.0.1:$port ABACUS_STORAGE__PATH=$data/data RUST_LOG=warn \
    "$bin" serve >>"$data/log" 2>&1 &
  pid=$!
}
stop() { kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
trap 'stop; [ -n "${KEEP:-}" ] || rm -rf "$data"' EXIT
ready() {
  for _ in $(seq 6000); do curl -fs "$url/readyz" >/dev/null && return 0; sleep 0.01; done
  echo "server never became ready" >&2; exit 1
}
rss() { awk '/VmRSS/ {printf "%.0f MB", $2/1024}' /proc/$pid/status; }
metric() { curl -fs "$url/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# Resident memory and disk per stored event ($filled, counted before the
# restart resets the server's counters).
filled=0
footprint() {
  local events=$filled bytes
  bytes=$(du -sb "$data/data" | cut -f1)
  echo "RSS $(rss)  disk $(( bytes / 1048576 )) MB  $(awk -v b="$bytes" -v e="${events:-0}" 'BEGIN {printf "%.1f", (e > 0 ? b / e : 0)}') bytes/event  ($events events)"
}
# Until the mailboxes are empty and the persisted count has stopped moving
# (a batch a writer has taken is no longer in a mailbox).
drain() {
  local last=-1 now
  for _ in $(seq 300); do
    now=$(metric abacus_events_persisted_total)
    [ "$(metric 'abacus_ingest_mailbox_depth{mailbox="ingest"}')" = 0 ] && [ "$now" = "$last" ] && return 0
    last=$now
    sleep 0.2
  done
}

per=$(( units / 3 ))
serve; ready
if $refill; then
  for i in 0 1 2; do
    curl -fs -X POST "$url/v1/experiments" -H 'content-type: application/json' -d "{
      \"key\": \"store-$i\", \"name\": \"store $i\",
      \"variants\": [{\"key\": \"control\", \"weight\": 1}, {\"key\": \"treatment\", \"weight\": 1}],
      \"metrics\": [{\"key\": \"conversion\", \"kind\": \"mean\"}, {\"key\": \"click\", \"kind\": \"binomial\"}],
      \"primary_metric\": \"conversion\"}" >/dev/null
    curl -fs -X POST "$url/v1/experiments/store-$i/start" >/dev/null
  done

  echo "== fill: $units units over 3 experiments, 10 events each, batches of 100, closed loop x$concurrency"
  started=$(date +%s%N)
  for i in 0 1 2; do
    "$load" --url "$url" --scenario ingest-batch --experiment "store-$i" --batch 100 \
      --closed-loop --concurrency "$concurrency" --units "$per" --first-unit $(( i * per )) \
      --max-requests $(( per / 10 )) --duration 3600s | grep -E "requests|retried|latency"
  done
  drain
  ms=$(( ($(date +%s%N) - started) / 1000000 ))
  filled=$(metric abacus_events_persisted_total)
  echo "filled in $(( ms / 1000 )) s: $(( filled * 1000 / (ms > 0 ? ms : 1) )) events/s"
  echo "after the fill:     $(footprint)"
  sleep "${QUIET:-60}"
  echo "after ${QUIET:-60} s quiet: $(footprint)"
  echo "$filled" >"$data/filled"
else
  filled=$(cat "$data/filled")
  echo "== the store in $data, filled before with $filled events"
  echo "on start:           $(footprint)"
fi

echo "== restart"
stop
t0=$(date +%s%N); serve; ready
echo "ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms, RSS $(rss)"

echo "== assignment of store-0 at 10,000/s for 30 s (half of the units exposed to it, half new)"
"$load" --url "$url" --scenario assign --experiment store-0 --rate 10000 --duration 30s \
  --units $(( 2 * per )) --max-requests 300000 | grep -E "requests|latency"
echo "== results of store-0 at 50/s for 20 s"
"$load" --url "$url" --scenario results --experiment store-0 --rate 50 --duration 20s \
  --max-requests 1000 | grep -E "requests|latency"
echo "at the end:         $(footprint)"
