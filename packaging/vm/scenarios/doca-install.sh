# doca-install: the vendor stack for real. The guest boots with the kernel's own mlx5_ib loaded.
# Under the real agent, enable installs the DOCA-shaped fixture (packaging/vm/doca-fixture, named
# by the `package` setting over loopback) with real apt; the fixture's DKMS package builds its
# modules against the guest's kernel headers; the handler checks `dkms status`, rebuilds the
# initramfs, holds the shadowed packages and reboots the guest. After that one reboot the
# loaded mlx5_ib is the DKMS build (by srcversion), enable reports success, and nothing was
# installed twice. kernel-update and doca-uninstall start from the disk this scenario leaves.
. "$S/guest/lib.sh"
K=$(uname -r)
case "$IBTEST_BOOT" in
1)
  modprobe mlx5_ib
  check inbox-driver-loaded-at-start loaded mlx5_ib mlx5_core ib_core
  check inbox-driver-is-the-kernels sh -c 'modinfo -n mlx5_ib | grep -q "/kernel/drivers/"'
  check no-dkms-module-at-start sh -c '! dkms status 2>/dev/null | grep -q mlnx-ofed-kernel'
  stat -c %Y "/boot/initrd.img-$K" > /root/initrd.mtime
  date +%s > /root/goal.time
  start_agent "$(doca_settings doca "$DOCA_PKG")" ''
  # The handler reboots the guest when the stack is in place: this boot ends there. Reaching
  # the end of this wait means it settled (or hung) without rebooting.
  wait_until 1800 status_settled "$AGENT_HD/status/0.status"
  fail handler-rebooted-to-activate "no reboot; status: $(status_line "$AGENT_HD/status/0.status")"
  ;;
2)
  if wire wait --timeout 900 > /root/wait.json 2>&1; then pass goal-state-reached; else fail goal-state-reached "$(tail -c 300 /root/wait.json)"; fi
  note "doca-install: goal state to success across the reboot: $(( $(date +%s) - $(cat /root/goal.time) )) s (guest clock)"
  cp "$WIRE/status/status-latest.json" "$S/state/" 2>/dev/null
  check uploaded-extension-success uploaded_has '^success 0 Ready'
  check_status enable-success "$AGENT_HD/status/0.status" success
  check_doca_installed "$K"
  check initramfs-rebuilt sh -c "[ \$(stat -c %Y /boot/initrd.img-$K) -gt $(cat /root/initrd.mtime) ]"
  note "doca-install: dpkg configure of mlnx-ofed-kernel-dkms (the DKMS build): $(( $(dkms_pkg_time 'status installed') - $(dkms_pkg_time configure) )) s"
  check exactly-one-reboot sh -c '[ "$(cat "$S/state/boots")" = 2 ]'
  mark_logs   # for the scenarios that start from this disk
  ;;
*)
  fail exactly-one-reboot "boot $IBTEST_BOOT: the guest was rebooted again"
  ;;
esac
