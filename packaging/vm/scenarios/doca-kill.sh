# doca-kill: SIGKILL of our worker while DKMS compiles the fixture's modules (in the package
# script that apt runs for it). The build goes on without the worker (its transient unit stops
# only the main process); the agent, restarted, runs enable again, whose new worker waits for
# that installer, finds the stack in and carries on: one install, one reboot, success.
. "$S/guest/lib.sh"
K=$(uname -r)
compiling() { pgrep -f "M=/var/lib/dkms/mlnx-ofed-kernel/" >/dev/null; }
case "$IBTEST_BOOT" in
1)
  modprobe mlx5_ib
  start_agent "$(doca_settings doca "$DOCA_PKG")" ''
  check_within dkms-build-starts 1800 compiling
  unit=$(systemctl list-units --type=service --all --no-legend --plain 'ibdriver-worker-*' | awk '{print $1}' | head -n1)
  pid=$(systemctl show -p MainPID --value "$unit" 2>/dev/null)
  check worker-found sh -c "[ -n '$unit' ] && [ '${pid:-0}' != 0 ]"
  kill -KILL "$pid"
  date +%s > /root/kill.time
  check_within worker-dies 30 sh -c "! kill -0 $pid"
  not_final() { ! status_settled "$AGENT_HD/status/0.status"; }
  check status-not-final-after-kill not_final
  systemctl restart walinuxagent.service
  check_within next-enable-waits-for-the-installer 600 grep -q 'an installer from an interrupted run is still running' "$LOG"
  wait_until 1800 status_settled "$AGENT_HD/status/0.status"
  fail handler-rebooted-to-activate "no reboot; status: $(status_line "$AGENT_HD/status/0.status")"
  ;;
2)
  if wire wait --timeout 900 > /root/wait.json 2>&1; then pass goal-state-reached; else fail goal-state-reached "$(tail -c 300 /root/wait.json)"; fi
  cp "$WIRE/status/status-latest.json" "$S/state/" 2>/dev/null
  check uploaded-extension-success uploaded_has '^success 0 Ready'
  check_doca_installed "$K"
  check installer-not-run-again grep -q "an interrupted run's installer completed this install" "$LOG"
  # dpkg's clock has whole seconds: the build ended at or after the kill.
  outlived() { [ "$(dkms_pkg_time 'status installed')" -ge "$(cat /root/kill.time)" ]; }
  check build-outlives-worker outlived
  check exactly-one-reboot sh -c '[ "$(cat "$S/state/boots")" = 2 ]'
  ;;
*)
  fail exactly-one-reboot "boot $IBTEST_BOOT: the guest was rebooted again"
  ;;
esac
