#!/usr/bin/env bash
# Prove the fake fabric (packaging/vm/guest/wireserver.py) against the REAL guest agent without a
# VM: a Debian 12 root with Debian's waagent 2.7.3.0 installed by its own apt, then, in a network
# (and PID and mount) namespace of our own with only loopback, the server and
# `waagent -run-exthandlers -debug` run chrooted there with our release zip. The agent must fetch
# the manifest and zip, run install and enable, and upload a status blob whose extension status
# matches our status file; then a new incarnation (new settings, new seqNo) must do it again.
#
#   sudo packaging/vm/wire-selftest.sh            (idempotent: the root is made once and reused)
#   IBWIRE_REBUILD_ROOT=1 / IBWIRE_REBUILD_ZIP=1  force a new root / a new release zip
#   IBWIRE_TIMEOUT=240                            seconds allowed per goal state
#   IBWIRE_BLOB_TYPE=PageBlob                     status blob type in ExtensionsConfig (default BlockBlob)
#
# Prints PASS/FAIL lines, the figures, and `wire-selftest: N passed, N failed`; exit 0 iff none failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

[ "$(id -u)" = 0 ] || { echo "wire-selftest: run as root (chroot, namespaces)" >&2; exit 2; }

work=${IBWIRE_WORK:-$repo/target/wire-selftest}
root=$work/root
timeout=${IBWIRE_TIMEOUT:-240}
blob_type=${IBWIRE_BLOB_TYPE:-BlockBlob}   # or PageBlob
idle=${IBWIRE_IDLE:-13}                    # seconds watched after the second goal state
name=OpenSource.HpcCompute.InfiniBandDriverLinux
mkdir -p "$work"
exec 9>"$work/.lock"
flock -n 9 || { echo "wire-selftest: another run holds $work/.lock" >&2; exit 2; }

pass=0 fail=0
ok() { pass=$((pass + 1)); echo "PASS $*"; }
ko() { fail=$((fail + 1)); echo "FAIL $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else ko "$what"; fi; }
log() { echo "wire-selftest: $*" >&2; }

# ---- the release zip ------------------------------------------------------------------------
field() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" manifest/manifest.xml | head -n1; }
version=$(field Version)
zip=dist/$(field ProviderNameSpace).$(field Type)-$version.zip
if [ ! -f "$zip" ] || [ -n "${IBWIRE_REBUILD_ZIP:-}" ]; then
  log "building $zip"
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target} packaging/build.sh >"$work/build.log" 2>&1 \
    || { ko "build the release zip (see $work/build.log)"; echo "wire-selftest: $pass passed, $fail failed"; exit 1; }
fi

# ---- the Debian 12 root, made once --------------------------------------------------------------
mounts=()
cleanup() {
  local m
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    m=${mounts[$i]}
    mountpoint -q "$m" && umount -l "$m"
  done
  mounts=()
}
trap cleanup EXIT INT TERM
bind_for_apt() {
  mkdir -p "$root/proc" "$root/dev"
  mount -t proc proc "$root/proc" && mounts+=("$root/proc")
  mount --bind /dev "$root/dev" && mounts+=("$root/dev")
}

if [ ! -f "$root/.ibwire-root-ok" ] || [ -n "${IBWIRE_REBUILD_ROOT:-}" ]; then
  log "making the Debian 12 root in $root"
  for m in "$root/proc" "$root/dev"; do mountpoint -q "$m" && umount -l "$m"; done
  rm -rf --one-file-system "$root"
  mkdir -p "$root"
  # The minbase root the e2e tier and the VM image share (debootstrap'ed once per machine).
  tarball=${IBWIRE_MINBASE:-$(packaging/bookworm-base.sh)}
  tar -C "$root" -xf "$tarball"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
  bind_for_apt
  if chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
       sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends waagent openssl python3 iproute2 ca-certificates' \
       >"$work/apt.log" 2>&1; then
    touch "$root/.ibwire-root-ok"
  fi
  cleanup
fi
check "Debian 12 root with waagent, openssl, python3 ($root)" test -f "$root/.ibwire-root-ok"
[ -f "$root/.ibwire-root-ok" ] || { echo "wire-selftest: $pass passed, $fail failed"; exit 1; }
agent_version=$(chroot "$root" dpkg-query -W -f '${Version}' waagent 2>/dev/null)
log "waagent $agent_version in the root"

# ---- a clean agent state, our files in the root ----------------------------------------------------
# (never through $root/var/run: it is a symlink to /run, which outside the chroot is the host's)
rm -rf "$root/var/lib/waagent" "$root/var/log/azure" "$root/var/log/waagent.log" "$root/opt/ibwire"
# Stale N_waagent.pid files: the agent waits for (then SIGKILLs) the process they name, and in a
# fresh PID namespace that pid is likely the agent itself.
rm -f "$root"/run/*waagent*.pid "$root/run/ibwire-ready"
mkdir -p "$root/opt/ibwire" "$root/var/lib/waagent"
cp packaging/vm/guest/wireserver.py packaging/vm/guest/agent-setup.sh "$root/opt/ibwire/"
cp "$zip" "$root/opt/ibwire/"
zip_in=/opt/ibwire/$(basename "$zip")
out=$root/var/lib/ibwire/status
rm -rf "$root/var/lib/ibwire"
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh /opt/ibwire/agent-setup.sh --no-systemd >"$work/setup.log" 2>&1
check "agent-setup.sh --no-systemd ran in the root" test -s "$root/var/lib/waagent/TransportCert.pem"
check "Protocol/WireServerEndpoint files have no trailing newline" \
  test "$(cat "$root/var/lib/waagent/Protocol")|$(cat "$root/var/lib/waagent/WireServerEndpoint")|$(wc -c <"$root/var/lib/waagent/WireServerEndpoint")" = "WireProtocol|127.0.0.1|9"

cat > "$work/public1.json" <<'EOF'
{"stack": "inbox", "ipoib": "auto"}
EOF
cat > "$work/protected1.json" <<'EOF'
{"proxy": "http://127.0.0.1:3128"}
EOF
cat > "$work/public2.json" <<'EOF'
{"stack": "inbox", "ipoib": "off", "reboot": "never"}
EOF
cp "$work"/public1.json "$work"/protected1.json "$work"/public2.json "$root/opt/ibwire/"

# ---- the run, inside our own network + PID + mount namespaces --------------------------------------
# Everything started in there dies with the namespace's first process; the mounts die with it.
cat > "$work/inner.sh" <<EOF
set -u
root=$root
timeout=$timeout
EOF
cat >> "$work/inner.sh" <<'EOF'
ip link set lo up
ip route add prohibit 168.63.129.16/32
ip route add prohibit 169.254.169.254/32
mount -t proc proc "$root/proc"
mount -t devtmpfs devtmpfs "$root/dev" 2>/dev/null || mount --bind /dev "$root/dev"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
ws() { in_root python3 /opt/ibwire/wireserver.py "$@"; }
echo "t_start $(date +%s.%N)"
ws serve --zip "$ZIP_IN" --state-dir /var/lib/ibwire \
  --public-settings @/opt/ibwire/public1.json --protected-settings @/opt/ibwire/protected1.json \
  --blob-type "$BLOB_TYPE" --ready-file /run/ibwire-ready 2>"$WORK/server.log" &
for i in $(seq 100); do [ -f "$root/run/ibwire-ready" ] && break; sleep 0.1; done
[ -f "$root/run/ibwire-ready" ] && echo "server_ready 1" || { echo "server_ready 0"; exit 0; }
echo "t_agent $(date +%s.%N)"
in_root waagent -run-exthandlers -debug >"$WORK/agent.stdout" 2>&1 &
agent=$!
ws wait --incarnation 1 --timeout "$timeout" >"$WORK/wait1.json"; echo "wait1 $?"
echo "t_bump $(date +%s.%N)"
ws bump --public-settings @/opt/ibwire/public2.json >"$WORK/bump.json"; echo "bump $?"
ws wait --incarnation 2 --timeout "$timeout" >"$WORK/wait2.json"; echo "wait2 $?"
sleep "$IDLE"   # idle: the agent keeps uploading every goal-state period
ws state >"$WORK/state.json"
kill -0 "$agent" 2>/dev/null && echo "agent_alive 1" || echo "agent_alive 0"
EOF
rm -f "$root/run/ibwire-ready"
mkdir -p "$root/run"
log "running the fabric and the agent in a namespace (up to $((2 * timeout)) s)"
ZIP_IN=$zip_in WORK=$work BLOB_TYPE=$blob_type IDLE=$idle timeout $((2 * timeout + idle + 60)) unshare --net --pid --mount --fork --kill-child \
  bash "$work/inner.sh" >"$work/inner.out" 2>"$work/inner.err"
for m in "$root/proc" "$root/dev"; do mountpoint -q "$m" && { log "unmounting leftover $m"; umount -l "$m"; }; done
val() { sed -n "s/^$1 //p" "$work/inner.out" | tail -n1; }

check "fabric listening on 127.0.0.1:80 and :32526 inside the namespace" test "$(val server_ready)" = 1
served() { grep -q "\"what\": \"$1\", \"incarnation\": $2" "$out/events.jsonl" 2>/dev/null; }
check "agent fetched goal state, hostingEnvironmentConfig, sharedConfig, extensionsConfig" \
  bash -c "$(declare -f served); out='$out'; served goalstate 1 && served hostingEnvironmentConfig 1 && served sharedConfig 1 && served extensionsConfig 1"
thumb=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["thumbprint"])' "$work/state.json" 2>/dev/null)
check "agent fetched Certificates (sent its transport cert) and stored the tenant pair $thumb.{crt,prv}" \
  bash -c "$(declare -f served); out='$out'; served certificates 1 && test -n '$thumb' && test -s '$root/var/lib/waagent/$thumb.crt' && test -s '$root/var/lib/waagent/$thumb.prv'"
check "agent downloaded the extension manifest from loopback" served manifest 1
check "agent downloaded the release zip from loopback" served zip 1
hdir=$root/var/lib/waagent/$name-$version
check "handler unpacked to /var/lib/waagent/$name-$version" test -x "$hdir/bin/ibdriver"
check "agent ran our install command" grep -qE "bin/ibdriver install" "$root/var/log/waagent.log"
check "agent ran our enable command" grep -qE "bin/ibdriver enable" "$root/var/log/waagent.log"
check "our status file status/0.status appeared" test -s "$hdir/status/0.status"
check "agent uploaded a status blob for seqNo 0 that the server decoded (wait 1)" test "$(val wait1)" = 0

# Compare an uploaded blob with our status file.
compare() { # seq wait.json
  python3 - "$hdir/status/$1.status" "$out/status-$(python3 -c 'import json,sys;print("%06d" % json.load(open(sys.argv[1]))["n"])' "$2" 2>/dev/null).json" "$name" "$1" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))[0]["status"]
blob = json.load(open(sys.argv[2]))
name, seq = sys.argv[3], int(sys.argv[4])
hs = [h for h in blob["aggregateStatus"]["handlerAggregateStatus"] if h["handlerName"] == name]
assert len(hs) == 1, "handler %s not in the blob" % name
h = hs[0]
rss = h["runtimeSettingsStatus"]
st = rss["settingsStatus"]["status"]
problems = []
if rss["sequenceNumber"] != seq: problems.append("sequenceNumber %r != %r" % (rss["sequenceNumber"], seq))
for k in ("status", "code", "operation", "name"):
    if k in ours and st.get(k) != ours.get(k): problems.append("%s: blob %r, ours %r" % (k, st.get(k), ours.get(k)))
msg_ours = (ours.get("formattedMessage") or {}).get("message")
if msg_ours is not None and st["formattedMessage"]["message"] != msg_ours: problems.append("message differs")
sub_b = [(s["name"], s["status"], s["code"], s["formattedMessage"]["message"]) for s in st.get("substatus", [])]
sub_o = [(s.get("name"), s.get("status"), s.get("code"), (s.get("formattedMessage") or {}).get("message")) for s in ours.get("substatus", [])]
if sub_b != sub_o: problems.append("substatus differs: blob %r ours %r" % (sub_b, sub_o))
# The handler aggregate: Ready when the command exited 0 (our status then says success, or an
# error we chose to report with exit 0), NotReady with the agent's own code when it did not.
print("handler=%s/%s ext=%s/%s op=%s substatus=%d" % (h["status"], h["code"], st["status"], st["code"], st.get("operation"), len(sub_b)))
if h["status"] not in ("Ready", "NotReady"): problems.append("handler status %r" % h["status"])
if st["status"] == "success" and h["status"] != "Ready": problems.append("success but handler %s" % h["status"])
if problems:
    print("; ".join(problems)); sys.exit(1)
PY
}
if [ "$(val wait1)" = 0 ]; then
  r1=$(compare 0 "$work/wait1.json"); rc=$?
  check "uploaded blob (seqNo 0) matches status/0.status: $r1" test $rc = 0
else
  ko "uploaded blob (seqNo 0) matches status/0.status (no blob)"
fi
c1=$(python3 -c 'import json,sys;d=json.load(open(sys.argv[1]))[0]["status"];print(d["code"])' "$hdir/status/0.status" 2>/dev/null)
check "protected settings decrypted by our handler (code $c1 is not 104/105/106)" test -n "$c1" -a "$c1" != 104 -a "$c1" != 105 -a "$c1" != 106
dec=$(chroot "$root" sh -c "python3 -c 'import json,base64,sys;h=json.load(open(sys.argv[1]))[\"runtimeSettings\"][0][\"handlerSettings\"];open(\"/tmp/ps.der\",\"wb\").write(base64.b64decode(h[\"protectedSettings\"]));print(h[\"protectedSettingsCertThumbprint\"])' /var/lib/waagent/$name-$version/config/0.settings" 2>/dev/null)
chroot "$root" openssl cms -decrypt -inform DER -in /tmp/ps.der -recip "/var/lib/waagent/$dec.crt" -inkey "/var/lib/waagent/$dec.prv" 2>/dev/null | grep -q '127.0.0.1:3128'
check "protectedSettings in config/0.settings decrypt with /var/lib/waagent/$dec.{crt,prv}" test $? = 0
rm -f "$root/tmp/ps.der" "$root/tmp/thumb"

check "new incarnation 2 (seqNo 1) accepted by the control endpoint" test "$(val bump)" = 0
check "agent fetched extensionsConfig of incarnation 2" served extensionsConfig 2
check "agent wrote config/1.settings with the new public settings" grep -q '"reboot": "never"\|"reboot":"never"' "$hdir/config/1.settings"
check "our status file status/1.status appeared" test -s "$hdir/status/1.status"
check "agent uploaded a status blob for seqNo 1 (wait 2)" test "$(val wait2)" = 0
if [ "$(val wait2)" = 0 ]; then
  r2=$(compare 1 "$work/wait2.json"); rc=$?
  check "uploaded blob (seqNo 1) matches status/1.status: $r2" test $rc = 0
else
  ko "uploaded blob (seqNo 1) matches status/1.status (no blob)"
fi
check "agent kept uploading while idle (at least 3 uploads)" test "$(grep -c '"event": "upload"' "$out/events.jsonl")" -ge 3
check "status-latest.json is a decoded status blob" python3 -c 'import json,sys;d=json.load(open(sys.argv[1]));assert d["aggregateStatus"]["handlerAggregateStatus"]' "$out/status-latest.json"
check "agent still running at the end (no crash)" test "$(val agent_alive)" = 1
check "no Python traceback in waagent.log" bash -c "! grep -q 'Traceback\|TypeError' '$root/var/log/waagent.log'"

# ---- figures ---------------------------------------------------------------------------------------
python3 - "$out/events.jsonl" "$work/inner.out" <<'PY' || true
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
t = {}
for l in open(sys.argv[2]):
    k, _, v = l.strip().partition(" ")
    t[k] = v
def first(kind, **kw):
    for e in ev:
        if e["event"] == kind and all(e.get(a) == b for a, b in kw.items()):
            return e
served = lambda what, inc: (first("served", what=what, incarnation=inc) or {}).get("time")
t_agent = float(t.get("t_agent", "nan"))
for inc in (1, 2):
    r = first("reached", incarnation=inc)
    gs, ec, man, z = served("goalstate", inc), served("extensionsConfig", inc), served("manifest", inc), served("zip", inc)
    parts = []
    if inc == 1 and gs: parts.append("agent start -> first goalstate %.2f s" % (gs - t_agent))
    if inc == 1 and r: parts.append("agent start -> status uploaded %.2f s" % (r["time"] - t_agent) if "time" in r else "")
    if ec and man: parts.append("extensionsConfig -> manifest %.2f s" % (man - ec))
    if ec and z: parts.append("extensionsConfig -> zip %.2f s" % (z - ec))
    if r:
        parts.append("status uploaded (seqNo %d, %s, upload #%d): %.2f s after the goal state was set, %.2f s after the agent fetched its ExtensionsConfig"
                     % (r["seqNo"], r["extStatus"], r["upload"], r["secondsFromSet"], r["secondsFromExtensionsConfig"]))
    print("figure incarnation %d: %s" % (inc, "; ".join(parts) or "none"))
ups = [e for e in ev if e["event"] == "upload"]
if len(ups) > 1:
    gaps = [b["time"] - a["time"] for a, b in zip(ups, ups[1:])]
    print("figure uploads: %d, channels %s, blob types %s, median gap %.2f s" % (len(ups), sorted(set(u["channel"] for u in ups)), sorted(set(u["blobType"] for u in ups)), sorted(gaps)[len(gaps) // 2]))
PY
log "logs: $work/{server.log,agent.stdout,inner.out,inner.err}, $root/var/log/waagent.log; blobs: $out"
echo "wire-selftest: $pass passed, $fail failed"
[ "$fail" = 0 ]
