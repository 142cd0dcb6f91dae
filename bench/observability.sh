#!/usr/bin/env bash
# What metrics cost: HTTP throughput of the hello component on two standalone lattice nodes, one
# with the admin endpoint and its metrics on (the default) and one with `--admin-addr none`
# (metrics off), traces off on both. Alternating runs of `wrk` (32 connections, 10 s each by
# default) against one node at a time; prints requests/s, p50 and p99 per run and the ratio of
# the medians (issue 14's target: metrics on >= 0.97x of off).
#
#   bench/observability.sh [ROUNDS]     (env: DURATION=10s CONNECTIONS=32 THREADS=2)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}

. bench/lib.sh
bench_prepare wrk curl
LATTICE=${BENCH_LATTICE:-target/release/lattice}

mkdir -p "$WORK/config"
sed "s#file://../target/wasm32-wasip2/release/http_hello.wasm#file://$WASM#" examples/http-hello/wadm.yaml > "$WORK/config/hello.yaml"
ON=$(free_port); OFF=$(free_port); ADMIN=$(free_port)
"$LATTICE" up --name metrics-on --config-dir "$WORK/config" --data-dir "$WORK/on" \
  --http-addr "127.0.0.1:$ON" --admin-addr "127.0.0.1:$ADMIN" 2>"$WORK/on.log" &
PIDS+=($!)
"$LATTICE" up --name metrics-off --config-dir "$WORK/config" --data-dir "$WORK/off" \
  --http-addr "127.0.0.1:$OFF" --admin-addr none 2>"$WORK/off.log" &
PIDS+=($!)
wait_http "$ON" "$WORK/on.log"; wait_http "$OFF" "$WORK/off.log"

printf '%-6s %-12s %10s %9s %9s %8s\n' round metrics req/s p50_ms p99_ms non2xx
A=(); B=()
for r in $(seq "$ROUNDS"); do
  read -r rps p50 p99 bad < <(wrk_get "$ON"); A+=("$rps")
  printf '%-6s %-12s %10s %9s %9s %8s\n' "$r" on "$rps" "$p50" "$p99" "$bad"
  [ "$bad" = 0 ] && [ "$rps" != 0 ] || { echo "metrics on: $bad answers were not 2xx" >&2; exit 1; }
  read -r rps p50 p99 bad < <(wrk_get "$OFF"); B+=("$rps")
  printf '%-6s %-12s %10s %9s %9s %8s\n' "$r" off "$rps" "$p50" "$p99" "$bad"
  [ "$bad" = 0 ] && [ "$rps" != 0 ] || { echo "metrics off: $bad answers were not 2xx" >&2; exit 1; }
done
# What the node with metrics counted (every round's requests together), for the eye.
curl -sf "http://127.0.0.1:$ADMIN/metrics" | grep '^lattice_http_requests_total{.*status_class="2xx"}' || true
MA=$(median "${A[@]}"); MB=$(median "${B[@]}")
echo "median req/s: metrics on $MA, off $MB, ratio $(awk -v a="$MA" -v b="$MB" 'BEGIN { if (b > 0) printf "%.3f", a/b; else printf "n/a" }')x"
echo "result|metrics on vs off req/s|$MA|$MB|req/s|$(ratio "$MA" "$MB")|>=0.97x metrics off"
