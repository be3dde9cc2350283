# cloud-init: a NoCloud seed disk whose user-data runs `ibdriver apply` at first boot; the real
# cloud-init runs it, and this reads its result and exit code.
. "$S/guest/lib.sh"
timeout 900 cloud-init status --wait >/dev/null 2>&1
check cloud-init-finishes sh -c 'cloud-init status | grep -Eq "status: (done|error)"'
cloud-init status --long > "$S/state/cloud-init-status.txt" 2>&1
check cloud-init-done grep -q "status: done" "$S/state/cloud-init-status.txt"
check datasource-nocloud grep -qi nocloud "$S/state/cloud-init-status.txt"
check apply-ran test -f /var/log/ibdriver-apply.rc
check apply-exit-0 sh -c '[ "$(cat /var/log/ibdriver-apply.rc)" = 0 ] || { cat /var/log/ibdriver-apply.out; false; }'
check apply-says-success grep -q '^success' /var/log/ibdriver-apply.out
check inbox-installed sh -c 'dpkg-query -W -f="\${Status}\n" rdma-core | grep -q "install ok installed"'
check modules-loaded sh -c 'for m in ib_uverbs ib_umad rdma_ucm ib_ipoib; do grep -q "^$m " /proc/modules || { echo "$m not loaded"; exit 1; }; done'
check modules-load-d test -s /etc/modules-load.d/infiniband-driver-linux.conf
check ipoib-address sh -c 'ip -4 -o addr show dev ib0 | grep -q " 172.16.1.4/16 "'
cp /var/log/ibdriver-apply.out "$S/state/" 2>/dev/null
