#!/usr/bin/env bash
# Every test tier, on a fresh Debian 12 machine (as root; installs what it needs):
#   1. unit tests of the pure parts and parsers (fixture files)
#   2. integration tests: the built binary through a fake agent tree, fake host roots,
#      stub programs on PATH and a loopback IMDS
#   3. conformance: the real guest agent's code (Debian's waagent) drives the release zip
#      through install, enable, new settings, agent restart, disable and uninstall
#   4. end to end: the handler inside a debootstrap'ed Debian 12 root installs the inbox stack
#      with that root's real apt-get
#   5. VM: a booted Debian 12 guest under QEMU (real systemd, apt, modprobe, ip, reboots, the
#      real agent as a service, cloud-init), only the hardware recorded (packaging/vm/)
# Nothing touches this machine's real system.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\ntest.sh: %s\n' "$*" >&2; }

for tool in openssl python3; do
  command -v "$tool" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done

counts=$(mktemp)
trap 'rm -f "$counts"; [ -z "${image_pid:-}" ] || kill "$image_pid" 2>/dev/null || true' EXIT
log "layout: no import cycle, pure modules import nothing effectful, files and functions short, no pointer outside the repository"
python3 packaging/check-layout.py

# The VM tier's guest image is mostly downloads and dpkg: build it while the tests run.
mkdir -p target/vm
packaging/vm/image.sh >target/vm/image-build.log 2>&1 &
image_pid=$!

log "tiers 1-2: cargo test"
cargo test --locked --features fault-injection 2>&1 | tee -a "$counts"

manifest=manifest/manifest.xml
field() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$manifest" | head -n1; }
zip="dist/$(field ProviderNameSpace).$(field Type)-$(field Version).zip"
if [ ! -f "$zip" ] || [ -n "$(find handler Cargo.toml Cargo.lock HandlerManifest.json manifest -newer "$zip" -print -quit)" ]; then
  log "building $zip"
  packaging/build.sh >/dev/null
fi

log "tier 3: conformance under the real guest agent's code, one line per agent version"
agent_path=$(packaging/conformance/fetch_waagent.sh)
python3 packaging/conformance/harness.py --zip "$zip" --work target/conformance/run --agent-path "$agent_path" | tee -a "$counts"
# The upstream line's source is test input from outside the repository, named by the caller.
if [ -n "${IBDRIVER_UPSTREAM_AGENT:-}" ]; then
  agent_path=$(packaging/conformance/upstream_agent.sh)
  python3 packaging/conformance/harness.py --zip "$zip" --work target/conformance/run --agent-path "$agent_path" | tee -a "$counts"
else
  echo "NOT RUN 2.15.0.1/*: IBDRIVER_UPSTREAM_AGENT is unset (path to WALinuxAgent-2.15.0.1.tar.gz or its unpacked dir); only the 2.7.3.0 line ran"
fi

log "tier 4: end to end in a Debian 12 root (debootstrap, real apt-get)"
packaging/e2e.sh | tee -a "$counts"

log "tier 5: VM (QEMU guest: real systemd, agent service, reboots, cloud-init)"
wait "$image_pid" || { tail -30 target/vm/image-build.log; echo "vm: 0 passed, 1 failed"; exit 1; }
packaging/vm/run.sh | tee -a "$counts"

# One closing line over every tier (each tier above already stopped the run on a failure).
python3 - "$counts" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
passed = sum(int(m) for m in re.findall(r"test result: \w+\. (\d+) passed", text))
failed = sum(int(m) for m in re.findall(r"; (\d+) failed;", text))
for p, f in re.findall(r"^(?:e2e: |vm: )?(\d+) passed, (\d+) failed$", text, re.M):
    passed += int(p); failed += int(f)
print(f"total: {passed} passed, {failed} failed")
PY
