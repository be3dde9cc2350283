#!/usr/bin/env bash
# The Debian 12 minbase root both the end-to-end tier (packaging/e2e.sh) and the VM image
# (packaging/vm/image.sh) start from: debootstrap'ed once per machine into a tarball under
# target/. Prints the tarball's path as its only stdout line.
# Usage: packaging/bookworm-base.sh   (root; needs debootstrap and Debian's mirror)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'bookworm-base.sh: %s\n' "$*" >&2; }
command -v debootstrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=target/e2e
base="$cache/bookworm-minbase.tar"
mkdir -p "$cache"
if [ ! -f "$base" ]; then
  log "debootstrap --variant=minbase bookworm (once per machine)"
  t0=$(date +%s)
  rm -rf "$cache/build"
  debootstrap --variant=minbase bookworm "$cache/build" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  tar -C "$cache/build" -cf "$base.tmp" . && mv "$base.tmp" "$base" && rm -rf "$cache/build"
  log "debootstrap took $(( $(date +%s) - t0 )) s"
fi
echo "$(pwd)/$base"
