#!/usr/bin/env bash
# Increments per second of the counter example (examples/http-keyvalue-counter): every request is
# a `POST /<route>/<key>`, i.e. one wasi:keyvalue `atomics.increment` (compare-and-swap on the
# KV revision for NATS, a sled compare-and-swap loop for sled), answered with the new value.
# Three backends, each on its own route:
#   sled           keyvalue-sled: a sled tree in the node's data dir (node-local)
#   nats-local     keyvalue-nats on a standalone node: its own nats-server's JetStream
#   nats-hub       keyvalue-nats on a leaf node: the KV bucket lives in a hub nats-server's
#                  JetStream (domain `hub`), every KV call crosses leaf → hub (as in a lattice)
# Alternating `wrk` runs (CONNECTIONS connections, DURATION each), a fresh key per run; prints
# requests/s (= increments/s), p50 and p99 per run and the median per backend.
#
# Exactness, checked after every run (the script fails if a check fails): every answer is 200,
# no counter value is returned twice (a lost update would return one twice), and the final
# counter C equals the answers wrk saw plus the requests it cut off when the duration ended
# (a request in flight at the end is counted by the node but not by wrk): answers ≤ C ≤
# answers + connections + socket errors.
#
#   bench/keyvalue.sh [ROUNDS]        (env: DURATION=10s CONNECTIONS=32 THREADS=2)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
LATTICE=${BENCH_LATTICE:-target/release/lattice}

. bench/lib.sh
bench_prepare wrk curl
COUNTER=$PWD/examples/target/wasm32-wasip2/release/http_keyvalue_counter.wasm
[ -f "$COUNTER" ] || { echo "$COUNTER missing after the build" >&2; exit 1; }

die() { # message: prints it and the tail of every log, exits
  echo "$1" >&2
  for log in "$WORK"/*.log; do echo "--- $(basename "$log"):" >&2; tail -n 20 "$log" >&2; done
  exit 1
}

# A manifest of app APP: the counter on every node (daemonscaler), routed at ROUTE, with a
# wasi:keyvalue link to a capability of IMAGE whose target config is the YAML lines CONFIG
# (indented by 20 spaces; empty for none).
manifest() { # app route image config
  local config=
  [ -n "$4" ] && config=$'              config:\n                - name: kv\n                  properties:\n'"$4"
  cat <<EOF
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: $1
spec:
  components:
    - name: counter
      type: component
      properties:
        image: file://$COUNTER
      traits:
        - type: daemonscaler
          properties:
            instances: 1
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store, atomics]
            target:
              name: kv
$config
    - name: kv
      type: capability
      properties:
        image: $3
$(http_server_link counter "$2")
EOF
}
NATS_CONFIG=$'                    bucket: bench-counters\n                    enable_bucket_auto_create: \'true\''

# --- nodes -------------------------------------------------------------------------------------
start_hub
mkdir -p "$WORK/solo-config" "$WORK/leaf-config"
manifest kv-sled /sled wasmcloud+builtin://keyvalue-sled "" > "$WORK/solo-config/sled.yaml"
manifest kv-nats /nats ghcr.io/wasmcloud/keyvalue-nats:0.3.1 "$NATS_CONFIG" > "$WORK/solo-config/nats.yaml"
manifest kv-hub /hub ghcr.io/wasmcloud/keyvalue-nats:0.3.1 "$NATS_CONFIG" > "$WORK/leaf-config/hub.yaml"

SOLO=$(free_port); LEAF=$(free_port)
"$LATTICE" up --name solo --config-dir "$WORK/solo-config" --data-dir "$WORK/solo" \
  --http-addr "127.0.0.1:$SOLO" --admin-addr 127.0.0.1:0 2>"$WORK/solo.log" &
PIDS+=($!)
"$LATTICE" up --name leaf --leaf-url "nats-leaf://127.0.0.1:$HUB_LEAF" --js-domain hub \
  --config-dir "$WORK/leaf-config" --data-dir "$WORK/leaf" --http-addr "127.0.0.1:$LEAF" --admin-addr 127.0.0.1:0 2>"$WORK/leaf.log" &
PIDS+=($!)

declare -A URL=([sled]="http://127.0.0.1:$SOLO/sled" [nats-local]="http://127.0.0.1:$SOLO/nats"
                [nats-hub]="http://127.0.0.1:$LEAF/hub")
BACKENDS=(sled nats-local nats-hub)

# Status and body of a GET ("000" and nothing when there is no answer within 5 s).
get() { curl -s --max-time 5 -w '\n%{http_code}' "$1" 2>/dev/null || true; }
for b in "${BACKENDS[@]}"; do
  ok=
  for _ in $(seq 1200); do
    [ "$(get "${URL[$b]}/ready" | tail -n 1)" = 200 ] && { ok=1; break; }
    sleep 0.05
  done
  [ -n "$ok" ] || die "$b: no 200 on ${URL[$b]}/ready within 60 s"
done

# --- wrk script: POST, and per thread the 200s, other statuses and the values returned ---------
cat > "$WORK/post.lua" <<'EOF'
wrk.method = "POST"
ok, bad, odd, hi, seen = 0, 0, 0, 0, {}

function response(status, headers, body)
  if status ~= 200 then bad = bad + 1; return end
  ok = ok + 1
  local n = tonumber(body)
  if n == nil then odd = odd + 1; return end
  seen[#seen + 1] = n
  if n > hi then hi = n end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

function done(summary, latency, requests)
  local all, sum_ok, sum_bad, sum_odd, dup, top = {}, 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    sum_ok = sum_ok + t:get("ok"); sum_bad = sum_bad + t:get("bad"); sum_odd = sum_odd + t:get("odd")
    if t:get("hi") > top then top = t:get("hi") end
    for _, n in ipairs(t:get("seen")) do
      if all[n] then dup = dup + 1 else all[n] = true end
    end
  end
  local e = summary.errors
  io.write(string.format("counter-check ok=%d non200=%d unparsed=%d dup=%d max=%d errors=%d\n",
    sum_ok, sum_bad, sum_odd, dup, top, e.connect + e.read + e.write + e.timeout))
end
EOF

# One wrk run: prints "RPS P50_MS P99_MS OK NON200 UNPARSED DUP MAX ERRORS".
run_wrk() { # url
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 10s --latency -s "$WORK/post.lua" "$1" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    /^ +50%/ { p50=ms($2) }
    /^ +99%/ { p99=ms($2) }
    /^counter-check/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); c[kv[1]] = kv[2] } }
    END { printf "%d %.3f %.3f %s %s %s %s %s %s\n", rps, p50, p99, c["ok"], c["non200"], c["unparsed"], c["dup"], c["max"], c["errors"] }'
}

# The counter at URL once it stops changing (requests cut off by wrk may still be finishing).
settled_count() { # url
  local last= now
  for _ in $(seq 100); do
    now=$(get "$1")
    [ "$(tail -n 1 <<<"$now")" = 200 ] || die "GET $1: $now"
    now=$(head -n 1 <<<"$now")
    [ "$now" = "$last" ] && { echo "$now"; return 0; }
    last=$now
    sleep 0.3
  done
  die "the counter at $1 kept changing"
}

printf '%-6s %-11s %9s %8s %8s %8s %9s %6s %6s %4s %s\n' \
  round backend 'req/s' p50_ms p99_ms non200 counter 'seen' cutoff dup exact
declare -A RPS=()
FAILED=0
for r in $(seq "$ROUNDS"); do
  for b in "${BACKENDS[@]}"; do
    url="${URL[$b]}/round-$r"
    read -r rps p50 p99 ok bad odd dup top errors < <(run_wrk "$url")
    [ -n "$errors" ] || die "$b: wrk gave no counter-check line"
    count=$(settled_count "$url")
    cutoff=$(( count - ok ))
    exact=yes
    if [ "$bad" != 0 ] || [ "$odd" != 0 ] || [ "$dup" != 0 ] || [ "$cutoff" -lt 0 ] \
       || [ "$cutoff" -gt $(( CONNECTIONS + errors )) ] || [ "$top" -gt "$count" ]; then
      exact=NO; FAILED=1
    fi
    RPS[$b]="${RPS[$b]:-} $rps"
    printf '%-6s %-11s %9s %8s %8s %8s %9s %6s %6s %4s %s\n' \
      "$r" "$b" "$rps" "$p50" "$p99" "$bad" "$count" "$ok" "$cutoff" "$dup" "$exact"
  done
done

echo
echo "median increments/s over $ROUNDS rounds ($CONNECTIONS connections, $DURATION each):"
for b in "${BACKENDS[@]}"; do
  # shellcheck disable=SC2086 # the list of numbers is split on purpose
  printf '  %-11s %8s\n' "$b" "$(median ${RPS[$b]})"
done
if [ "$FAILED" = 1 ]; then
  echo "EXACTNESS CHECK FAILED (see the rows marked NO): non-200 answers, a value returned twice, or a counter off by more than the cut-off requests" >&2
  exit 1
fi
echo "exact: every answer 200, no value returned twice, counter = answers seen + requests cut off at the end"
for b in "${BACKENDS[@]}"; do
  # shellcheck disable=SC2086 # the list of numbers is split on purpose
  echo "result|keyvalue $b increments/s|$(median ${RPS[$b]})|-|req/s|-|-"
done
