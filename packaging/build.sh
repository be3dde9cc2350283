#!/usr/bin/env bash
# Build the release zip the guest agent installs:
#   dist/<ProviderNameSpace>.<Type>-<Version>.zip
#     HandlerManifest.json          (at the root)
#     bin/ibdriver                  (stripped, glibc <= 2.17, so it runs on every supported distro)
# Works on a fresh Debian 12 machine: installs cargo-zigbuild (crates.io) and ziglang (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_GLIBC=2.17
TARGET=x86_64-unknown-linux-gnu
manifest=manifest/manifest.xml
field() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$manifest" | head -n1; }
ns=$(field ProviderNameSpace); type=$(field Type); version=$(field Version)
[ -n "$ns" ] && [ -n "$type" ] && [ -n "$version" ] || { echo "build.sh: cannot read $manifest" >&2; exit 1; }

log() { printf 'build.sh: %s\n' "$*" >&2; }

if ! command -v cargo-zigbuild >/dev/null 2>&1; then
  log "installing cargo-zigbuild"
  cargo install --locked --quiet cargo-zigbuild
fi
if ! command -v zig >/dev/null 2>&1 && ! python3 -c 'import ziglang' 2>/dev/null; then
  log "installing ziglang"
  python3 -m pip install --quiet --disable-pip-version-check ziglang 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages ziglang
fi
if ! command -v objdump >/dev/null 2>&1; then
  log "installing binutils"
  apt-get update -qq && apt-get install -y -qq binutils >/dev/null
fi

log "building $ns.$type $version for $TARGET (glibc $MAX_GLIBC)"
cargo zigbuild --release --locked --target "$TARGET.$MAX_GLIBC" --bin ibdriver
bin="${CARGO_TARGET_DIR:-target}/$TARGET/release/ibdriver"
strip "$bin" 2>/dev/null || true

# The newest glibc symbol version the binary needs must not pass MAX_GLIBC.
newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n1)
if [ -z "$newest" ]; then log "objdump found no GLIBC symbols in $bin"; exit 1; fi
if [ "$(printf '%s\n%s\n' "$newest" "$MAX_GLIBC" | sort -t. -k1,1n -k2,2n | tail -n1)" != "$MAX_GLIBC" ]; then
  log "$bin needs GLIBC_$newest, newer than $MAX_GLIBC"; exit 1
fi
if file "$bin" 2>/dev/null | grep -q 'not stripped'; then log "$bin is not stripped"; exit 1; fi
log "glibc check ok: newest symbol version GLIBC_$newest"
# The crash points (cargo feature fault-injection) are for tests only; their variable's name is
# in a binary exactly when they are compiled in.
if grep -qa IBDRIVER_FAULT_AT "$bin"; then log "$bin contains the test-only crash points (fault-injection)"; exit 1; fi

mkdir -p dist
zip="dist/$ns.$type-$version.zip"
python3 - "$zip" "$bin" <<'PY'
import sys, zipfile
out, binary = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out + ".tmp", "w", zipfile.ZIP_DEFLATED) as z:
    z.write("HandlerManifest.json", "HandlerManifest.json")
    info = zipfile.ZipInfo("bin/ibdriver", date_time=(2026, 1, 1, 0, 0, 0))
    info.external_attr = 0o755 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(binary, "rb") as f:
        z.writestr(info, f.read())
import os
os.replace(out + ".tmp", out)
PY
log "wrote $zip ($(stat -c %s "$zip") bytes; binary $(stat -c %s "$bin") bytes)"
echo "$zip"
