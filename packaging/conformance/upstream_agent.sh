#!/bin/sh
# Make the upstream guest agent (WALinuxAgent 2.15.0.1, the line Azure's HPC images ship)
# importable for harness.py. Its source is test input that is never part of this repository:
#   IBDRIVER_UPSTREAM_AGENT  the WALinuxAgent-<version>.tar.gz, or a directory holding
#                            azurelinuxagent/ (an unpacked tarball, or the dir above it)
# A tarball is unpacked under <repo>/target/conformance/upstream/ (again when it changed).
# Prints, as its only stdout line, the directory to put on PYTHONPATH (harness --agent-path).
# Exits 1 with a message on stderr when the variable is unset or does not lead to an agent.
set -eu
REPO=$(cd "$(dirname "$0")/../.." && pwd)
SRC=${IBDRIVER_UPSTREAM_AGENT:-}
die() { echo "upstream_agent.sh: $*" >&2; exit 1; }
[ -n "$SRC" ] || die "IBDRIVER_UPSTREAM_AGENT is unset (path to WALinuxAgent-2.15.0.1.tar.gz or its unpacked dir)"
[ -e "$SRC" ] || die "IBDRIVER_UPSTREAM_AGENT=$SRC does not exist"

# The dir holding azurelinuxagent/: DIR itself or its only child that holds it.
agent_root() {
    if [ -f "$1/azurelinuxagent/ga/exthandlers.py" ]; then echo "$1"; return; fi
    found=$(ls -d "$1"/*/azurelinuxagent/ga/exthandlers.py 2>/dev/null || true)
    [ "$(printf '%s\n' "$found" | grep -c .)" = 1 ] || return 0
    dirname "$(dirname "$(dirname "$found")")"
}

if [ -d "$SRC" ]; then
    PYDIR=$(agent_root "$(cd "$SRC" && pwd)")
    [ -n "$PYDIR" ] || die "no azurelinuxagent/ga/exthandlers.py in $SRC or in exactly one dir below it"
else
    case "$SRC" in *.tar.gz|*.tgz) ;; *) die "IBDRIVER_UPSTREAM_AGENT=$SRC is neither a directory nor a .tar.gz" ;; esac
    DEST=$REPO/target/conformance/upstream
    sum=$(sha256sum "$SRC" | cut -d' ' -f1)
    if [ "$(cat "$DEST/.sha256" 2>/dev/null || true)" != "$sum" ]; then
        rm -rf "$DEST" && mkdir -p "$DEST"
        tar -xzf "$SRC" -C "$DEST" || die "cannot unpack $SRC"
        echo "$sum" > "$DEST/.sha256"
    fi
    PYDIR=$(agent_root "$DEST")
    [ -n "$PYDIR" ] || die "$SRC holds no azurelinuxagent/ga/exthandlers.py (at its top or in one dir)"
fi

. "$(dirname "$0")/distro.sh"
PYTHONPATH="$PYDIR" python3 -c 'import azurelinuxagent.ga.exthandlers' >&2 ||
    die "cannot import azurelinuxagent from $PYDIR (see the error above)"
echo "$PYDIR"
