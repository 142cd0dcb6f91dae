#!/usr/bin/env bash
# Cross-node cost of the lattice: the same hello component served by (a) the node that runs its
# replica (local) and (b) a node with no replica, whose ingress forwards each request over NATS
# (leaf → hub → leaf) to the replica. Two loopback nodes, each with its own leaf nats-server,
# and a hub nats-server with JetStream (domain `hub`, holding the lattice's desired state; every
# node reaches it with --js-domain hub). Alternating `wrk` runs; prints requests/s, p50 and p99
# per run, at one connection (the latency a request pays) and at CONNECTIONS (throughput), and
# the median p50 difference at one connection: the hop's added latency.
#
# Then the floor under the hop: benches/nats_rtt.rs on the same machine, a bare async-nats
# request/reply over its own leaf → hub → leaf (p50 at one request in flight, and requests/s at
# CONNECTIONS in flight with payloads the size of a forwarded hello and its answer).
#
#   bench/lattice.sh [ROUNDS]        (env: DURATION=10s CONNECTIONS=32 THREADS=2,
#                                     BENCH_LATTICE=path of a lattice binary, not built then;
#                                     NATS_RTT_BENCH=the nats_rtt bench executable, built when unset)
# Headline lines: the median cross-node/local ratio of requests/s at CONNECTIONS (target ≥ 0.5),
# the added p50 at one connection against nats_rtt's leaf → hub → leaf p50 (target ≤ 1.3×), and
# nats_rtt's requests/s at CONNECTIONS against local: the ceiling bare NATS leaves on this
# machine for the cross-node figure (no target: three nats-servers, wrk and both nodes share its
# cores, where a lattice's nodes would each have their own).
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
NATS_RTT=${NATS_RTT_BENCH:-$(bench_target nats_rtt)}
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
# The floor, with the nodes stopped (their nats-servers would share the cores).
bench_cleanup; trap - EXIT; WORK=$(mktemp -d); PIDS=(); trap bench_cleanup EXIT
ROUNDTRIPS=5000 CONCURRENCY=$CONNECTIONS RUN_SECONDS=5 "$NATS_RTT" | tee "$WORK/nats_rtt.out"
# `leaf → hub → leaf   p50 X ms …` and `leaf → hub → leaf   N req/s at C in flight …`.
NP50=$(awk '/leaf → hub → leaf +p50/ { print $7 }' "$WORK/nats_rtt.out")
NRPS=$(awk '/req\/s at/ { print $6 }' "$WORK/nats_rtt.out")
[[ $NP50 =~ ^[0-9.]+$ && $NRPS =~ ^[0-9.]+$ ]] || { echo "nats_rtt printed no figures" >&2; exit 1; }
ADDED=$(awk -v a="$MR" -v b="$ML" 'BEGIN { printf "%.3f", a-b }')
echo "result|cross-node added p50 at 1 conn|$ADDED|$NP50|ms|$(ratio "$ADDED" "$NP50")|<=1.3x nats_rtt leaf-hub-leaf p50"
echo "result|bare nats req/s leaf-hub-leaf at $CONNECTIONS (ceiling)|$NRPS|$MLT|req/s|$(ratio "$NRPS" "$MLT")|-"
