#!/usr/bin/env bash
# Installs what a fresh machine with only a Rust toolchain lacks to build
# abacus: clang and libclang, which RocksDB's Rust bindings (bindgen) need.
# Idempotent and quiet when everything is already there.
set -euo pipefail

have_libclang() {
  ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' && command -v clang >/dev/null 2>&1
}

if have_libclang; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: clang and libclang are needed to build RocksDB; install them with your package manager" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

echo "bootstrap: installing clang and libclang-dev (needed to build RocksDB's bindings)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends clang libclang-dev >/dev/null
have_libclang || { echo "bootstrap: libclang still not found after install" >&2; exit 1; }
