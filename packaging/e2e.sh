#!/usr/bin/env bash
# End-to-end tier: a Debian 12 root made with debootstrap; the handler runs inside it (chroot)
# exactly as the agent would run enable, with real apt-get installing the inbox stack from
# Debian's mirror, and a fake InfiniBand sysfs/procfs (the hbv3 fixture: a ConnectX-6 VF whose
# port is ACTIVE) in place of the real ones. Nothing outside the root changes.
# Usage: packaging/e2e.sh   (root; needs debootstrap and Debian's mirror)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'e2e.sh: %s\n' "$*" >&2; }
bin=target/x86_64-unknown-linux-gnu/release/ibdriver
[ -x "$bin" ] || packaging/build.sh >/dev/null
base=$(packaging/bookworm-base.sh)
cache=target/e2e

root="$cache/root"
rm -rf "$root"; mkdir -p "$root"
tar -C "$root" -xf "$base"
cp /etc/resolv.conf "$root/etc/resolv.conf"

# The fake hardware: the hbv3 fixture's sysfs and procfs files (plain files, nothing mounted).
fix=tests/fixtures/hosts/hbv3
cp -r "$fix/sys/." "$root/sys/"
cp -r "$fix/proc/." "$root/proc/"
mkdir -p "$root/var/lib/hyperv"

# The handler as the agent installs it, and the agent's files.
name=OpenSource.HpcCompute.InfiniBandDriverLinux
hd="/var/lib/waagent/$name-1.0.0"
mkdir -p "$root$hd/bin" "$root$hd/config" "$root$hd/status" "$root/var/log/azure/$name/events"
install -m 0755 "$bin" "$root$hd/bin/ibdriver"
cp HandlerManifest.json "$root$hd/"
cat > "$root$hd/HandlerEnvironment.json" <<JSON
[{"name":"$name","version":1.0,"handlerEnvironment":{"logFolder":"/var/log/azure/$name",
"configFolder":"$hd/config","statusFolder":"$hd/status","heartbeatFile":"$hd/heartbeat.log",
"eventsFolder":"/var/log/azure/$name/events"}}]
JSON
echo '{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"lockTimeoutSeconds":120},"protectedSettings":null,"protectedSettingsCertThumbprint":null}}]}' > "$root$hd/config/0.settings"

enable() {
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    ConfigSequenceNumber=0 IBDRIVER_ROOT=/ IBDRIVER_IMDS_URL=http://127.0.0.1:9 \
    /bin/sh -c "cd '$hd' && exec '$hd/bin/ibdriver' enable"
}

log "enable (the worker installs the inbox stack with the root's own apt-get)"
t0=$(date +%s)
enable
status="$root$hd/status/0.status"
state=""
for _ in $(seq 1 600); do
  state=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["status"]["status"])' "$status" 2>/dev/null || true)
  [ "$state" = success ] || [ "$state" = error ] && break
  sleep 0.5
done
log "status after $(( $(date +%s) - t0 )) s: $state"
python3 - "$status" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))[0]["status"]
print("e2e: status", s["status"], s["code"], "-", s["formattedMessage"]["message"])
for sub in s.get("substatus", []):
    if sub["name"] != "health":
        print("e2e:   ", sub["name"], sub["status"])
PY
[ "$state" = success ] || { tail -40 "$root/var/log/azure/$name/ibdriver.log"; echo "e2e: 0 passed, 1 failed"; exit 1; }

# The packages are really there, installed by the root's own dpkg.
chroot "$root" dpkg-query -W -f='${Package} ${Version} ${Status}\n' rdma-core libibverbs1 infiniband-diags | tee "$cache/packages.txt"
grep -c 'install ok installed' "$cache/packages.txt" | grep -qx 3

# A second enable with the same sequence number does no work.
before=$(stat -c %Y.%s "$status")
enable
sleep 1
[ "$(stat -c %Y.%s "$status")" = "$before" ] || { echo "e2e: the second enable rewrote the status"; echo "e2e: 0 passed, 1 failed"; exit 1; }
echo "e2e: 1 passed, 0 failed"
