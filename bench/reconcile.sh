#!/usr/bin/env bash
# Speed of the built-in reconciler on a 3-node loopback lattice: a hub nats-server with JetStream
# (domain `hub`, the desired-state store) and leafnodes listen, and nodes node-a (zone=a),
# node-b (zone=a) and node-c (zone=b), each with its own leaf nats-server, heartbeat every 1 s.
#
#  (a) deploy → first 200: from the start of `lattice app deploy FILE` (through node-a) to the
#      first HTTP 200 on the app's route through node-a's ingress. Each round deploys a new app
#      (`bench-<round>`, route `/bench-<round>`) whose one replica must run in zone b, so it
#      lands on node-c and node-a's ingress forwards over NATS: store → placement → start →
#      first cross-node answer. Polled every ~10 ms. Round 1 is also reported as "cold": later
#      rounds find node-c's compiled-code cache warm. Each round's app is undeployed afterwards.
#  (b) node loss → replica elsewhere: one app (`bench-loss`, route `/bench-loss`), one replica in
#      zone a (node-a or node-b). Each round SIGKILLs the node running it and measures until the
#      other zone=a node's inventory shows the replica AND a GET through node-c's ingress answers
#      200. Polled every 50 ms. Detection alone takes up to 3 missed heartbeats (3 s at
#      --heartbeat-interval 1s), so expect roughly 2–4 s plus the restart of the replica. The
#      killed node is then restarted (same dirs and flags) and must be back in
#      `lattice get hosts` before the next round; the replica may move back to it (rebalance),
#      so each round first waits until the placement is settled. The first time a node runs the
#      component it compiles it (no cached code yet), which can lengthen the early rounds.
#
#   bench/reconcile.sh [ROUNDS]        (default 5 rounds of each)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-5}
LATTICE=${BENCH_LATTICE:-target/release/lattice}

. bench/lib.sh
bench_prepare curl
# HTTP status of a GET (000 when there is no answer within 2 s).
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true; }

die() { # message: prints it and the tail of every log, exits
  echo "$1" >&2
  for log in "$WORK"/*.log; do echo "--- $(basename "$log"):" >&2; tail -n 20 "$log" >&2; done
  exit 1
}

# --- hub ---------------------------------------------------------------------------------------
start_hub

# --- nodes -------------------------------------------------------------------------------------
declare -A ZONE=([node-a]=a [node-b]=a [node-c]=b) PORT=() PID=()
for n in node-a node-b node-c; do PORT[$n]=$(free_port); mkdir -p "$WORK/$n-config"; done

start_node() { # name; the log is appended to, so a restarted node's log keeps its history
  local n=$1
  "$LATTICE" up --name "$n" --label "zone=${ZONE[$n]}" --leaf-url "nats-leaf://127.0.0.1:$HUB_LEAF" \
    --js-domain hub --heartbeat-interval 1s --config-dir "$WORK/$n-config" --data-dir "$WORK/$n" \
    --http-addr "127.0.0.1:${PORT[$n]}" --admin-addr 127.0.0.1:0 2>>"$WORK/$n.log" &
  PID[$n]=$!
  PIDS+=("${PID[$n]}")
}
wait_up() { # name: until its log says it is up (first start only: the log is appended to)
  local n=$1
  for _ in $(seq 1200); do
    grep -q 'lattice node is up' "$WORK/$n.log" 2>/dev/null && return 0
    kill -0 "${PID[$n]}" 2>/dev/null || break
    sleep 0.05
  done
  echo "$n did not come up; its log:" >&2; tail -n 30 "$WORK/$n.log" >&2; exit 1
}
# Names of the hosts in `lattice get hosts` asked through node VIA (empty when unreachable).
host_names() { # via
  { "$LATTICE" get hosts -o json --data-dir "$WORK/$1" 2>/dev/null || true; } | python3 -c '
import json, sys
try: hosts = json.load(sys.stdin)
except ValueError: hosts = []
for h in hosts: print(h.get("name", ""))'
}
# "NAME REPLICAS" per host running replicas of APP, from `lattice get inventory` through VIA.
holders() { # via app
  { "$LATTICE" get inventory -o json --data-dir "$WORK/$1" 2>/dev/null || true; } | python3 -c '
import json, sys
try: inventory = json.load(sys.stdin)
except ValueError: inventory = []
for h in inventory:
    n = sum(c.get("replicas", 0) for c in h.get("components", []) if c.get("app") == sys.argv[1])
    if n > 0: print(h.get("name", ""), n)' "$2"
}
# The app's state from `lattice app status` through VIA ("" when unknown).
app_state() { # via app
  { "$LATTICE" app status "$2" -o json --data-dir "$WORK/$1" 2>/dev/null || true; } | python3 -c '
import json, sys
try: print(json.load(sys.stdin).get("state", ""))
except (ValueError, AttributeError): print("")'
}
has_line() { [[ $'\n'$1$'\n' == *$'\n'"$2"$'\n'* ]]; } # text line

for n in node-a node-b node-c; do start_node "$n"; done
for n in node-a node-b node-c; do wait_up "$n"; done
for _ in $(seq 600); do [ "$(host_names node-a | sort | tr '\n' ' ')" = "node-a node-b node-c " ] && break; sleep 0.05; done
[ "$(host_names node-a | sort | tr '\n' ' ')" = "node-a node-b node-c " ] \
  || die "the three nodes are not all in \`lattice get hosts\` (got: $(host_names node-a | tr '\n' ' '))"

manifest() { # app path zone
  cat <<EOF
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: $1
spec:
  components:
    - name: web
      type: component
      properties:
        image: file://$WASM
      traits:
        - type: spreadscaler
          properties:
            instances: 1
            spread:
              - name: zone-$3
                requirements:
                  zone: $3
$(http_server_link web "$2")
EOF
}
deploy() { # via file
  local out
  out=$("$LATTICE" app deploy "$2" --data-dir "$WORK/$1" 2>&1) || die "lattice app deploy $2 failed: $out"
}

# --- (a) deploy → first 200 --------------------------------------------------------------------
echo "(a) deploy → first 200 through node-a's ingress, replica on node-c (zone b)"
DEPLOY=()
for r in $(seq "$ROUNDS"); do
  app=bench-$r
  manifest "$app" "/bench-$r" b > "$WORK/$app.yaml"
  url="http://127.0.0.1:${PORT[node-a]}/bench-$r"
  t0=$(now_ms)
  deploy node-a "$WORK/$app.yaml"
  t_cli=$(now_ms)
  ok=
  while [ $(( $(now_ms) - t0 )) -lt 60000 ]; do
    if [ "$(http_code "$url")" = 200 ]; then ok=1; break; fi
    sleep 0.01
  done
  t1=$(now_ms)
  [ -n "$ok" ] || die "round $r: no 200 on $url within 60 s of the deploy"
  DEPLOY+=($(( t1 - t0 )))
  where=$(holders node-a "$app" | tr '\n' ' ')
  printf 'round %-3s deploy→first 200: %6d ms  (deploy command %d ms; replica on: %s)%s\n' \
    "$r" $(( t1 - t0 )) $(( t_cli - t0 )) "${where:-?}" "$([ "$r" = 1 ] && echo '  [cold]')"
  # Clean up before the next round, so every round deploys into the same lattice.
  "$LATTICE" app undeploy "$app" --data-dir "$WORK/node-a" >/dev/null 2>&1 || die "round $r: undeploy $app failed"
  for _ in $(seq 400); do [ "$(http_code "$url")" = 404 ] && break; sleep 0.05; done
done

# --- (b) node loss → replica elsewhere -----------------------------------------------------------
echo "(b) node loss → replica on the other zone=a node and a 200 through node-c's ingress"
manifest bench-loss /bench-loss a > "$WORK/bench-loss.yaml"
deploy node-c "$WORK/bench-loss.yaml"
LOSS_URL="http://127.0.0.1:${PORT[node-c]}/bench-loss"

# Waits until bench-loss is deployed, runs on exactly one node, the same one for 5 s (a rejoined
# node may take the replica back), and answers through node-c; sets HOLDER.
settle() {
  local deadline=$(( $(now_ms) + 90000 )) h stable_since=0 last=
  while [ "$(now_ms)" -lt "$deadline" ]; do
    h=$(holders node-c bench-loss)
    if [ "$(app_state node-c bench-loss)" = deployed ] && [ "$(printf '%s\n' "$h" | grep -c .)" = 1 ] \
       && [ "$(http_code "$LOSS_URL")" = 200 ]; then
      h=${h%% *}
      if [ "$h" != "$last" ]; then last=$h; stable_since=$(now_ms); fi
      if [ $(( $(now_ms) - stable_since )) -ge 5000 ]; then HOLDER=$h; return 0; fi
    else
      last=
    fi
    sleep 0.2
  done
  die "bench-loss did not settle on one node (inventory: $(holders node-c bench-loss | tr '\n' ' '); state: $(app_state node-c bench-loss))"
}

LOSS=()
for r in $(seq "$ROUNDS"); do
  settle
  victim=$HOLDER
  case $victim in
    node-a) other=node-b ;;
    node-b) other=node-a ;;
    *) die "round $r: the zone=a replica runs on ${victim:-no node}" ;;
  esac
  vpid=${PID[$victim]}
  # The node's own nats-server (its child) dies with it; noted to wait for it before the restart.
  children=$(cat /proc/"$vpid"/task/*/children 2>/dev/null || true)

  t0=$(now_ms)
  kill -KILL "$vpid"
  wait "$vpid" 2>/dev/null || true # reaps it at once: no "Killed" notice later
  kept=(); for p in "${PIDS[@]}"; do [ "$p" = "$vpid" ] || kept+=("$p"); done; PIDS=("${kept[@]}")
  placed= answered= t_placed= t_answered=
  while [ $(( $(now_ms) - t0 )) -lt 60000 ]; do
    if [ -z "$placed" ] && has_line "$(holders node-c bench-loss | cut -d' ' -f1)" "$other"; then
      placed=1; t_placed=$(now_ms)
    fi
    if [ -n "$placed" ] && [ -z "$answered" ] && [ "$(http_code "$LOSS_URL")" = 200 ]; then
      answered=1; t_answered=$(now_ms)
    fi
    [ -n "$answered" ] && break
    sleep 0.05
  done
  [ -n "$answered" ] || die "round $r: no replica on $other answering through node-c within 60 s of killing $victim (placed: ${placed:-no})"
  LOSS+=($(( t_answered - t0 )))
  printf 'round %-3s node loss→replica elsewhere: %6d ms  (killed %s; in %s inventory after %d ms)\n' \
    "$r" $(( t_answered - t0 )) "$victim" "$other's" $(( t_placed - t0 ))

  # Restart the killed node once its nats-server is gone (its data dir is free again).
  for _ in $(seq 200); do
    alive=; for c in $children; do kill -0 "$c" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break; sleep 0.05
  done
  start_node "$victim"
  back=
  for _ in $(seq 1200); do
    if has_line "$(host_names node-c)" "$victim"; then back=1; break; fi
    kill -0 "${PID[$victim]}" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$back" ] || die "round $r: the restarted $victim is not back in \`lattice get hosts\`"
done

# --- summary -------------------------------------------------------------------------------------
echo
echo "deploy→first 200: median $(median "${DEPLOY[@]}") ms (rounds: ${DEPLOY[*]})"
if [ "$ROUNDS" -gt 1 ]; then
  echo "deploy→first 200: cold (round 1) ${DEPLOY[0]} ms, warm median $(median "${DEPLOY[@]:1}") ms (rounds 2–$ROUNDS)"
else
  echo "deploy→first 200: cold (round 1) ${DEPLOY[0]} ms"
fi
echo "node loss→replica elsewhere: median $(median "${LOSS[@]}") ms (rounds: ${LOSS[*]})"
echo "result|reconcile deploy→first 200 cross-node|$(median "${DEPLOY[@]}")|-|ms|-|-"
echo "result|reconcile node loss→replica (heartbeat 1s)|$(median "${LOSS[@]}")|-|ms|-|-"
