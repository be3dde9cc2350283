#!/bin/sh
# Make Debian's waagent (azurelinuxagent 2.7.3.0) importable without installing the package
# (installing would run its postinst and start a service). Idempotent.
# Prints, as its only stdout line, the directory to put on PYTHONPATH.
#   WAAGENT_DIR  cache dir (default: <repo>/target/conformance/waagent, where harness.py looks)
set -eu
REPO=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${WAAGENT_DIR:-$REPO/target/conformance/waagent}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PYDIR="$DIR/root/usr/lib/python3/dist-packages"

if [ ! -f "$PYDIR/azurelinuxagent/ga/exthandlers.py" ]; then
    deb=$(ls "$DIR"/waagent_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        # apt-get download writes into the cwd; a fresh machine may have no package lists yet.
        if ! (cd "$DIR" && apt-get download waagent >&2); then
            apt-get update >&2
            (cd "$DIR" && apt-get download waagent >&2)
        fi
        deb=$(ls "$DIR"/waagent_*.deb | head -n1)
    fi
    rm -rf "$DIR/root"
    dpkg-deb -x "$deb" "$DIR/root"
fi
[ -f "$PYDIR/azurelinuxagent/ga/exthandlers.py" ] || { echo "azurelinuxagent not found in $deb" >&2; exit 1; }

. "$(dirname "$0")/distro.sh"
PYTHONPATH="$PYDIR" python3 -c 'import azurelinuxagent.ga.exthandlers' >&2
echo "$PYDIR"
