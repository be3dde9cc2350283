# inbox-reboot: the image has no rdma-core. Under the real agent, enable installs it with the
# guest's own apt from the image's local repository, loads the modules for real and writes
# modules-load.d; after `systemctl reboot` the modules are loaded at boot before the agent
# runs, and the agent's enable after the boot installs nothing: IPoIB addresses live for one
# boot, so it re-runs only the per-boot stages (preflight, repair, configure, verify), which put
# the address back.
. "$S/guest/lib.sh"
MODS="ib_uverbs ib_umad rdma_ucm ib_ipoib"
case "$IBTEST_BOOT" in
1)
  check no-rdma-core-at-start sh -c '! dpkg-query -W -f="\${Status}\n" rdma-core 2>/dev/null | grep -q "install ok installed"'
  check no-module-at-start sh -c '! grep -q "^ib_uverbs " /proc/modules'
  start_agent '{"ipoib":"native"}' ''
  if wire wait --timeout 900 > /root/wait.json 2>&1; then pass goal-state-reached; else fail goal-state-reached "$(tail -c 300 /root/wait.json)"; fi
  check_status enable-success "$AGENT_HD/status/0.status" success
  check apt-installed-rdma-core sh -c 'dpkg-query -W -f="\${Status}\n" rdma-core infiniband-diags libibverbs1 | grep -c "install ok installed" | grep -qx 3'
  check modules-loaded loaded $MODS
  check modules-load-d sh -c "for m in $MODS; do grep -qx \$m /etc/modules-load.d/infiniband-driver-linux.conf || exit 1; done"
  cat /proc/sys/kernel/random/boot_id > /root/boot1.id
  mark_logs
  guest_reboot
  ;;
2)
  check new-boot sh -c '[ "$(cat /proc/sys/kernel/random/boot_id)" != "$(cat /root/boot1.id)" ]'
  check modules-loaded-at-boot loaded $MODS
  check loaded-by-modules-load sh -c "journalctl -b -u systemd-modules-load.service -o cat | grep -q \"Inserted module 'ib_ipoib'\""
  mods_done=$(systemctl show -p ExecMainExitTimestampMonotonic --value systemd-modules-load.service)
  agent_start=$(systemctl show -p ExecMainStartTimestampMonotonic --value walinuxagent.service)
  check modules-before-agent sh -c "[ '${mods_done:-0}' -gt 0 ] && [ '${agent_start:-0}' -gt '${mods_done:-0}' ]"
  check_no_work_after_boot
  check_within ipoib-address-back-after-boot 120 sh -c 'ip -4 -o addr show dev ib0 | grep -q " 172.16.1.4/16 "'
  check_status status-still-success "$AGENT_HD/status/0.status" success
  ;;
esac
