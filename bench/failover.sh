#!/usr/bin/env bash
# Failover with the default flags: three loopback nodes on a hub (two labelled role=worker, one
# front node with no replica), each with its own leaf nats-server and the default
# --heartbeat-interval. App `one` has 1 replica on the workers, app `two` 2 (one per worker), both
# the hello component (so both workers have its code cached). Each round SIGKILLs the worker that
# runs `one` and sends GET /one and GET /two through the front node's ingress one after another,
# each on a new connection, for WATCH seconds. It prints, per round: how long after the kill
# `one` answers 200 again (its replica re-placed and started on the other worker), and the
# longest run of failing requests to `two` (from the first failing request's start to the end of
# the next good one; 0 when none failed). Then the heartbeat's size on the wire and what
# heartbeats cost at 1,000 nodes (every node hears every heartbeat: a full mesh through the hub).
#
# Counted answers: every answer of `two`, and those of `one` from its first 200 on, must be 2xx
# or 5xx within the outage measured; a non-2xx answer of `one` after it answered again fails the
# benchmark (non-zero exit, no figures).
#
#   bench/failover.sh [ROUNDS]        (env: WATCH=6 seconds of requests after each kill)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-5}
WATCH=${WATCH:-6}

. bench/lib.sh
bench_prepare curl python3
LATTICE=${BENCH_LATTICE:-target/release/lattice}

start_hub

# Two manifests from the hello example: name, route and replica count changed, replicas only on
# role=worker nodes.
manifest() { # name path instances
  sed -e "s#file://../target/wasm32-wasip2/release/http_hello.wasm#file://$WASM#" \
      -e "s#^  name: http-hello#  name: $1#" \
      -e "s#path: /\$#path: $2#" \
      -e "s#^\( *\)instances: .*\$#\1instances: $3\n\1spread:\n\1  - name: workers\n\1    requirements:\n\1      role: worker#" \
      examples/http-hello/wadm.yaml
}
mkdir -p "$WORK/manifests"
manifest one /one 1 > "$WORK/manifests/one.yaml"
manifest two /two 2 > "$WORK/manifests/two.yaml"
grep -q 'role: worker' "$WORK/manifests/one.yaml" && grep -q 'path: /two' "$WORK/manifests/two.yaml" \
  || { echo "could not write the manifests" >&2; exit 1; }

start_node() { # round name role http-port: default heartbeat flags
  local dir="$WORK/r$1-$2"
  mkdir -p "$dir/config"
  [ "$3" = worker ] && cp "$WORK/manifests/"*.yaml "$dir/config/"
  "$LATTICE" up --name "$2" --label "role=$3" --leaf-url "nats-leaf://127.0.0.1:$HUB_LEAF" \
    --js-domain hub --config-dir "$dir/config" --data-dir "$dir/data" --http-addr "127.0.0.1:$4" \
    --admin-addr 127.0.0.1:0 --log info,lattice::lattice::probe=debug 2>"$dir.log" &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  # No "Killed" notice from the shell when the victim dies.
  disown "$NODE_PID"
}

# GET http://127.0.0.1:PORT/PATH until it answers 200 (30 s).
wait_route() {
  for _ in $(seq 600); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1$2")" = 200 ] && return 0; sleep 0.05; done
  echo "GET $2 on port $1 never answered 200; log: $3" >&2; tail -n 30 "$3" >&2; exit 1
}

# The hosts through the front node, as `lattice get inventory -o json`.
inventory() { "$LATTICE" get inventory -o json --data-dir "$1" --lattice default; }

ANSWER=(); OUTAGE=(); HEARTBEAT_BYTES=
printf '%-6s %-8s %14s %18s %14s\n' round killed one_again_ms two_longest_fail_ms two_failed
for r in $(seq "$ROUNDS"); do
  # Fresh ports and nodes each round: a killed node's replicas come back elsewhere.
  P1=$(free_port); P2=$(free_port); PF=$(free_port)
  start_node "$r" w1 worker "$P1"; W1=$NODE_PID
  start_node "$r" w2 worker "$P2"; W2=$NODE_PID
  start_node "$r" front front "$PF"; FRONT=$NODE_PID
  wait_route "$PF" /one "$WORK/r$r-front.log"; wait_route "$PF" /two "$WORK/r$r-front.log"
  # Both replicas of `two` run (one per worker) and `one` runs on one of them.
  for _ in $(seq 200); do
    WHO=$(inventory "$WORK/r$r-front/data" | python3 -c '
import json, sys
hosts = json.load(sys.stdin)
def runs(name, app):
    return any(h["name"] == name and any(c["app"] == app and c["replicas"] > 0 for c in h["components"]) for h in hosts)
if runs("w1", "two") and runs("w2", "two"):
    print("w1" if runs("w1", "one") else "w2" if runs("w2", "one") else "")
') || true
    [ -n "$WHO" ] && break; sleep 0.1
  done
  [ -n "$WHO" ] || { echo "round $r: the replicas did not settle; front log:" >&2; tail -n 30 "$WORK/r$r-front.log" >&2; exit 1; }
  if [ -z "$HEARTBEAT_BYTES" ]; then
    INTERVAL_MS=$("$LATTICE" get hosts -o json --data-dir "$WORK/r$r-front/data" --lattice default \
      | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["heartbeat_interval_ms"])')
    # A heartbeat on the wire: the HostInfo JSON (as `get hosts` shows it) with `event` and
    # `seq`, its signature header and the subject (NATS HMSG framing aside).
    HEARTBEAT_BYTES=$("$LATTICE" get hosts -o json --data-dir "$WORK/r$r-front/data" --lattice default | python3 -c '
import json, sys
hosts = json.load(sys.stdin)
host = next(h for h in hosts if h["name"] == "w1")
body = json.dumps(dict(host, event="host_heartbeat", seq=1795000000000), separators=(",", ":"))
headers = "NATS/1.0\r\nLattice-Signature: " + "x" * 86 + "\r\n\r\n"
print(len(body) + len(headers) + len("lattice.default.evt.v1.host_heartbeat"))')
  fi
  # Every node has vetted the two others' probes (they answered one, PROTOCOL.md §Probes).
  for n in w1 w2 front; do
    for _ in $(seq 300); do
      [ "$(grep -c 'host answers probes' "$WORK/r$r-$n.log" || true)" -ge 2 ] && break; sleep 0.1
    done
    [ "$(grep -c 'host answers probes' "$WORK/r$r-$n.log" || true)" -ge 2 ] \
      || { echo "round $r: $n never vetted the others' probes" >&2; tail -n 30 "$WORK/r$r-$n.log" >&2; exit 1; }
  done
  VICTIM=$W1; [ "$WHO" = w2 ] && VICTIM=$W2
  read -r again longest failed < <(python3 - "$PF" "$VICTIM" "$WATCH" <<'EOF'
import http.client, os, signal, sys, time
port, victim, watch = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

def get(path):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", path)
        r = c.getresponse(); r.read(); c.close()
        return r.status
    except OSError:
        return 0

os.kill(victim, signal.SIGKILL)
killed = time.monotonic()
again = None; bad_after = 0
fail_start = None; longest = 0.0; failed = 0
while time.monotonic() - killed < watch:
    s = get("/one")
    if again is None and s == 200:
        again = time.monotonic() - killed
    elif again is not None and not 200 <= s < 300:
        bad_after += 1
    sent = time.monotonic()
    s = get("/two")
    if 200 <= s < 300:
        if fail_start is not None:
            longest = max(longest, time.monotonic() - fail_start)
            fail_start = None
    else:
        failed += 1
        if fail_start is None:
            fail_start = sent
if fail_start is not None:
    longest = max(longest, time.monotonic() - fail_start)
if again is None or bad_after:
    print(f"one: answered again {again}, {bad_after} failing answers after that", file=sys.stderr)
    sys.exit(1)
print(f"{again * 1000:.0f} {longest * 1000:.0f} {failed}")
EOF
  ) || { echo "round $r failed; front log:" >&2; tail -n 40 "$WORK/r$r-front.log" >&2; exit 1; }
  printf '%-6s %-8s %14s %18s %14s\n' "$r" "$WHO" "$again" "$longest" "$failed"
  ANSWER+=("$again"); OUTAGE+=("$longest")
  for p in $W1 $W2 $FRONT; do kill "$p" 2>/dev/null || true; done
  for p in $W1 $W2 $FRONT; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
done

MA=$(median "${ANSWER[@]}"); XA=$(printf '%s\n' "${ANSWER[@]}" | sort -n | tail -n1)
XO=$(printf '%s\n' "${OUTAGE[@]}" | sort -n | tail -n1)
echo "1-replica app answers again after the SIGKILL: median $MA ms, worst $XA ms (target <= 3000 ms)"
echo "2-replica app, longest run of failing requests: worst $XO ms (target <= 1000 ms)"
# Heartbeat cost at the nodes' (default) interval at 1,000 nodes: each node publishes one per
# interval and hears the other 999's; the hub delivers 1,000 x 999 per interval.
awk -v b="$HEARTBEAT_BYTES" -v ms="$INTERVAL_MS" 'BEGIN { n = 999 * 1000 / ms
  printf "heartbeat: %d bytes on the wire, every %d ms; at 1,000 nodes: per node %.0f msg/s in (%.2f MB/s); the hub %.0f msg/s out (%.0f MB/s)\n", b, ms, n, n*b/1e6, n*1000, n*1000*b/1e6 }'
echo "result|failover 1-replica answers again (median)|$MA|-|ms|-|<=3000 ms"
echo "result|failover 1-replica answers again (worst)|$XA|-|ms|-|<=3000 ms"
echo "result|failover 2-replica longest failing run (worst)|$XO|-|ms|-|<=1000 ms"
echo "result|heartbeat size|$HEARTBEAT_BYTES|-|bytes|-|-"
awk -v b="$HEARTBEAT_BYTES" -v ms="$INTERVAL_MS" 'BEGIN { n = 999 * 1000 / ms
  printf "result|heartbeats in per node at 1000 nodes|%.0f|-|msg/s|-|-\nresult|heartbeat bytes in per node at 1000 nodes|%.0f|-|bytes/s|-|-\n", n, n*b }'
