#!/usr/bin/env bash
# Installs what a fresh machine with only a Rust toolchain lacks:
# - clang and libclang, which RocksDB's Rust bindings (bindgen) need to build;
# - with `test`: prometheus (with promtool), which the metrics tests run
#   against, and chromium, which drives the dashboard's browser test.
# Idempotent and quiet when everything is already there.
set -euo pipefail
mode="${1:-build}"

have_libclang() {
  ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' && command -v clang >/dev/null 2>&1
}
have_prometheus() {
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1
}
have_chromium() {
  [ "$mode" != test ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

packages=()
have_libclang || packages+=(clang libclang-dev)
if [ "$mode" = test ]; then
  have_prometheus || packages+=(prometheus)
  have_chromium || packages+=(chromium)
fi
if [ ${#packages[@]} -eq 0 ]; then
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
