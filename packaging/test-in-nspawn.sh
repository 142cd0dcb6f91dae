#!/usr/bin/env bash
# The Debian package under a real systemd: boots a minimal Debian 12 with `systemd-nspawn
# --boot` and, inside it, installs the .deb, checks that installing enabled and started
# nothing, starts lattice.service (standalone: no creds file), waits for READY=1 (systemctl
# start returns then), checks the unit is active, an app answers on the ingress (a component
# compiled and run under the unit's sandboxing), /readyz (when the binary has the admin
# endpoint), that a creds file in /etc/credstore reaches the service as
# $CREDENTIALS_DIRECTORY/default.creds readable by the service's user only, that root's CLI
# (`lattice get hosts`, `lattice app list`) reaches the node, that the node
# outlives WatchdogSec without a restart, that it stops cleanly, and that `dpkg --purge`
# removes its DynamicUser state. Run as root:
#
#   packaging/test-in-nspawn.sh [LATTICE.deb]
#
# The .deb defaults to the newest target/debian/lattice_*.deb (packaging/test-deb.sh or
# `cargo deb` make one). The base rootfs (debootstrap of bookworm, minbase with systemd, curl
# and nats-server) is made once under ~/.cache/lattice-ci/nspawn-bookworm; each run boots a
# copy of it, removed afterwards. Needs systemd-container and debootstrap (installed if missing)
# and Debian's package mirror. .ci/run runs it after packaging/test-deb.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-in-nspawn: FAILED: $*" >&2; exit 1; }
step() { echo "test-in-nspawn: $*"; }
[ "$(id -u)" -eq 0 ] || fail "run as root (systemd-nspawn)"

deb=${1:-$(ls -t target/debian/lattice_*.deb 2>/dev/null | head -n 1 || true)}
[ -n "$deb" ] && [ -f "$deb" ] || fail "no .deb: give its path, or build one (packaging/test-deb.sh)"
wasm=examples/target/wasm32-wasip2/release/http_hello.wasm
if [ ! -f "$wasm" ]; then
  cargo build --release --quiet --target wasm32-wasip2 --manifest-path examples/Cargo.toml
fi

missing=()
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

started=$SECONDS
cache="${XDG_CACHE_HOME:-$HOME/.cache}/lattice-ci"
base="$cache/nspawn-bookworm"
if [ ! -f "$base/.complete" ]; then
  rm -rf "$base"
  mkdir -p "$cache"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,nats-server \
    bookworm "$base" http://deb.debian.org/debian >"$cache/nspawn-bookworm.log" 2>&1 \
    || fail "debootstrap failed: see $cache/nspawn-bookworm.log"
  touch "$base/.complete"
  step "made the base rootfs in $((SECONDS - started)) s"
fi

run=$(mktemp -d /var/tmp/lattice-nspawn.XXXXXX)
nspawn_pid=
cleanup() {
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    # SIGTERM: nspawn asks the container's systemd to power off.
    kill -TERM "$nspawn_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    # Still there (the container's init had not got as far as acting on it): kill its
    # children, the container's PID 1 among them, which ends every process of the container,
    # then nspawn; killing nspawn alone would leave the container running.
    if kill -0 "$nspawn_pid" 2>/dev/null; then
      for child in $(ps -o pid= --ppid "$nspawn_pid" 2>/dev/null || true); do
        kill -KILL "$child" 2>/dev/null || true
      done
      kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    wait "$nspawn_pid" 2>/dev/null || true
  fi
  rm -rf "$run"
}
trap cleanup EXIT

cp -a "$base" "$run/root"
cp "$deb" "$run/root/root/lattice.deb"
# The example app of `lattice init`, with the component it names next to it.
target/debug/lattice init "$run/init" >/dev/null 2>&1 || cargo run --quiet -- init "$run/init" >/dev/null
cp "$run/init/http-hello.yaml" "$wasm" "$run/root/root/"

# --register=no and --keep-unit: there is no systemd (machined, a bus) on the host to talk to.
# --private-network: the container's loopback is its own (ports 8000, 9464, 4222 of the host's
# are not touched).
booted=$SECONDS
systemd-nspawn --quiet --register=no --keep-unit --private-network --directory="$run/root" \
  --machine=lattice-test --boot >"$run/console.log" 2>&1 </dev/null &
nspawn_pid=$!
leader=
for _ in $(seq 200); do
  # The container's PID 1, once nspawn's own helper children have become it.
  leader=$(ps -o pid=,comm= --ppid "$nspawn_pid" 2>/dev/null | awk '$2 == "systemd" { print $1 }' || true)
  [ -n "$leader" ] && break
  kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited: $(cat "$run/console.log")"
  sleep 0.05
done
[ -n "$leader" ] || fail "no container init after 10 s: $(cat "$run/console.log")"
inside() { nsenter --target "$leader" --mount --uts --ipc --net --pid -- "$@"; }
state=
for _ in $(seq 600); do
  # Fails until the container's D-Bus is up; then waits for the boot to finish.
  state=$(timeout 60 nsenter --target "$leader" --mount --uts --ipc --net --pid -- \
    systemctl is-system-running --wait 2>&1 || true)
  case "$state" in running | degraded | maintenance | stopping) break ;; esac
  sleep 0.1
done
case "$state" in
  running) ;;
  # A unit of the minimal system failed (listed); lattice's own checks follow.
  degraded) step "booted degraded: $(inside systemctl --failed --plain --no-legend | awk '{ print $1 }' | tr '\n' ' ')" ;;
  *) fail "the container's systemd is $state: $(tail -n 20 "$run/console.log")" ;;
esac
step "booted: $(inside systemctl --version | head -n 1) in $((SECONDS - booted)) s"

inside dpkg -i /root/lattice.deb >/dev/null
[ "$(inside systemctl is-enabled lattice || true)" = disabled ] || fail "installing enabled lattice"
[ "$(inside systemctl is-active lattice || true)" = inactive ] || fail "installing started lattice"
step "installed; lattice.service disabled and inactive"

inside cp /root/http-hello.yaml /root/http_hello.wasm /etc/lattice/
t0=$SECONDS
inside systemctl enable --now lattice 2>/dev/null || {
  inside journalctl -u lattice --no-pager | tail -n 30 >&2
  fail "systemctl enable --now lattice"
}
step "systemctl enable --now lattice returned (READY=1) after $((SECONDS - t0)) s"
[ "$(inside systemctl is-active lattice)" = active ] || fail "lattice.service is not active"
body=$(inside curl -fsS --max-time 10 http://127.0.0.1:8000/hello) \
  || fail "GET /hello: $(inside journalctl -u lattice --no-pager | tail -n 30)"
[[ "$body" == "Hello from lattice: /hello"* ]] || fail "GET /hello answered: $body"
step "GET 127.0.0.1:8000/hello: $body"
if inside /usr/bin/lattice up --help | grep -q -- '--admin-addr'; then
  code=$(inside curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://127.0.0.1:9464/readyz)
  [ "$code" = 200 ] || fail "GET 127.0.0.1:9464/readyz: $code"
  step "GET 127.0.0.1:9464/readyz: 200"
else
  step "this binary has no --admin-addr: /readyz not checked"
fi
uid=$(inside stat -c %u "/proc/$(inside systemctl show -P MainPID lattice)")
[ "$uid" != 0 ] || fail "the node runs as root"

# A creds file in the credential store reaches the service as the service's own file.
inside install -d -m 0700 /etc/credstore
inside sh -c 'umask 077; echo "not a real creds file" >/etc/credstore/lattice.creds'
inside systemctl restart lattice
cred=/run/credentials/lattice.service/default.creds
uid=$(inside stat -c %u "/proc/$(inside systemctl show -P MainPID lattice)")
[ "$(inside stat -c '%u %a' "$cred")" = "$uid 400" ] \
  || fail "$cred: $(inside stat -c '%u %a' "$cred") (node uid $uid)"
inside cmp -s "$cred" /etc/credstore/lattice.creds || fail "$cred differs from the file on disk"
step "/etc/credstore/lattice.creds (root 0600) reaches the node (uid $uid) as $cred, mode 400"
inside rm /etc/credstore/lattice.creds

# root's CLI reaches the service's node through its state dir (/var/lib/lattice).
hosts=$(inside /usr/bin/lattice get hosts -o json) || fail "lattice get hosts as root: $hosts"
name=$(inside cat /proc/sys/kernel/hostname)
grep -q "\"name\": \"$name\"" <<<"$hosts" || fail "lattice get hosts lacks node $name: $hosts"
apps=$(inside /usr/bin/lattice app list) || fail "lattice app list as root: $apps"
grep -Eq '^http-hello +v0\.1\.0 +deployed' <<<"$apps" || fail "lattice app list: $apps"
step "as root, lattice get hosts and lattice app list answer (http-hello deployed)"

# WatchdogSec=30s: a node that sends no WATCHDOG=1 is killed and restarted within it, so an
# active node without restarts 40 s on is one that keeps sending it.
sleep 40
restarts=$(inside systemctl show -P NRestarts lattice)
[ "$(inside systemctl is-active lattice)" = active ] && [ "$restarts" = 0 ] \
  || fail "after 40 s: $(inside systemctl is-active lattice), $restarts restarts: $(inside journalctl -u lattice --no-pager | grep -i watchdog | tail -n 3)"
step "40 s later: active, no restart (WATCHDOG=1 arrives)"

inside systemctl stop lattice
result=$(inside systemctl show -P Result lattice)
[ "$result" = success ] || fail "stopping lattice: result $result"
[ -d "$run/root/var/lib/private/lattice" ] || fail "the node's state is not in /var/lib/private/lattice"
inside dpkg --purge lattice >/dev/null
for path in /var/lib/private/lattice /var/lib/lattice /etc/lattice/lattice.toml /usr/bin/lattice; do
  [ ! -e "$run/root$path" ] && [ ! -L "$run/root$path" ] || fail "dpkg --purge left $path"
done
step "stopped cleanly; dpkg --purge removed /var/lib/private/lattice and /var/lib/lattice"
step "passed in $((SECONDS - started)) s"
