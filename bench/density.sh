#!/usr/bin/env bash
# Density (issue 15, item 5): APPS small apps on one standalone node, each its own manifest
# (app-0001 … app-NNNN, one http-hello component each, route /app-NNNN), all referring to the
# same wasm. Measures
#  (a) deploy: from `lattice up` with the APPS manifests in its config dir until every route has
#      answered 200 (polled over keep-alive connections) — target < 60 s;
#  (b) memory: VmRSS of the node plus its nats-server once all answer — target < 400 MiB;
#  (c) latency: p50 of one app (the middle one) at one connection against a node with only that
#      app, alternating `wrk` runs — target within 10 %;
#  (d) routing: benches/router_lookup.rs, ns per route lookup from 1 to 10,000 routes — flat.
# Fails when any answer is not 2xx. Prints `result|` lines (bench/all.sh).
#
#   bench/density.sh [ROUNDS]     (env: APPS=1000 DURATION=10s, ROUNDS of (c), default 3;
#                                  ROUTER_BENCH: the router_lookup bench executable, built when unset)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
APPS=${APPS:-1000}
DURATION=${DURATION:-10s}
THREADS=1
CONNECTIONS=1

. bench/lib.sh
ROUTER_BENCH=${ROUTER_BENCH:-$(bench_target router_lookup)}
bench_prepare wrk curl
LATTICE=${BENCH_LATTICE:-target/release/lattice}

mkdir -p "$WORK/many-config" "$WORK/one-config"
for i in $(seq -f '%04g' "$APPS"); do
  app_manifest "app-$i" "$WASM" "/app-$i" > "$WORK/many-config/app-$i.yaml"
done
PROBE=app-$(printf '%04d' $(( (APPS + 1) / 2 )))
cp "$WORK/many-config/$PROBE.yaml" "$WORK/one-config/"

MANY=$(free_port); ONE=$(free_port)
t0=$(now_ms)
"$LATTICE" up --name many --config-dir "$WORK/many-config" --data-dir "$WORK/many-data" \
  --http-addr "127.0.0.1:$MANY" --admin-addr 127.0.0.1:0 2>"$WORK/many.log" &
MANY_PID=$!
PIDS+=("$MANY_PID")

# Every route until it answers 200, each polled again after the others (keep-alive).
python3 - "$MANY" "$APPS" 120 <<'EOF' || { echo "not every app answered; the node's log:" >&2; tail -n 30 "$WORK/many.log" >&2; exit 1; }
import http.client, sys, time
port, apps, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
pending = [f"/app-{i:04d}" for i in range(1, apps + 1)]
deadline = time.monotonic() + limit
conn = None
while pending and time.monotonic() < deadline:
    still = []
    for path in pending:
        try:
            conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or body != f"Hello from lattice: {path}\n".encode():
                still.append(path)
        except (OSError, http.client.HTTPException):
            conn = None
            still.append(path)
    if len(still) == len(pending):
        time.sleep(0.05)
    pending = still
if pending:
    print(f"{len(pending)} of {apps} apps did not answer 200 within {limit:.0f} s, e.g. {pending[:3]}", file=sys.stderr)
    sys.exit(1)
EOF
DEPLOY_MS=$(( $(now_ms) - t0 ))
echo "deploy: all $APPS apps answered 200 after $DEPLOY_MS ms (from lattice up)"

rss_kib() { # pid: VmRSS of it and its children, KiB
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status") ))
  done
  echo "$total"
}
sleep 2
RSS_MIB=$(( $(rss_kib "$MANY_PID") / 1024 ))
NATS_MIB=$(( ($(rss_kib "$MANY_PID") - $(awk '/^VmRSS:/ { print $2 }' "/proc/$MANY_PID/status")) / 1024 ))
echo "memory: node with nats-server $RSS_MIB MiB (nats-server $NATS_MIB MiB) with $APPS apps"
echo "component code: compiled $(grep -c '"component compiled"\|component compiled' "$WORK/many.log" || true) times, loaded from the code cache $(grep -c 'loaded from cache' "$WORK/many.log" || true) times (one wasm)"

"$LATTICE" up --name one --config-dir "$WORK/one-config" --data-dir "$WORK/one-data" \
  --http-addr "127.0.0.1:$ONE" --admin-addr 127.0.0.1:0 2>"$WORK/one.log" &
ONE_PID=$!
PIDS+=("$ONE_PID")
for _ in $(seq 400); do curl -sf "http://127.0.0.1:$ONE/$PROBE" >/dev/null && break; sleep 0.05; done
RSS_ONE_MIB=$(( $(rss_kib "$ONE_PID") / 1024 ))
echo "memory: node with nats-server $RSS_ONE_MIB MiB with 1 app"

printf '%-6s %-10s %10s %9s %9s %8s\n' round node req/s p50_ms p99_ms non2xx
A=(); B=()
for r in $(seq "$ROUNDS"); do
  for node in many one; do
    port=$MANY; [ "$node" = one ] && port=$ONE
    read -r rps p50 p99 bad requests < <(wrk_run "$port" 1 "/$PROBE") \
      || { echo "wrk against $node failed (above); its log:" >&2; tail -n 20 "$WORK/$node.log" >&2; exit 1; }
    printf '%-6s %-10s %10s %9s %9s %8s\n' "$r" "$node" "$rps" "$p50" "$p99" "$bad"
    if [ -z "${requests:-}" ] || [ "$bad" != 0 ] || [ "$rps" = 0 ]; then
      echo "$node: ${bad:-?} answers were not 2xx ($rps req/s); its log:" >&2; tail -n 20 "$WORK/$node.log" >&2; exit 1
    fi
    if [ "$node" = many ]; then A+=("$p50"); else B+=("$p50"); fi
  done
done
P_MANY=$(median "${A[@]}"); P_ONE=$(median "${B[@]}")
echo "p50 at 1 connection: $P_MANY ms with $APPS apps, $P_ONE ms with 1"

echo "routing (benches/router_lookup.rs):"
ROUTING=$("$ROUTER_BENCH")
echo "$ROUTING"
# Each kind of route, 1 route against the most: the kind whose cost grew more stands.
ROUTES_MAX=$(tail -n 1 <<<"$ROUTING" | awk '{ print $2 }')
read -r NS_MAX NS_1 < <(awk -v max="$ROUTES_MAX" '
  $2 == 1 { one[$3] = $5 } $2 == max { most[$3] = $5 }
  END { for (k in most) if (one[k] > 0 && (best == "" || most[k] / one[k] > most[best] / one[best])) best = k
        print most[best], one[best] }' <<<"$ROUTING")

echo "machine load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "result|density deploy $APPS apps|$(awk -v ms="$DEPLOY_MS" 'BEGIN { printf "%.1f", ms / 1000 }')|-|s|-|<60 s"
echo "result|density RSS node+nats $APPS apps|$RSS_MIB|$RSS_ONE_MIB|MiB|$(ratio "$RSS_MIB" "$RSS_ONE_MIB")|<400 MiB"
echo "result|density p50 1 conn $APPS apps vs 1|$P_MANY|$P_ONE|ms|$(ratio "$P_MANY" "$P_ONE")|<=1.1x 1 app"
echo "result|routing ns/lookup $ROUTES_MAX vs 1 routes|$NS_MAX|$NS_1|ns|$(ratio "$NS_MAX" "$NS_1")|<=1.5x 1 route"
