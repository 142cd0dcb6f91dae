#!/usr/bin/env bash
# Cross-node cost of the lattice: the same hello component served by (a) the node that runs its
# replica (local) and (b) a node with no replica, whose ingress forwards each request over NATS
# (leaf → hub → leaf) to the replica. Two loopback nodes, each with its own leaf nats-server,
# and a hub nats-server with JetStream (domain `hub`, holding the lattice's desired state; every
# node reaches it with --js-domain hub). Alternating `wrk` runs; prints requests/s, p50 and p99
# per run, at one connection (the latency a request pays) and at CONNECTIONS (throughput), and
# the median p50 difference at one connection: the hop's added latency.
#
#   bench/lattice.sh [ROUNDS]        (env: DURATION=10s CONNECTIONS=32 THREADS=2,
#                                     BENCH_LATTICE=path of a lattice binary, not built then)
# Headline lines: the median cross-node/local ratio of requests/s at CONNECTIONS (target ≥ 0.5),
# and the added p50 at one connection.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}

. bench/lib.sh
bench_prepare wrk curl

start_hub

# The replica goes to nodes labelled role=worker only. The manifest is in the worker's config dir
# only (a manifest in any node's config dir is deployed lattice-wide); the front's is empty.
mkdir -p "$WORK/config" "$WORK/front-config"
sed -e "s#file://../target/wasm32-wasip2/release/http_hello.wasm#file://$WASM#" \
    -e 's#^\( *\)instances: \(.*\)$#\1instances: \2\n\1spread:\n\1  - name: workers\n\1    requirements:\n\1      role: worker#' \
    examples/http-hello/wadm.yaml > "$WORK/config/hello.yaml"
grep -q 'role: worker' "$WORK/config/hello.yaml" || { echo "could not add the spread to the manifest" >&2; exit 1; }

LATTICE=${BENCH_LATTICE:-target/release/lattice}
LOCAL=${LOCAL_PORT:-18280}; REMOTE=${REMOTE_PORT:-18281}
start_leaf_node worker worker "$WORK/config" "$LOCAL"
start_leaf_node front front "$WORK/front-config" "$REMOTE"
wait_http "$LOCAL" "$WORK/worker.log"; wait_http "$REMOTE" "$WORK/front.log"
# The front reconciles the app on its own schedule: give it a few seconds to log its decision.
for _ in $(seq 100); do grep -q 'no replica of this component belongs on this node' "$WORK/front.log" && break; sleep 0.05; done
grep -q 'no replica of this component belongs on this node' "$WORK/front.log" \
  || { echo "the front node runs a replica; the cross-node path would not be measured; its log:" >&2
       tail -n 30 "$WORK/front.log" >&2; exit 1; }

printf '%-6s %-12s %5s %10s %9s %9s %8s\n' round path conns req/s p50_ms p99_ms non2xx
LP=(); RP=(); LT=(); RT=(); BAD=0
for r in $(seq "$ROUNDS"); do
  for c in 1 "$CONNECTIONS"; do
    read -r rps p50 p99 bad < <(wrk_get "$LOCAL" "$c")
    printf '%-6s %-12s %5s %10s %9s %9s %8s\n' "$r" local "$c" "$rps" "$p50" "$p99" "$bad"
    [ "$c" = 1 ] && LP+=("$p50"); [ "$c" = 1 ] || LT+=("$rps"); BAD=$((BAD + bad))
    read -r rps p50 p99 bad < <(wrk_get "$REMOTE" "$c")
    printf '%-6s %-12s %5s %10s %9s %9s %8s\n' "$r" cross-node "$c" "$rps" "$p50" "$p99" "$bad"
    [ "$c" = 1 ] && RP+=("$p50"); [ "$c" = 1 ] || RT+=("$rps"); BAD=$((BAD + bad))
  done
done
ML=$(median "${LP[@]}"); MR=$(median "${RP[@]}")
echo "median p50 at 1 connection: local $ML ms, cross-node $MR ms, added $(awk -v a="$MR" -v b="$ML" 'BEGIN { printf "%.3f", a-b }') ms"
[ "$BAD" = 0 ] || { echo "$BAD answers were not 2xx; no figures" >&2; exit 1; }
MLT=$(median "${LT[@]}"); MRT=$(median "${RT[@]}")
echo "result|cross-node req/s at $CONNECTIONS conns|$MRT|$MLT|req/s|$(awk -v a="$MRT" -v b="$MLT" 'BEGIN { printf "%.2f", a/b }')|>=0.5x local"
echo "result|cross-node added p50 at 1 conn|$(awk -v a="$MR" -v b="$ML" 'BEGIN { printf "%.3f", a-b }')|-|ms|-|<=1.3x nats_rtt leaf-hub-leaf p50"
