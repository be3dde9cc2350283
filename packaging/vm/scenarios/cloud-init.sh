# cloud-init: a NoCloud seed disk whose user-data runs `ibdriver apply` at first boot; the real
# cloud-init runs it, and this reads its result and exit code.
. "$S/guest/lib.sh"
check_within cloud-init-finishes 900 sh -c 'cloud-init status | grep -Eq "status: (done|error)"'
check cloud-init-done sh -c 'cloud-init status --long 2>&1 | grep -q "status: done"'
check datasource-nocloud sh -c 'cloud-init status --long 2>&1 | grep -qi "nocloud"'
check apply-ran test -f /var/log/ibdriver-apply.rc
check apply-exit-0 sh -c '[ "$(cat /var/log/ibdriver-apply.rc)" = 0 ] || { cat /var/log/ibdriver-apply.out; false; }'
check apply-says-success grep -q '^success' /var/log/ibdriver-apply.out
check inbox-installed sh -c 'dpkg-query -W -f="\${Status}\n" rdma-core | grep -q "install ok installed"'
check modules-loaded sh -c 'for m in ib_uverbs ib_umad rdma_ucm ib_ipoib; do grep -q "^$m " /proc/modules || { echo "$m not loaded"; exit 1; }; done'
check modules-load-d test -s /etc/modules-load.d/infiniband-driver-linux.conf
check ipoib-address sh -c 'ip -4 -o addr show dev ib0 | grep -q " 172.16.1.4/16 "'
cp /var/log/ibdriver-apply.out "$S/state/" 2>/dev/null
