#!/usr/bin/env bash
# The Debian package, end to end (CI runs it after the tests, as root): builds the .deb with
# cargo-deb from the dev-profile binary the tests built (no release build of wasmtime), checks
# its Depends, installs it with dpkg -i (apt-get install -f for its dependency), checks what
# it installed (binary, unit, conffile), that it enabled nothing, `systemd-analyze verify` of
# the installed unit, `lattice --version`, then that `dpkg -r` keeps the node's state and
# `dpkg --purge` leaves no file of the package and no state. The machine is left as found:
# the package is purged on any exit, and the script refuses to start where a lattice package,
# config or state is already there (it would remove them).
#
# cargo-deb is installed from crates.io once, under ~/.cache/lattice-ci, version-checked.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-deb: FAILED: $*" >&2; exit 1; }
step() { echo "test-deb: $*"; }
# A command that fails outside a check (set -e ends the script) still says so.
trap 'echo "test-deb: FAILED: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR
[ "$(id -u)" -eq 0 ] || fail "run as root (it installs and purges the lattice package with dpkg)"

CARGO_DEB_VERSION=3.8.0
cache="${XDG_CACHE_HOME:-$HOME/.cache}/lattice-ci"
deb_root="$cache/cargo-deb-$CARGO_DEB_VERSION"
if ! "$deb_root/bin/cargo-deb" --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  rm -rf "$deb_root"
  build_dir=$(mktemp -d)
  # A failed build leaves no build dir (nor a half-installed cargo-deb) behind.
  trap 'rm -rf "$build_dir" "$deb_root"' EXIT
  cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION" \
    --root "$deb_root" --target-dir "$build_dir"
  rm -rf "$build_dir"
  trap - EXIT
fi

# What the package owns or makes, the state its service keeps, and what enabling it makes
# (the wants link, deb-systemd-helper's record of it): none may be here before.
state_paths=(/var/lib/lattice /var/lib/private/lattice)
owned_paths=(/usr/bin/lattice /usr/lib/systemd/system/lattice.service /etc/lattice)
enable_paths() {
  # The wants link of `systemctl enable`, and what deb-systemd-helper records of the unit
  # (lattice.service.dsh-also, and its copies of wants links) and of a mask.
  compgen -G '/etc/systemd/system/*.wants/lattice.service' || true
  find /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked \
    -name 'lattice.service*' 2>/dev/null || true
}
if dpkg-query -W -f='${Status}' lattice 2>/dev/null | grep -q 'installed'; then
  fail "a lattice package is installed on this machine; this test would purge it"
fi
for path in "${state_paths[@]}" "${owned_paths[@]}" $(enable_paths); do
  if [ -e "$path" ] || [ -L "$path" ]; then
    fail "$path exists; this test installs and purges the lattice package, which would remove it"
  fi
done

had_private=false
[ -d /var/lib/private ] && had_private=true
cleanup() {
  dpkg --purge lattice >/dev/null 2>&1 || true
  rm -rf /var/lib/private/lattice /var/lib/lattice
  if ! $had_private; then rmdir /var/lib/private 2>/dev/null || true; fi
}
trap cleanup EXIT

# The binary the tests ran, packaged as it is: built with the tests' targets, so that cargo
# resolves the same features (dev-dependencies included) and this is a no-op after
# `cargo nextest run`; `--bin lattice` alone resolves them without the dev-dependencies and
# rebuilds much of the graph (about 5 min on 2 cores).
cargo build --locked --quiet --bins --tests
started=$SECONDS
# cargo-deb 3.8 warns that it will refuse the dev profile some day: the pinned version takes it.
deb=$("$deb_root/bin/cargo-deb" --profile dev --no-build --fast --quiet | tail -n 1)
[ -f "$deb" ] || fail "cargo deb made no package (it printed: $deb)"
step "built $deb ($(du -h "$deb" | cut -f1)) in $((SECONDS - started)) s"

depends=$(dpkg-deb -f "$deb" Depends)
step "Depends: $depends"
grep -Eq '(^|, )nats-server($| |,)' <<<"$depends" || fail "Depends lacks nats-server: $depends"

dpkg -i "$deb" || DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq
[ "$(dpkg-query -W -f='${Status}' lattice)" = "install ok installed" ] || fail "lattice is not installed"

listed=$(dpkg -L lattice)
for path in /usr/bin/lattice /usr/lib/systemd/system/lattice.service /etc/lattice/lattice.toml \
  /usr/share/doc/lattice/README.Debian /usr/share/doc/lattice/copyright; do
  grep -qx "$path" <<<"$listed" || fail "dpkg -L lattice does not list $path"
  [ -f "$path" ] || fail "$path is not installed"
done
dpkg-query -W -f='${Conffiles}' lattice | grep -q '^ /etc/lattice/lattice.toml ' \
  || fail "/etc/lattice/lattice.toml is not a conffile"
cmp -s /etc/lattice/lattice.toml config/lattice.toml.example \
  || fail "/etc/lattice/lattice.toml is not config/lattice.toml.example"
step "dpkg -L lists the binary, the unit and the config"

version=$(/usr/bin/lattice --version)
[ "$version" = "$(target/debug/lattice --version)" ] || fail "/usr/bin/lattice --version printed: $version"
step "/usr/bin/lattice --version: $version"

# Installing enables nothing (and starts nothing: postinst starts no unit, see its text).
if compgen -G '/etc/systemd/system/*.wants/lattice.service' >/dev/null; then
  fail "installing enabled lattice.service"
fi

# Warnings (an unknown or malformed setting) leave its exit status 0: nothing may be printed.
verify=$(systemd-analyze verify /usr/lib/systemd/system/lattice.service 2>&1) \
  || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify warns: $verify"
step "systemd-analyze verify lattice.service: clean"

# State as the service leaves it (DynamicUser=yes): dpkg -r keeps it, --purge removes it.
mkdir -p -m 0700 /var/lib/private/lattice
ln -s private/lattice /var/lib/lattice
echo state >/var/lib/private/lattice/marker
dpkg -r lattice >/dev/null
[ ! -e /usr/bin/lattice ] || fail "dpkg -r left /usr/bin/lattice"
[ -f /var/lib/lattice/marker ] || fail "dpkg -r removed the node's state"
[ -f /etc/lattice/lattice.toml ] || fail "dpkg -r removed the conffile"
step "dpkg -r: program gone, state and config kept"

dpkg --purge lattice >/dev/null
# Every path the package listed is gone, but directories other packages own too (/usr/bin).
while IFS= read -r path; do
  [ "$path" = /. ] && continue
  if [ -e "$path" ] || [ -L "$path" ]; then
    [ -d "$path" ] && dpkg -S "$path" >/dev/null 2>&1 \
      || fail "dpkg --purge left $path"
  fi
done <<<"$listed"
for path in "${state_paths[@]}" /etc/lattice /etc/systemd/system/lattice.service \
  /etc/systemd/system/multi-user.target.wants/lattice.service $(enable_paths); do
  if [ -e "$path" ] || [ -L "$path" ]; then fail "dpkg --purge left $path"; fi
done
step "dpkg --purge: no file of the package, no state, no wants link or deb-systemd-helper state left"
step "passed"
