#!/usr/bin/env bash
# Installs what building and running lattice needs on Debian/Ubuntu: nats-server (Debian's
# package), the wasm32-wasip2 Rust target (for the example components), cargo-nextest (the
# test runner), python3-venv (CI installs a second nats-server version from PyPI in a venv), and
# for the Debian package's test (packaging/test-deb.sh) systemd (systemd-analyze) and dpkg-dev
# (dpkg-shlibdeps, for cargo-deb's `$auto` dependencies), skipping what is already there. Run as
# root or with sudo available.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
  # Debian's package also enables a system-wide nats-server service; lattice runs its own.
  as_root systemctl disable --now nats-server >/dev/null 2>&1 || true
fi
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
