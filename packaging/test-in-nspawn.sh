#!/usr/bin/env bash
# The Debian package under a real systemd: boots a minimal Debian 12 with `systemd-nspawn
# --boot` and, inside it, installs the .deb, checks that installing enabled and started
# nothing, starts lattice.service (standalone: no creds file), waits for READY=1 (systemctl
# start returns then), checks the unit is active, an app answers on the ingress (a component
# compiled and run under the unit's sandboxing), /readyz (when the binary has the admin
# endpoint), the unit's LimitNOFILE= and TimeoutStartSec= on the node, that root's CLI
# (`lattice get hosts`, `lattice app list`) reaches the node, that a file in /etc/credstore
# reaches the service as a credential readable by the service's user only (a drop-in's
# probe.creds, a name the node ignores), that a junk /etc/credstore/lattice.creds with a
# leaf-url fails the start with the node's error naming default.creds (so the unit's
# LoadCredential= hands that file to the node as default.creds), that installing the same
# .deb again while the unit runs restarts it and leaves it active and enabled, that the node
# outlives WatchdogSec without a restart, that it stops cleanly, and that `dpkg --purge`
# removes its DynamicUser state and the unit's enablement. Every command inside the container
# runs under `timeout 180`, the boot wait under one deadline. Run as root:
#
#   packaging/test-in-nspawn.sh [LATTICE.deb]
#
# The .deb defaults to the newest target/debian/lattice_*.deb (packaging/test-deb.sh or
# `cargo deb` make one). The base rootfs (debootstrap of bookworm, minbase with systemd, curl
# and nats-server) is made once under ~/.cache/lattice-ci/nspawn-bookworm; each run boots a
# copy of it, removed afterwards. Needs systemd-container, debootstrap and procps (installed if
# missing) and Debian's package mirror. .ci/run runs it after packaging/test-deb.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-in-nspawn: FAILED: $*" >&2; exit 1; }
step() { echo "test-in-nspawn: $*"; }
# A command that fails outside a check (set -e ends the script) still says so.
trap 'echo "test-in-nspawn: FAILED: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR
[ "$(id -u)" -eq 0 ] || fail "run as root (systemd-nspawn)"

deb=${1:-$(ls -t target/debian/lattice_*.deb 2>/dev/null | head -n 1 || true)}
[ -n "$deb" ] && [ -f "$deb" ] || fail "no .deb: give its path, or build one (packaging/test-deb.sh)"
wasm=examples/target/wasm32-wasip2/release/http_hello.wasm
if [ ! -f "$wasm" ]; then
  cargo build --release --quiet --target wasm32-wasip2 --manifest-path examples/Cargo.toml
fi

missing=()
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap debian-archive-keyring)
command -v ps >/dev/null 2>&1 || missing+=(procps)
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
# Every command inside is bounded: `timeout` runs in the container, so what it kills is the
# command itself (nsenter forks to enter the PID namespace; killing it would leave the child).
inside() { nsenter --target "$leader" --mount --uts --ipc --net --pid -- timeout 180 "$@"; }
# The node's main pid, failing when there is none (0: not running).
main_pid() {
  local pid
  pid=$(inside systemctl show -P MainPID lattice)
  [ -n "$pid" ] && [ "$pid" != 0 ] || fail "lattice.service has no main process: $(journal)"
  echo "$pid"
}
journal() { inside journalctl -u lattice --no-pager -n 30 2>&1 || true; }
state=
boot_deadline=$((SECONDS + 180))
while [ "$SECONDS" -lt "$boot_deadline" ]; do
  # Fails until the container's D-Bus is up; then waits for the boot to finish, never past
  # the deadline.
  state=$(nsenter --target "$leader" --mount --uts --ipc --net --pid -- \
    timeout "$((boot_deadline - SECONDS + 1))" systemctl is-system-running --wait 2>&1 || true)
  case "$state" in running | degraded | maintenance | stopping) break ;; esac
  kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited: $(tail -n 20 "$run/console.log")"
  sleep 0.1
done
case "$state" in
  running) ;;
  # A unit of the minimal system failed (listed); lattice's own checks follow.
  degraded) step "booted degraded: $(inside systemctl --failed --plain --no-legend | awk '{ print $1 }' | tr '\n' ' ')" ;;
  *) fail "the container's systemd is ${state:-not answering} after 180 s: $(tail -n 20 "$run/console.log")" ;;
esac
step "booted: $(inside systemctl --version | head -n 1) in $((SECONDS - booted)) s"

inside dpkg -i /root/lattice.deb >/dev/null
[ "$(inside systemctl is-enabled lattice || true)" = disabled ] || fail "installing enabled lattice"
[ "$(inside systemctl is-active lattice || true)" = inactive ] || fail "installing started lattice"
step "installed; lattice.service disabled and inactive"

inside cp /root/http-hello.yaml /root/http_hello.wasm /etc/lattice/
t0=$SECONDS
inside systemctl enable --now lattice 2>/dev/null || fail "systemctl enable --now lattice: $(journal)"
step "systemctl enable --now lattice returned (READY=1) after $((SECONDS - t0)) s"
[ "$(inside systemctl is-active lattice)" = active ] || fail "lattice.service is not active"
body=$(inside curl -fsS --max-time 10 http://127.0.0.1:8000/hello) || fail "GET /hello: $(journal)"
[[ "$body" == "Hello from lattice: /hello"* ]] || fail "GET /hello answered: $body"
step "GET 127.0.0.1:8000/hello: $body"
has_admin=false
help=$(inside /usr/bin/lattice up --help)
grep -q -- '--admin-addr' <<<"$help" && has_admin=true
readyz() {
  if $has_admin; then
    local code
    code=$(inside curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://127.0.0.1:9464/readyz || true)
    [ "$code" = 200 ] || fail "GET 127.0.0.1:9464/readyz ($1): $code"
    step "GET 127.0.0.1:9464/readyz ($1): 200"
  else
    step "this binary has no --admin-addr: /readyz not checked ($1)"
  fi
}
readyz "after enable --now"
pid=$(main_pid)
uid=$(inside stat -c %u "/proc/$pid")
[ "$uid" != 0 ] || fail "the node runs as root"
# LimitNOFILE=65536 (soft and hard) reaches the node, or as much of it as the container's
# init may give (systemd clamps to its own hard limit: a host without CAP_SYS_RESOURCE, as
# where this was written, caps the container at the host's); TimeoutStartSec is the finite 5min.
init_hard=$(inside cat /proc/1/limits | awk '/^Max open files/ { print $5 }')
want=65536
[ "$init_hard" != unlimited ] && [ "$init_hard" -lt "$want" ] && want=$init_hard
nofile=$(inside cat "/proc/$pid/limits" | awk '/^Max open files/ { print $4, $5 }')
[ "$nofile" = "$want $want" ] || fail "the node's open files limit (soft hard): $nofile, not $want $want"
timeout_start=$(inside systemctl show -P TimeoutStartUSec lattice)
[ "$timeout_start" = 5min ] || fail "TimeoutStartSec: $timeout_start"
step "the node runs as uid $uid, open files limit $nofile, TimeoutStartSec=$timeout_start"

# root's CLI reaches the service's node through its state dir (/var/lib/lattice).
hosts=$(inside /usr/bin/lattice get hosts -o json) || fail "lattice get hosts as root: $hosts"
name=$(inside cat /proc/sys/kernel/hostname)
grep -q "\"name\": \"$name\"" <<<"$hosts" || fail "lattice get hosts lacks node $name: $hosts"
apps=$(inside /usr/bin/lattice app list) || fail "lattice app list as root: $apps"
grep -Eq '^http-hello +v0\.1\.0 +deployed' <<<"$apps" || fail "lattice app list: $apps"
step "as root, lattice get hosts and lattice app list answer (http-hello deployed)"

# A file in the credential store reaches the service as a credential of its own user's, mode
# 400. Under a name the node ignores (probe.creds), so the node stays standalone and ready;
# the unit's own LoadCredential=default.creds:lattice.creds finds no lattice.creds meanwhile.
dropin=/etc/systemd/system/lattice.service.d
inside install -d -m 0700 /etc/credstore
inside sh -c 'umask 077; echo "probe, not a creds file" >/etc/credstore/lattice-probe.creds'
inside mkdir -p "$dropin"
inside sh -c "printf '[Service]\nLoadCredential=probe.creds:lattice-probe.creds\n' >$dropin/probe.conf"
inside systemctl daemon-reload
inside systemctl restart lattice || fail "systemctl restart lattice with probe.creds: $(journal)"
cred=/run/credentials/lattice.service/probe.creds
pid=$(main_pid)
uid=$(inside stat -c %u "/proc/$pid")
[ "$(inside stat -c '%u %a' "$cred")" = "$uid 400" ] \
  || fail "$cred: $(inside stat -c '%u %a' "$cred") (node uid $uid)"
inside cmp -s "$cred" /etc/credstore/lattice-probe.creds || fail "$cred differs from the file on disk"
[ ! -e "$run/root/run/credentials/lattice.service/default.creds" ] \
  || fail "default.creds is there without /etc/credstore/lattice.creds"
step "/etc/credstore/lattice-probe.creds (root 0600) reaches the node (uid $uid) as $cred, mode 400"

# The unit's own credential: a junk /etc/credstore/lattice.creds, with a leaf-url (to a
# loopback port nothing listens on) so the node takes default.creds as its NATS identity,
# must fail the start, the node's error naming default.creds: the file reached the node
# under that name. (The node checks the file before it connects anywhere.)
inside sh -c 'umask 077; echo "not a real creds file" >/etc/credstore/lattice.creds'
inside sh -c "printf '[Service]\nEnvironment=LATTICE_LEAF_URL=nats-leaf://127.0.0.1:9\n' >$dropin/leaf.conf"
inside systemctl daemon-reload
since=$(inside date +%s)
if inside systemctl restart lattice 2>/dev/null; then
  fail "lattice started with a junk default.creds: $(journal)"
fi
errors=$(inside journalctl -u lattice --no-pager -o cat --since "@$since" 2>&1 || true)
grep 'default\.creds' <<<"$errors" | grep -q 'not a NATS credentials file' \
  || fail "no error naming default.creds in the journal: $(tail -n 20 <<<"$errors")"
step "a junk /etc/credstore/lattice.creds with a leaf-url fails the start: $(grep -m 1 'default\.creds' <<<"$errors" | cut -c 1-200)"
inside systemctl stop lattice || fail "systemctl stop lattice (auto-restarting)"
inside systemctl reset-failed lattice || true
inside rm -r "$dropin" /etc/credstore/lattice.creds /etc/credstore/lattice-probe.creds
inside systemctl daemon-reload
inside systemctl start lattice || fail "systemctl start lattice (standalone again): $(journal)"
readyz "standalone again"

# An upgrade (the same .deb again) while the unit is enabled and running: postinst restarts
# it (restart-after-upgrade) and it comes back active.
pid_before=$(main_pid)
t0=$SECONDS
inside dpkg -i /root/lattice.deb >/dev/null || fail "dpkg -i again: $(journal)"
[ "$(inside systemctl is-active lattice || true)" = active ] || fail "after dpkg -i again: not active: $(journal)"
[ "$(inside systemctl is-enabled lattice || true)" = enabled ] || fail "after dpkg -i again: not enabled"
pid_after=$(main_pid)
[ "$pid_after" != "$pid_before" ] || fail "dpkg -i again did not restart lattice (restart-after-upgrade)"
readyz "after dpkg -i again"
step "dpkg -i of the same .deb again in $((SECONDS - t0)) s: enabled, active (pid $pid_before -> $pid_after)"

# WatchdogSec=30s: a node that sends no WATCHDOG=1 is killed and restarted within it, so an
# active node without a restart 40 s on is one that keeps sending it. (NRestarts counts only
# systemd's own restarts; compare, as the junk credential above may have caused some.)
restarts0=$(inside systemctl show -P NRestarts lattice)
sleep 40
restarts=$(inside systemctl show -P NRestarts lattice)
[ "$(inside systemctl is-active lattice)" = active ] && [ "$restarts" = "$restarts0" ] \
  || fail "after 40 s: $(inside systemctl is-active lattice), restarts $restarts0 -> $restarts: $(journal | grep -i watchdog | tail -n 3)"
step "40 s later: active, no restart (WATCHDOG=1 arrives)"

inside systemctl stop lattice || fail "systemctl stop lattice: $(journal)"
result=$(inside systemctl show -P Result lattice)
[ "$result" = success ] || fail "stopping lattice: result $result"
[ -d "$run/root/var/lib/private/lattice" ] || fail "the node's state is not in /var/lib/private/lattice"
# What purge must remove of the enablement: the wants link, and deb-systemd-helper's record
# of it (made when postinst re-enabled the unit on the second dpkg -i).
for path in /etc/systemd/system/multi-user.target.wants/lattice.service \
  /var/lib/systemd/deb-systemd-helper-enabled/lattice.service.dsh-also \
  /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/lattice.service; do
  [ -e "$run/root$path" ] || [ -L "$run/root$path" ] || fail "before purge, no $path"
done
inside dpkg --purge lattice >/dev/null || fail "dpkg --purge lattice"
for path in /var/lib/private/lattice /var/lib/lattice /etc/lattice/lattice.toml /usr/bin/lattice \
  /etc/systemd/system/multi-user.target.wants/lattice.service \
  $(cd "$run/root" && find var/lib/systemd/deb-systemd-helper-enabled \
    var/lib/systemd/deb-systemd-helper-masked -name 'lattice.service*' -printf '/%p\n' 2>/dev/null); do
  [ ! -e "$run/root$path" ] && [ ! -L "$run/root$path" ] || fail "dpkg --purge left $path"
done
step "stopped cleanly; dpkg --purge removed /var/lib/private/lattice, /var/lib/lattice, the wants link and deb-systemd-helper's state"
step "passed in $((SECONDS - started)) s"
