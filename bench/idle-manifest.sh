#!/usr/bin/env bash
# Idle CPU of a node whose config dir holds a 50 MB manifest file (issue 12): a standalone node
# (its own nats-server with JetStream) with the file `huge.yaml` (a valid manifest padded to
# 50 MB by one annotation) and one ordinary manifest beside it. Once the node is up and the
# ordinary app answers, the script waits 5 s, then reads utime+stime of the `lattice` process
# (and, separately, of its nats-server child) from /proc/<pid>/stat over 30 s and prints the
# share of one core each used.
#
#   bench/idle-manifest.sh              builds and measures target/release/lattice
#   bench/idle-manifest.sh BINARY       measures BINARY (e.g. target/debug/lattice), built
#                                       examples assumed
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/lib.sh
if [ $# -ge 1 ]; then
  LATTICE=$1
  WASM=$PWD/examples/target/wasm32-wasip2/release/http_hello.wasm
  WORK=$(mktemp -d)
  PIDS=()
  trap bench_cleanup EXIT
else
  bench_prepare curl
  LATTICE=${BENCH_LATTICE:-target/release/lattice}
fi
SECONDS_MEASURED=30
PORT=$(free_port)
mkdir -p "$WORK/config"

manifest() { app_manifest "$1" "$WASM" "$2"; } # app path
manifest fine /fine > "$WORK/config/fine.yaml"
# 50 MB: the same manifest with a 50 MB description annotation.
{
  manifest huge /huge | sed -n '1,6p'
  printf '    description: "'
  head -c $((50 * 1024 * 1024)) /dev/zero | tr '\0' 'x'
  printf '"\n'
  manifest huge /huge | sed -n '7,$p'
} > "$WORK/config/huge.yaml"
echo "huge.yaml: $(stat -c %s "$WORK/config/huge.yaml") bytes"

"$LATTICE" up --name solo --config-dir "$WORK/config" --data-dir "$WORK/data" \
  --http-addr "127.0.0.1:$PORT" 2>"$WORK/node.log" &
NODE=$!
PIDS+=("$NODE")
for _ in $(seq 1200); do
  grep -q 'lattice node is up' "$WORK/node.log" && break
  kill -0 "$NODE" 2>/dev/null || { tail -n 30 "$WORK/node.log" >&2; exit 1; }
  sleep 0.05
done
for _ in $(seq 400); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/fine")" = 200 ] && break
  sleep 0.05
done
NATS=$(pgrep -P "$NODE" nats-server || true)
sleep 5

ticks() { # pid: utime + stime in clock ticks (fields 14 and 15 of /proc/<pid>/stat)
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
HZ=$(getconf CLK_TCK)
node_before=$(ticks "$NODE"); nats_before=${NATS:+$(ticks "$NATS")}
sleep "$SECONDS_MEASURED"
node_after=$(ticks "$NODE"); nats_after=${NATS:+$(ticks "$NATS")}

share() { awk -v d="$1" -v hz="$HZ" -v s="$SECONDS_MEASURED" 'BEGIN { printf "%.2f", 100 * d / hz / s }'; }
echo "lattice process: $(share $((node_after - node_before))) % of one core over ${SECONDS_MEASURED} s idle"
echo "result|idle CPU with a 50 MB manifest|$(share $((node_after - node_before)))|-|% core|-|-"
[ -n "$NATS" ] && echo "its nats-server:  $(share $((nats_after - nats_before))) % of one core"
echo "huge.yaml in the log: $(grep -c 'huge.yaml' "$WORK/node.log") line(s)"
grep 'huge.yaml' "$WORK/node.log" | head -n 3 | cut -c1-300
