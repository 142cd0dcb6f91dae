#!/usr/bin/env bash
# Does a slow compile on a node delay the failover of another app to it? A 3-node loopback
# lattice: a hub nats-server with JetStream (domain `hub`) and leafnodes listen, nodes node-a and
# node-b (zone=a) and node-c (zone=b), each with its own leaf nats-server, heartbeat every 1 s.
#
# App `bench-b` (http-hello, one replica in zone a) runs on node-a or node-b. Each round SIGKILLs
# the node running it (the victim) and measures from the kill until a GET of /bench-b through
# node-c's ingress answers 200 with the replica in the other zone=a node's (the survivor's)
# inventory. Polled every 50 ms. Rounds alternate:
#
#  plain  nothing else happens on the survivor;
#  slow   just before the kill, app `bench-a` (examples/http-large, built with
#         HTTP_LARGE_FUNCTIONS functions: a large wasm whose compile takes seconds; one replica,
#         required on the survivor by its `node` label) is deployed through node-c, so the
#         survivor is compiling it when the victim dies. Every slow round's bench-a is a new
#         artifact (a custom section with the round number appended), so no node finds its
#         code cached. The deploy command returns once node-c has validated (compiled) it; the
#         kill follows at once. The survivor's compile time is read from its log.
#
# In both, the survivor's code cache is emptied before the kill, so it compiles bench-b too, as
# a node does that never ran it.
#
# Detection alone takes up to 3 missed heartbeats (3 s). Before issue 12 the survivor's
# reconciler waited for bench-a's compile before starting bench-b, so a slow round took about
# max(detection, compile) + start; now the starts run side by side and a slow round should take
# about what a plain one does. The killed node is restarted before the next round.
#
#   bench/slow-start.sh [ROUNDS]   (default 3 of each)
#   LATTICE=path/to/lattice bench/slow-start.sh   runs that binary instead of building release
#   HTTP_LARGE_FUNCTIONS=N                        size of bench-a (default 8000 functions)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
FUNCTIONS=${HTTP_LARGE_FUNCTIONS:-8000}

. bench/lib.sh
if [ -n "${LATTICE:-}" ]; then
  BENCH_LATTICE=$LATTICE
fi
bench_prepare curl
LATTICE=${BENCH_LATTICE:-target/release/lattice}
# bench-a's own build, so the examples' target keeps the default http-large.
HTTP_LARGE_FUNCTIONS=$FUNCTIONS cargo build --release --quiet --target wasm32-wasip2 \
  --manifest-path examples/Cargo.toml --target-dir "$WORK/examples-target" -p http-large
LARGE=$WORK/examples-target/wasm32-wasip2/release/http_large.wasm

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true; }
die() {
  echo "$1" >&2
  for log in "$WORK"/*.log; do echo "--- $(basename "$log"):" >&2; tail -n 20 "$log" >&2; done
  exit 1
}

start_hub
declare -A ZONE=([node-a]=a [node-b]=a [node-c]=b) PORT=() PID=()
for n in node-a node-b node-c; do PORT[$n]=$(free_port); mkdir -p "$WORK/$n-config"; done
start_node() { # name; its log is appended to
  local n=$1
  "$LATTICE" up --name "$n" --label "zone=${ZONE[$n]}" --label "node=$n" \
    --leaf-url "nats-leaf://127.0.0.1:$HUB_LEAF" --js-domain hub --heartbeat-interval 1s \
    --config-dir "$WORK/$n-config" --data-dir "$WORK/$n" --http-addr "127.0.0.1:${PORT[$n]}" --admin-addr 127.0.0.1:0 \
    --log info,lattice::host::cache=debug 2>>"$WORK/$n.log" &
  PID[$n]=$!
  PIDS+=("${PID[$n]}")
}
wait_up() {
  for _ in $(seq 1200); do
    grep -q 'lattice node is up' "$WORK/$1.log" 2>/dev/null && return 0
    kill -0 "${PID[$1]}" 2>/dev/null || break
    sleep 0.05
  done
  die "$1 did not come up"
}
host_names() { # via
  { "$LATTICE" get hosts -o json --data-dir "$WORK/$1" 2>/dev/null || true; } | python3 -c '
import json, sys
try: hosts = json.load(sys.stdin)
except ValueError: hosts = []
for h in hosts: print(h.get("name", ""))'
}
holders() { # via app: "NAME REPLICAS" per host running the app
  { "$LATTICE" get inventory -o json --data-dir "$WORK/$1" 2>/dev/null || true; } | python3 -c '
import json, sys
try: inventory = json.load(sys.stdin)
except ValueError: inventory = []
for h in inventory:
    n = sum(c.get("replicas", 0) for c in h.get("components", []) if c.get("app") == sys.argv[1])
    if n > 0: print(h.get("name", ""), n)' "$2"
}
app_state() { # via app
  { "$LATTICE" app status "$2" -o json --data-dir "$WORK/$1" 2>/dev/null || true; } | python3 -c '
import json, sys
try: print(json.load(sys.stdin).get("state", ""))
except (ValueError, AttributeError): print("")'
}
has_line() { [[ $'\n'$1$'\n' == *$'\n'"$2"$'\n'* ]]; }

manifest() { # app wasm path requirement-key requirement-value
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
        image: file://$2
      traits:
        - type: spreadscaler
          properties:
            instances: 1
            spread:
              - name: only
                requirements:
                  $4: $5
$(http_server_link web "$3")
EOF
}
# A copy of the large wasm with a custom section naming round R appended: a new artifact.
variant() { # round → path
  python3 - "$LARGE" "$WORK/large-$1.wasm" "$1" <<'EOF'
import sys
def leb(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n: return bytes(out)
name, payload = b"bench-round", sys.argv[3].encode()
body = leb(len(name)) + name + payload
open(sys.argv[2], "wb").write(open(sys.argv[1], "rb").read() + b"\x00" + leb(len(body)) + body)
EOF
  echo "$WORK/large-$1.wasm"
}

for n in node-a node-b node-c; do start_node "$n"; done
for n in node-a node-b node-c; do wait_up "$n"; done
for _ in $(seq 600); do [ "$(host_names node-c | sort | tr '\n' ' ')" = "node-a node-b node-c " ] && break; sleep 0.05; done

manifest bench-b "$WASM" /bench-b zone a > "$WORK/bench-b.yaml"
"$LATTICE" app deploy "$WORK/bench-b.yaml" --data-dir "$WORK/node-c" >/dev/null || die "deploying bench-b failed"
URL="http://127.0.0.1:${PORT[node-c]}/bench-b"

settle() { # until bench-b runs on one node for 3 s and answers; sets HOLDER
  local deadline=$(( $(now_ms) + 90000 )) h stable_since=0 last=
  while [ "$(now_ms)" -lt "$deadline" ]; do
    h=$(holders node-c bench-b)
    if [ "$(app_state node-c bench-b)" = deployed ] && [ "$(printf '%s\n' "$h" | grep -c .)" = 1 ] \
       && [ "$(http_code "$URL")" = 200 ]; then
      h=${h%% *}
      if [ "$h" != "$last" ]; then last=$h; stable_since=$(now_ms); fi
      if [ $(( $(now_ms) - stable_since )) -ge 3000 ]; then HOLDER=$h; return 0; fi
    else
      last=
    fi
    sleep 0.2
  done
  die "bench-b did not settle on one node"
}

PLAIN=() SLOW=() COMPILES=()
for r in $(seq $(( 2 * ROUNDS ))); do
  kind=plain; [ $(( r % 2 )) = 0 ] && kind=slow
  settle
  victim=$HOLDER
  case $victim in node-a) survivor=node-b ;; node-b) survivor=node-a ;; *) die "bench-b runs on ${victim:-no node}" ;; esac
  vpid=${PID[$victim]}
  children=$(cat /proc/"$vpid"/task/*/children 2>/dev/null || true)
  compiled_before=$(grep -c 'compiled component' "$WORK/$survivor.log" || true)
  rm -f "$WORK/$survivor/cache/components/"*.cwasm
  if [ "$kind" = slow ]; then
    manifest bench-a "$(variant "$r")" /bench-a node "$survivor" > "$WORK/bench-a.yaml"
    "$LATTICE" app deploy "$WORK/bench-a.yaml" --data-dir "$WORK/node-c" >/dev/null || die "deploying bench-a failed"
  fi
  t0=$(now_ms)
  kill -KILL "$vpid"
  wait "$vpid" 2>/dev/null || true
  kept=(); for p in "${PIDS[@]}"; do [ "$p" = "$vpid" ] || kept+=("$p"); done; PIDS=("${kept[@]}")
  answered=
  while [ $(( $(now_ms) - t0 )) -lt 120000 ]; do
    if has_line "$(holders node-c bench-b | cut -d' ' -f1)" "$survivor" && [ "$(http_code "$URL")" = 200 ]; then
      answered=$(now_ms); break
    fi
    sleep 0.05
  done
  [ -n "$answered" ] || die "round $r: bench-b did not answer from $survivor within 120 s of killing $victim"
  took=$(( answered - t0 ))
  note=
  if [ "$kind" = slow ]; then
    SLOW+=("$took")
    # bench-a's compile on the survivor: its first "compiled component" line since the round began.
    for _ in $(seq 1200); do
      [ "$(grep -c 'compiled component' "$WORK/$survivor.log" || true)" -gt "$compiled_before" ] && break
      sleep 0.1
    done
    ms=$(grep 'compiled component' "$WORK/$survivor.log" | tail -n +$(( compiled_before + 1 )) \
      | sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p' | sort -n | tail -1)
    COMPILES+=("${ms:-?}")
    note="  (bench-a's compile on $survivor: ${ms:-?} ms)"
    "$LATTICE" app undeploy bench-a --data-dir "$WORK/node-c" >/dev/null 2>&1 || die "undeploying bench-a failed"
  else
    PLAIN+=("$took")
  fi
  printf 'round %-2s %-5s kill %s → bench-b answers from %s: %6d ms%s\n' "$r" "$kind" "$victim" "$survivor" "$took" "$note"
  for _ in $(seq 200); do
    alive=; for c in $children; do kill -0 "$c" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break; sleep 0.05
  done
  start_node "$victim"
  for _ in $(seq 1200); do has_line "$(host_names node-c)" "$victim" && break; sleep 0.05; done
done

echo
echo "failover of bench-b, plain: median $(median "${PLAIN[@]}") ms (rounds: ${PLAIN[*]})"
echo "failover of bench-b, with bench-a compiling on the survivor: median $(median "${SLOW[@]}") ms (rounds: ${SLOW[*]}; bench-a's compile: ${COMPILES[*]} ms)"
echo "result|slow-start failover with a compile vs none|$(median "${SLOW[@]}")|$(median "${PLAIN[@]}")|ms|$(ratio "$(median "${SLOW[@]}")" "$(median "${PLAIN[@]}")")|-"
