# health-timer: after a successful enable the real systemd lists our timer, fires it and the
# monitor refreshes the heartbeat; a module removed with `modprobe -r` is put back by the
# monitor and logged; disable removes the timer and units; uninstall leaves only what the
# README lists. The handler runs as the agent would run it (no agent in this scenario).
. "$S/guest/lib.sh"
LOG=/var/log/azure/$NAME/ibdriver.log
mtime() { python3 -c 'import os,sys; print(os.stat(sys.argv[1]).st_mtime_ns)' "$1" 2>/dev/null || echo 0; }
triggered() { systemctl show ibdriver-health.timer -p LastTriggerUSecMonotonic --value; }

python3 "$S/guest/files.py" snapshot /root/files-before
fake_agent_layout '{"ipoib":"native"}'
t0=$(date +%s)
fake_agent enable
check_within enable-settles 900 status_settled "$HD/status/0.status"
check_status enable-success "$HD/status/0.status" success
note "health-timer: enable to success $(( $(date +%s) - t0 )) s"
# verify writes success, then installs the monitor.
check_within timer-listed 60 sh -c 'systemctl list-timers --all --no-legend | grep -q "ibdriver-health.timer"'
check_within timer-active 60 systemctl is-active --quiet ibdriver-health.timer
check ipoib-address-on-dummy sh -c 'ip -4 -o addr show dev ib0 | grep -q " 172.16.1.4/16 "'

# The timer's 5-minute period shortened for the test by a runtime drop-in (the unit files we
# wrote stay as they are); real systemd then fires it.
mkdir -p /run/systemd/system/ibdriver-health.timer.d
printf '[Timer]\nOnBootSec=\nOnUnitActiveSec=\nOnActiveSec=5s\nOnUnitActiveSec=20s\nAccuracySec=1s\n' \
  > /run/systemd/system/ibdriver-health.timer.d/ibtest.conf
svc_end() { systemctl show ibdriver-health.service -p InactiveEnterTimestampMonotonic --value; }
hb0=$(mtime "$HD/heartbeat.log"); tr0=$(triggered); t_before=$(date +%s%N); end0=$(svc_end)
systemctl daemon-reload
systemctl restart ibdriver-health.timer
check timer-is-ours sh -c '[ "$(systemctl show ibdriver-health.timer -p FragmentPath --value)" = /etc/systemd/system/ibdriver-health.timer ]'
fired() { t=$(triggered); [ -n "$t" ] && [ "$t" != 0 ] && [ "$t" != "$tr0" ]; }
check_within timer-fires 180 fired
# The service the timer started ran to its end, successfully, after the trigger (systemd
# shows the timer's trigger time as a span, the service's as microseconds: compare the
# service's end with where it was before).
ran_after() {
  [ "$(svc_end)" -gt "${end0:-0}" ] && [ "$(systemctl show ibdriver-health.service -p Result --value)" = success ]
}
if wait_until 120 ran_after; then pass monitor-runs; else
  fail monitor-runs "$(systemctl show ibdriver-health.service -p InactiveEnterTimestampMonotonic -p Result -p ExecMainStatus | tr '\n' ' ') before $end0"; fi
advanced() { m=$(mtime "$HD/heartbeat.log"); [ "$m" -gt "$hb0" ] && [ "$m" -gt "$t_before" ]; }
check_within heartbeat-advances 60 advanced

check module-loaded grep -q '^ib_ipoib ' /proc/modules
modprobe -r ib_ipoib
check module-removed sh -c '! grep -q "^ib_ipoib " /proc/modules'
check_within monitor-restores-module 180 grep -q '^ib_ipoib ' /proc/modules
check_within monitor-logs-restore 60 grep -q 'restored: .*ib_ipoib' "$LOG"

fake_agent disable
check disable-removes-timer sh -c '! systemctl list-timers --all --no-legend | grep -q ibdriver-health'
check disable-removes-units sh -c '! ls /etc/systemd/system/ibdriver-health.* 2>/dev/null | grep -q .'
check disable-unit-unknown sh -c '[ "$(systemctl show ibdriver-health.timer -p LoadState --value)" = not-found ]'
rm -rf /run/systemd/system/ibdriver-health.timer.d; systemctl daemon-reload
fake_agent uninstall
# The agent deletes the handler directory itself after uninstall.
rm -rf "$HD"
check uninstall-leaves-only-listed python3 "$S/guest/files.py" left /root/files-before \
  /var/log/azure/ib-vmext-status "/var/log/azure/$NAME/" /root/files-before
