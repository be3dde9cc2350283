# Sourced by every scenario script in the guest. Results go to the host's share, one line a
# check: `PASS <scenario>/<check> [detail]` or `FAIL <scenario>/<check> <why>`.
set -u
NAME=OpenSource.HpcCompute.InfiniBandDriverLinux
HW_SYSFS=/var/lib/ibtest/hw/sys
export IBDRIVER_SYSFS="$HW_SYSFS"

say() { echo "$*"; echo "$*" >/dev/console; }
pass() { say "PASS $SCENARIO/$1${2:+ $2}"; echo "PASS $SCENARIO/$1${2:+ $2}" >> "$S/results.txt"; }
fail() { say "FAIL $SCENARIO/$1 ${2:-}"; echo "FAIL $SCENARIO/$1 ${2:-}" >> "$S/results.txt"; }
# check NAME CMD...: passes when CMD succeeds; a failure quotes the end of its output.
check() {
  _n=$1; shift
  if _out=$("$@" 2>&1); then pass "$_n"; else fail "$_n" "$(printf '%s' "$_out" | tail -n 3 | tr '\n' ' ')"; fi
}
# wait_until SECONDS CMD...: polls CMD until it succeeds or time runs out, first every half
# second, backing off to every 4 s: under TCG every poll's processes cost CPU the guest's real
# work wants (half-second polls took over half a vCPU through a 15-minute install).
wait_until() {
  _end=$(( $(date +%s) + $1 )); shift
  _p=0.5
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$_end" ] || return 1
    sleep "$_p"
    case $_p in 0.5) _p=1 ;; 1) _p=2 ;; *) _p=4 ;; esac
  done
}
# check_within NAME SECONDS CMD...
check_within() {
  _n=$1; _s=$2; shift 2
  if wait_until "$_s" "$@"; then pass "$_n"; else fail "$_n" "not within $_s s: $*"; fi
}
note() { echo "$*" >> "$S/timings.txt"; }
now() { cut -d' ' -f1 /proc/uptime; }
guest_reboot() { touch "$S/reboot-requested"; exit 0; }

# The extension's files as the agent lays them out, without the agent (scenarios that test
# the handler's own units): handler dir, HandlerEnvironment.json, settings for seq 0.
HD=/var/lib/waagent/$NAME-1.0.0
fake_agent_layout() {
  mkdir -p "$HD/bin" "$HD/config" "$HD/status" "/var/log/azure/$NAME/events"
  install -m 0755 "$S/bin/ibdriver" "$HD/bin/ibdriver"
  cp "$S/dist/HandlerManifest.json" "$HD/"
  cat > "$HD/HandlerEnvironment.json" <<JSON
[{"name":"$NAME","version":1.0,"handlerEnvironment":{"logFolder":"/var/log/azure/$NAME",
"configFolder":"$HD/config","statusFolder":"$HD/status","heartbeatFile":"$HD/heartbeat.log",
"eventsFolder":"/var/log/azure/$NAME/events"}}]
JSON
  printf '%s' "{\"runtimeSettings\":[{\"handlerSettings\":{\"publicSettings\":$1}}]}" > "$HD/config/0.settings"
}
# fake_agent VERB: runs the handler as the agent would (cwd, ConfigSequenceNumber).
fake_agent() {
  (cd "$HD" && ConfigSequenceNumber=0 "$HD/bin/ibdriver" "$1")
}
status_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["status"]["status"])' "$1" 2>/dev/null; }
# status_line FILE: "status code message" of a status file, for failure details.
status_line() {
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))[0]["status"]; print(s["status"], s.get("code"), s.get("formattedMessage",{}).get("message"))' "$1" 2>&1
}
# check_status NAME FILE WANT: the status file says WANT (a failure quotes its message).
check_status() {
  if status_is "$2" "$3"; then pass "$1"; else fail "$1" "$(status_line "$2")"; fi
}
status_is() { [ "$(status_of "$1")" = "$2" ]; }
# A grep first, Python only when the file can say so: Python's start is seconds under TCG.
status_settled() {
  grep -Eq '"status": *"(success|error)"' "$1" 2>/dev/null || return 1
  s=$(status_of "$1"); [ "$s" = success ] || [ "$s" = error ]
}

# The real agent (Debian's waagent, as a systemd service) against the fake fabric on loopback
# (wireserver.py), serving our release zip with these public and protected settings. The
# agent's environment carries the hardware seam, which it passes on to every handler command.
WIRE=/var/lib/ibwire
wire() { python3 /opt/ibwire/wireserver.py "$@"; }
start_agent() {
  mkdir -p /opt/ibwire
  cp "$S/guest/wireserver.py" "$S/guest/agent-setup.sh" /opt/ibwire/
  ZIP=$(ls "$S"/dist/*.zip | head -n1)
  cp "$ZIP" /opt/ibwire/
  printf '%s' "$1" > /opt/ibwire/public.json
  _args="--public-settings @/opt/ibwire/public.json"
  if [ -n "$2" ]; then
    (umask 077; printf '%s' "$2" > /opt/ibwire/protected.json)
    _args="$_args --protected-settings @/opt/ibwire/protected.json"
  fi
  echo "WIRESERVER_ARGS=$_args --imds-bind 169.254.169.254 --quiet" > /etc/default/ibwire-fabric
  sh /opt/ibwire/agent-setup.sh --period 2 --fabric-unit "/opt/ibwire/$(basename "$ZIP")" "$WIRE" >/dev/null
  mkdir -p /etc/systemd/system/walinuxagent.service.d
  # Azure's images run the agent with Restart=always (the upstream unit; Debian's has none), so
  # an agent that dies comes back and runs enable again.
  printf '[Service]\nEnvironment=IBDRIVER_SYSFS=%s\nRestart=always\nRestartSec=5\n' "$HW_SYSFS" \
    > /etc/systemd/system/walinuxagent.service.d/ibtest.conf
  systemctl daemon-reload
  systemctl start walinuxagent.service
}
# The handler's status for a sequence number, as the agent laid it out.
AGENT_HD=/var/lib/waagent/$NAME-1.0.0
# uploaded_status JQ-LIKE: reads the newest status blob the agent uploaded; prints
# "<extension status> <code> <handler status>" for our handler.
uploaded() {
  python3 - "$WIRE/status/status-latest.json" <<'PY'
import json, sys
blob = json.load(open(sys.argv[1]))
for h in blob.get("aggregateStatus", {}).get("handlerAggregateStatus", []):
    if h.get("handlerName", "").endswith("InfiniBandDriverLinux"):
        st = (h.get("runtimeSettingsStatus") or {}).get("settingsStatus", {}).get("status", {})
        subs = ",".join(f'{s.get("name")}={s.get("status")}' for s in st.get("substatus") or [])
        print(st.get("status"), st.get("code"), h.get("status"), subs)
PY
}
# uploaded_has PATTERN: the newest upload's line for our handler matches the grep pattern.
uploaded_has() { _u=$(uploaded); echo "$_u" | grep -q "$1" || { echo "uploaded: $_u"; return 1; }; }
LOG=/var/log/azure/$NAME/ibdriver.log
count_in_log() { grep -c "$1" "$LOG" 2>/dev/null || true; }
loaded() { for m in "$@"; do grep -q "^$m " /proc/modules || { echo "$m not loaded"; return 1; }; done; }

# Boots that should change nothing: mark_logs remembers where the handler's log and dpkg's log
# end; after the boot, check_no_work_after_boot finds the agent's enable run, settle, run only
# the per-boot stages and change no package (check names end in -SUFFIX when one is given).
mark_logs() {
  { wc -l < "$LOG" 2>/dev/null || echo 0; } > /root/mark.loglines
  wc -l < /var/log/dpkg.log > /root/mark.dpkglines
}
# mark_logs_at_boot: the same marks, placed where this boot began (btime), whatever ran since.
mark_logs_at_boot() {
  _bt=$(sed -n 's/^btime //p' /proc/stat)
  _before() { awk -v t="$2" 'substr($0, 1, 19) < t { n = NR } END { print n + 0 }' "$1" 2>/dev/null || echo 0; }
  _before "$LOG" "$(date -u -d "@$_bt" +%Y-%m-%dT%H:%M:%S)" > /root/mark.loglines
  _before /var/log/dpkg.log "$(date -d "@$_bt" '+%Y-%m-%d %H:%M:%S')" > /root/mark.dpkglines
}
log_since_mark() { tail -n +"$(( $(cat /root/mark.loglines) + 1 ))" "$LOG"; }
check_no_work_after_boot() {
  _x=${1:+-$1}
  _enabled() { log_since_mark | grep -q 'start verb=enable'; }
  check_within agent-enables-after-boot$_x 600 _enabled
  _settled() { log_since_mark | grep -Eq 'nothing to do|worker end seq=[0-9]+ exit=0'; }
  check_within enable-after-boot-settles$_x 600 _settled
  _stages=$(log_since_mark | sed -n 's/.*stage started stage="\([a-z-]*\)".*/\1/p' | sort -u | tr '\n' ' ')
  note "$SCENARIO: stages after the boot: ${_stages:-none}"
  _per_boot() { for st in $_stages; do case $st in preflight|repair|configure|verify) ;; *) echo "stage $st ran"; return 1;; esac; done; }
  check only-per-boot-stages-after-boot$_x _per_boot
  check no-package-change-after-boot$_x sh -c '[ "$(wc -l < /var/log/dpkg.log)" = "$(cat /root/mark.dpkglines)" ]'
}

# The DOCA-shaped fixture (packaging/vm/doca-fixture) in the image's local repository.
DOCA_PKG=doca-host_3.2.0-125000-25.10-debian12_amd64.deb
# doca_settings DIR PKG [MORE]: public settings choosing DOCA with the fixture's repository
# package under http://127.0.0.1:8080/DIR/ (MORE: further members, JSON).
doca_settings() {
  _sha=$(sha256sum "/srv/ibtest-repo/$1/$2" | cut -d' ' -f1)
  printf '{"stack":"doca","package":{"url":"http://127.0.0.1:8080/%s/%s","sha256":"%s"}%s}' "$1" "$2" "$_sha" "${3:+,$3}"
}
# check_vendor_module K: DKMS built the stack for kernel K, modprobe resolves mlx5_ib to that
# build, and the loaded mlx5_ib is it (by srcversion; the kernel's own modules carry none).
check_vendor_module() {
  check dkms-installed-for-running-kernel sh -c "dkms status -k $1 | grep -q '^mlnx-ofed-kernel/.*, $1, .*: installed'"
  check modinfo-resolves-to-dkms sh -c 'modinfo -n mlx5_ib | grep -q "/updates/dkms/mlx5_ib.ko"'
  _vendor_loaded() {
    _f=$(ls "/lib/modules/$1/updates/dkms/"mlx5_ib.ko* 2>/dev/null | head -n1)   # .ko.xz where the kernel's are
    _l=$(cat /sys/module/mlx5_ib/srcversion 2>/dev/null) _d=$(modinfo -F srcversion "${_f:-none}" 2>/dev/null)
    [ -n "$_l" ] && [ "$_l" = "$_d" ] || { echo "loaded ${_l:-none}, dkms ${_d:-none}"; return 1; }
  }
  check vendor-module-loaded-by-srcversion _vendor_loaded "$1"
}
# dkms_pkg_time STATE: when dpkg.log first says STATE ("configure", "status installed") of the
# fixture's DKMS package, as seconds since the epoch.
dkms_pkg_time() {
  date -d "$(sed -n "s/^\([0-9-]* [0-9:]*\) $1 mlnx-ofed-kernel-dkms:amd64 .*/\1/p" /var/log/dpkg.log | head -n1)" +%s
}
# check_doca_installed K: what one install of the fixture leaves, on kernel K.
check_doca_installed() {
  check_vendor_module "$1"
  check shadowed-packages-held sh -c 'h=$(apt-mark showhold); for p in rdma-core libibverbs1 ibverbs-providers; do echo "$h" | grep -qx $p || { echo "$p not held: $h"; exit 1; }; done'
  # The hold is what apt obeys: going back to Debian's rdma-core is refused while it stands.
  check hold-refuses-distro-rdma-core sh -c '! apt-get -s -y --allow-downgrades install rdma-core=44.0-2 > /root/hold.txt 2>&1 && grep -q "Held packages were changed" /root/hold.txt'
  check dkms-build-order sh -c 'for m in iser isert srp; do grep -qx "BUILD_DEPENDS=\"mlnx-ofed-kernel\"" /etc/dkms/$m.conf || exit 1; done'
  check installer-ran-once sh -c '[ "$(grep -c " install doca-ofed:amd64 " /var/log/dpkg.log)" = 1 ] && [ "$(grep -c " configure mlnx-ofed-kernel-dkms:amd64 " /var/log/dpkg.log)" = 1 ]'
  check openibd-enabled systemctl is-enabled --quiet openibd.service
}
