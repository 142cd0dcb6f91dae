#!/usr/bin/env bash
# Installs what building and running lattice needs on Debian/Ubuntu: nats-server (Debian's
# package), the wasm32-wasip2 Rust target (for the example components), cargo-nextest (the
# test runner), python3-venv (CI installs a second nats-server version from PyPI in a venv), and
# for the Debian package's test (packaging/test-deb.sh) systemd (systemd-analyze) and dpkg-dev
# (dpkg-shlibdeps, for cargo-deb's `$auto` dependencies), for its run under a real systemd
# (packaging/test-in-nspawn.sh) systemd-container (systemd-nspawn), debootstrap with Debian's
# archive keyring and procps (`ps`; a minimal Debian 12 has none of these three), and for the
# observability tests (tests/service/) Debian's prometheus, which a test starts on loopback, and
# a venv with PyPI's opentelemetry-proto for the OTLP receiver the trace tests run, and for the
# OCI tests (tests/oci/) docker-registry and skopeo; skipping
# what is already there.
# Run as root or with sudo available.
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
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
command -v ps >/dev/null 2>&1 || missing+=(procps)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# The OCI tests (tests/oci/): Debian's CNCF distribution registry, which a test starts on
# loopback, and skopeo, the second push tool; the registry's system-wide service (on :5000 where
# systemd runs) is not used.
missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  as_root systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
if ! command -v prometheus >/dev/null 2>&1; then
  as_root apt-get update -qq
  # Its recommends are exporters the tests do not use.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
  # Debian's package starts a system-wide Prometheus on :9090 where systemd runs; the tests
  # start their own.
  as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
# The OTLP/HTTP receiver of tests/service/traces.rs and inner.rs (tests/service/otlp_receiver.py):
# its versions are the ones tests/service/traces.rs names.
OTLP_PROTO_VERSION=1.45.2
OTLP_PROTOBUF_VERSION=7.36.2
otlp_venv="${XDG_CACHE_HOME:-$HOME/.cache}/lattice-ci/otlp-receiver-$OTLP_PROTO_VERSION"
if ! "$otlp_venv/bin/python" -c 'import opentelemetry.proto.collector.trace.v1.trace_service_pb2' >/dev/null 2>&1; then
  rm -rf "$otlp_venv"
  python3 -m venv "$otlp_venv"
  "$otlp_venv/bin/pip" install --quiet --disable-pip-version-check \
    "opentelemetry-proto==$OTLP_PROTO_VERSION" "protobuf==$OTLP_PROTOBUF_VERSION"
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
