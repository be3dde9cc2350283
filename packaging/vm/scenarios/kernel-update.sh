# vm-from: doca-install
# kernel-update (from doca-install: its disk, DOCA in and verified): the administrator installs
# bookworm-backports' kernel without its headers (DKMS's kernel hook has nothing to build with)
# and reboots into it. The agent's enable after the boot repairs: headers for the new kernel,
# a real DKMS build, its initramfs, and at most one more reboot; then the VM is Ready with our
# mlx5_ib loaded, and that boot's enable, with nothing changed since the repair, does no work.
. "$S/guest/lib.sh"
K=$(uname -r)
case "$IBTEST_BOOT" in
1)
  echo "$K" > /root/k0
  check_no_work_after_boot
  apt-get update -qq >/root/apt.txt 2>&1
  new=$(ls /srv/ibtest-repo | sed -n 's/^\(linux-image-[0-9][^_]*-amd64\)_.*/\1/p' | head -n1)
  echo "${new#linux-image-}" > /root/k1
  t0=$(date +%s)
  check new-kernel-installs sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends $new >>/root/apt.txt 2>&1"
  note "kernel-update: apt-get install $new: $(( $(date +%s) - t0 )) s"
  check not-built-for-new-kernel-yet sh -c "! dkms status -k $(cat /root/k1) | grep -q ': installed'"
  mark_logs
  guest_reboot
  ;;
*)
  K1=$(cat /root/k1)
  [ "$K" = "$K1" ] || { fail boots-the-new-kernel "running $K, want $K1"; exit 0; }
  if [ ! -f /root/repaired ]; then
    # The boot into the new kernel: repair runs. It reboots when the kernel's own mlx5_ib was
    # loaded before the rebuild (this boot then ends there); else it ends in success.
    touch /root/repaired; date +%s > /root/repair.time
    ended() { log_since_mark | grep -Eq 'worker end seq=0 |nothing to do'; }
    wait_until 1200 ended
    case $(status_line "$AGENT_HD/status/0.status") in
    *rebooting*) wait_until 300 false; fail repair-reboot-happens "the handler said it reboots; no reboot within 300 s" ;;
    *)
      # Success without a reboot is right only when the loaded mlx5_ib is already the stack's.
      check_status repaired-without-reboot "$AGENT_HD/status/0.status" success
      check_vendor_module "$K"
      guest_reboot ;;
    esac
  elif [ ! -f /root/verified ]; then
    touch /root/verified
    if wire wait --timeout 900 > /root/wait.json 2>&1; then pass goal-state-reached; else fail goal-state-reached "$(tail -c 300 /root/wait.json)"; fi
    note "kernel-update: from the repair's start to Ready: $(( $(date +%s) - $(cat /root/repair.time) )) s (guest clock, across its reboot)"
    check_status enable-success "$AGENT_HD/status/0.status" success
    check uploaded-extension-success uploaded_has '^success 0 Ready'
    check_vendor_module "$K"
    # The log since boot 1's end: the boot into the new kernel found the drift and repaired.
    repairing() { log_since_mark | grep -q 'kernel drift: '; }
    check repair-ran repairing
    check headers-installed-by-repair sh -c "dpkg-query -W -f='\${Status}' linux-headers-$K | grep -q 'install ok installed'"
    reboots() { [ "$(log_since_mark | grep -c 'rebooting the VM')" -le 1 ] || { log_since_mark | grep 'rebooting the VM'; return 1; }; }
    check at-most-one-repair-reboot reboots
    # Nothing changed since the repair's reboot: this boot's enable did only per-boot work.
    mark_logs_at_boot
    check_no_work_after_boot new-kernel
  else
    fail at-most-one-repair-reboot "boot $IBTEST_BOOT: the guest was rebooted again"
  fi
  ;;
esac
