# vm-from: doca-install
# doca-uninstall (from doca-install: its disk, DOCA in and verified): new settings say
# removeDriversOnUninstall: true, then the agent uninstalls the extension. The stack's packages,
# the repository package and its source list, our holds and our DKMS configuration are gone,
# the DKMS build is gone from the kernel's tree, and Debian's own rdma-core is back and works:
# libibverbs loads and modprobe takes the kernel's own mlx5_ib again; the initramfs is rebuilt.
. "$S/guest/lib.sh"
K=$(uname -r)
debian_version() { ls /srv/ibtest-repo/ | sed -n "s/^$1_\([^_]*\)_amd64.deb$/\1/p" | head -n1; }
check_no_work_after_boot
wire bump --public-settings "$(doca_settings doca "$DOCA_PKG" '"removeDriversOnUninstall":true')" >/dev/null
if wire wait --incarnation 2 --timeout 900 > /root/wait.json 2>&1; then pass new-settings-applied; else fail new-settings-applied "$(tail -c 300 /root/wait.json)"; fi
check_status new-settings-success "$AGENT_HD/status/1.status" success
check new-settings-install-nothing sh -c '[ "$(grep -c " install doca-ofed:amd64 " /var/log/dpkg.log)" = 1 ]'
stat -c %Y "/boot/initrd.img-$K" > /root/initrd.mtime
t0=$(date +%s)
wire bump --state uninstall --keep-seqno >/dev/null
# The agent deletes the handler's directory once uninstall has returned.
check_within agent-uninstalled 900 sh -c "[ ! -d '$AGENT_HD' ]"
note "doca-uninstall: uninstall bump to the handler directory gone: $(( $(date +%s) - t0 )) s"
check uninstall-exit-0 grep -q 'end verb=uninstall exit=0' "$LOG"
gone() { for p in "$@"; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q ' installed$' && { echo "$p still installed"; return 1; }; done; return 0; }
check stack-packages-gone gone doca-ofed doca-host mlnx-ofed-kernel-dkms mlnx-ofed-kernel-utils
check doca-source-list-gone sh -c '[ ! -e /etc/apt/sources.list.d/doca.list ]'
check no-holds-left sh -c '[ -z "$(apt-mark showhold)" ]'
check dkms-order-lines-gone sh -c '! grep -qs "mlnx-ofed-kernel" /etc/dkms/iser.conf /etc/dkms/isert.conf /etc/dkms/srp.conf'
check dkms-build-gone sh -c "! dkms status 2>/dev/null | grep -q mlnx-ofed-kernel && [ ! -e /lib/modules/$K/updates/dkms/mlx5_ib.ko ]"
for p in rdma-core libibverbs1 ibverbs-providers; do
  check "debian-$p-back" sh -c "[ \"\$(dpkg-query -W -f='\${Status} \${Version}' $p)\" = 'install ok installed $(debian_version $p)' ]"
done
check libibverbs-loads python3 -c 'import ctypes; ctypes.CDLL("libibverbs.so.1").ibv_get_device_list'
# The agent kills uninstall at 300 s, and update-initramfs alone can take longer under TCG: it
# runs in a transient unit of ours and finishes after uninstall has returned.
check initramfs-in-own-unit sh -c "journalctl -b -o cat | grep -q 'Started ibdriver-initramfs-'"
check_within initramfs-rebuilt 600 sh -c "[ \$(stat -c %Y /boot/initrd.img-$K) -gt $(cat /root/initrd.mtime) ]"
modprobe -r mlx5_ib mlx5_core 2>/dev/null
modprobe mlx5_ib
check kernel-mlx5_ib-again sh -c 'modinfo -n mlx5_ib | grep -q "/kernel/drivers/" && grep -q "^mlx5_ib " /proc/modules && [ ! -e /sys/module/mlx5_ib/srcversion ]'
