# doca-install: the vendor stack for real. The guest boots with the kernel's own mlx5_ib loaded.
# Under the real agent, enable installs the DOCA-shaped fixture (packaging/vm/doca-fixture, named
# by the `package` setting over loopback) with real apt; the fixture's DKMS package builds its
# modules against the guest's kernel headers; the handler checks `dkms status`, rebuilds the
# initramfs, holds the shadowed packages and reboots the guest. After that one reboot the
# loaded mlx5_ib is the DKMS build (by srcversion), enable reports success, and nothing was
# installed twice.
. "$S/guest/lib.sh"
PKG=doca-host_3.2.0-125000-25.10-debian12_amd64.deb
K=$(uname -r)
case "$IBTEST_BOOT" in
1)
  modprobe mlx5_ib
  check inbox-driver-loaded-at-start loaded mlx5_ib mlx5_core ib_core
  check inbox-driver-is-the-kernels sh -c 'modinfo -n mlx5_ib | grep -q "/kernel/drivers/"'
  cat /sys/module/mlx5_ib/srcversion > /root/inbox.srcversion
  check no-dkms-module-at-start sh -c '! dkms status 2>/dev/null | grep -q mlnx-ofed-kernel'
  stat -c %Y "/boot/initrd.img-$K" > /root/initrd.mtime
  sha=$(sha256sum "/srv/ibtest-repo/doca/$PKG" | cut -d' ' -f1)
  date +%s > /root/goal.time
  start_agent "{\"stack\":\"doca\",\"package\":{\"url\":\"http://127.0.0.1:8080/doca/$PKG\",\"sha256\":\"$sha\"}}" ''
  # The handler reboots the guest when the stack is in place: this boot ends there. Reaching
  # the end of this wait means it settled (or hung) without rebooting.
  wait_until 800 status_settled "$AGENT_HD/status/0.status"
  fail handler-rebooted-to-activate "no reboot; status: $(status_line "$AGENT_HD/status/0.status")"
  ;;
2)
  if wire wait --timeout 900 > /root/wait.json 2>&1; then pass goal-state-reached; else fail goal-state-reached "$(tail -c 300 /root/wait.json)"; fi
  note "doca-install: goal state to success across the reboot: $(( $(date +%s) - $(cat /root/goal.time) )) s (guest clock)"
  cp "$WIRE/status/status-latest.json" "$S/state/" 2>/dev/null
  check uploaded-extension-success uploaded_has '^success 0 Ready'
  check_status enable-success "$AGENT_HD/status/0.status" success
  check dkms-installed-for-running-kernel sh -c "dkms status -k $K | grep -q '^mlnx-ofed-kernel/.*, $K, .*: installed'"
  check modinfo-resolves-to-dkms sh -c 'modinfo -n mlx5_ib | grep -q "/updates/dkms/mlx5_ib.ko"'
  vendor_loaded() {
    l=$(cat /sys/module/mlx5_ib/srcversion) d=$(modinfo -F srcversion "/lib/modules/$K/updates/dkms/mlx5_ib.ko")
    [ -n "$l" ] && [ "$l" = "$d" ] && [ "$l" != "$(cat /root/inbox.srcversion)" ] || { echo "loaded $l, dkms $d, inbox $(cat /root/inbox.srcversion)"; return 1; }
  }
  check vendor-module-loaded-by-srcversion vendor_loaded
  check initramfs-rebuilt sh -c "[ \$(stat -c %Y /boot/initrd.img-$K) -gt $(cat /root/initrd.mtime) ]"
  check shadowed-packages-held sh -c 'h=$(apt-mark showhold); for p in rdma-core libibverbs1 ibverbs-providers; do echo "$h" | grep -qx $p || { echo "$p not held: $h"; exit 1; }; done'
  # The hold is what apt obeys: going back to Debian's rdma-core is refused while it stands.
  check hold-refuses-distro-rdma-core sh -c '! apt-get -s -y --allow-downgrades install rdma-core=44.0-2 > /root/hold.txt 2>&1 && grep -q "Held packages were changed" /root/hold.txt'
  check dkms-build-order sh -c 'for m in iser isert srp; do grep -qx "BUILD_DEPENDS=\"mlnx-ofed-kernel\"" /etc/dkms/$m.conf || exit 1; done'
  check installer-ran-once sh -c '[ "$(grep -c " install doca-ofed:amd64 " /var/log/dpkg.log)" = 1 ] && [ "$(grep -c " configure mlnx-ofed-kernel-dkms:amd64 " /var/log/dpkg.log)" = 1 ]'
  check openibd-enabled systemctl is-enabled --quiet openibd.service
  dk() { sed -n "s/^\([0-9-]* [0-9:]*\) $1 mlnx-ofed-kernel-dkms:amd64 .*/\1/p" /var/log/dpkg.log | head -n1; }
  note "doca-install: dpkg configure of mlnx-ofed-kernel-dkms (the DKMS build): $(( $(date -d "$(dk 'status installed')" +%s) - $(date -d "$(dk configure)" +%s) )) s"
  check exactly-one-reboot sh -c '[ "$(cat "$S/state/boots")" = 2 ]'
  ;;
*)
  fail exactly-one-reboot "boot $IBTEST_BOOT: the guest was rebooted again"
  ;;
esac
