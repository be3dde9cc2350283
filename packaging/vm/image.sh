#!/usr/bin/env bash
# Builds the VM tier's Debian 12 guest image from Debian packages only, or reuses the cached one.
# Output: target/vm/image/<key>/{disk.img,vmlinuz,initrd.img,build.txt}; <key> is a hash of
# every input (this script, packaging/vm/image/, the recorded hardware tree, the package lists),
# so a change to any of them builds a new image. Prints the image directory as its only stdout
# line. The image has no rdma-core: its inbox packages wait in a local repository
# (/srv/ibtest-repo, served on the guest's loopback) for the handler's own apt-get to install.
# Usage: packaging/vm/image.sh   (root; needs Debian's mirror while building)
set -euo pipefail
cd "$(dirname "$0")/../.."
log() { printf 'image.sh: %s\n' "$*" >&2; }

# What the guest has installed, and what waits in its local repository (the handler's Debian 12
# inbox list, handler/plan/recipe.rs inbox_packages).
GUEST_PKGS="systemd-sysv udev kmod dbus iproute2 procps linux-image-amd64 initramfs-tools python3 openssl waagent cloud-init"
# What the handler's prerequisites stage installs for a vendor stack (recipe.rs header_packages,
# build_packages), already there so that stage's apt-get finds them: the DOCA scenarios build
# the fixture's modules with the guest's real DKMS against its real kernel headers.
BUILD_PKGS="linux-headers-amd64 build-essential dkms perl pciutils lsof"
REPO_PKGS="rdma-core ibverbs-providers libibverbs1 ibverbs-utils librdmacm1 rdmacm-utils libibumad3 infiniband-diags"
HW=tests/fixtures/hosts/hbv3

key=$( { cat "$0"; find packaging/vm/image packaging/vm/doca-fixture packaging/vm/repo-index.py "$HW/sys" -type f | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -c1-16)
out=target/vm/image/$key
if [ -f "$out/build.txt" ]; then echo "$(pwd)/$out"; exit 0; fi

t0=$(date +%s)
base=$(packaging/bookworm-base.sh)
build=target/vm/image/build
root=$build/root
cleanup() { for m in proc sys dev/pts dev; do mountpoint -q "$root/$m" && umount -l "$root/$m"; done; return 0; }
trap cleanup EXIT
cleanup
rm -rf "$build"; mkdir -p "$root"
tar -C "$root" -xf "$base"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"; mount --rbind /sys "$root/sys"; mount --bind /dev "$root/dev"; mount --bind /dev/pts "$root/dev/pts"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }

# No service starts inside the build root; a small initrd with just what boots from virtio.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 0755 "$root/usr/sbin/policy-rc.d"
mkdir -p "$root/etc/initramfs-tools/conf.d"
echo 'MODULES=list' > "$root/etc/initramfs-tools/conf.d/ibtest"
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >> "$root/etc/initramfs-tools/modules"
log "apt-get install (guest packages)"
in_root apt-get update -qq >"$build/apt.log" 2>&1
in_root apt-get install -y -qq --no-install-recommends $GUEST_PKGS $BUILD_PKGS >>"$build/apt.log" 2>&1 \
  || { tail -30 "$build/apt.log" >&2; exit 1; }
log "apt-get install --download-only (the local repository)"
in_root apt-get clean
in_root apt-get install -y -qq --download-only --no-install-recommends $REPO_PKGS >>"$build/apt.log" 2>&1 \
  || { tail -30 "$build/apt.log" >&2; exit 1; }
# The kernel-update scenario's newer kernel: the image and headers bookworm-backports'
# linux-image-amd64 and linux-headers-amd64 name, with what they need, fetched now (the guest
# has no route out).
echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$root/etc/apt/sources.list.d/bpo.list"
in_root apt-get update -qq >>"$build/apt.log" 2>&1
in_root apt-get install -y -qq --download-only --no-install-recommends -t bookworm-backports \
  linux-image-amd64 linux-headers-amd64 >>"$build/apt.log" 2>&1 || { tail -30 "$build/apt.log" >&2; exit 1; }
rm "$root/etc/apt/sources.list.d/bpo.list"
# Not their meta packages: with those in the repository, apt would upgrade the installed
# linux-image-amd64 and linux-headers-amd64 along with any kernel, headers included.
rm -f "$root"/var/cache/apt/archives/linux-image-amd64_*bpo* "$root"/var/cache/apt/archives/linux-headers-amd64_*bpo*
mkdir -p "$root/srv/ibtest-repo"
mv "$root"/var/cache/apt/archives/*.deb "$root/srv/ibtest-repo/"
python3 packaging/vm/repo-index.py "$root/srv/ibtest-repo"
# The DOCA-shaped fixture (packaging/vm/doca-fixture), served beside it: /doca/ and /doca-broken/.
packaging/vm/doca-fixture/build.sh "$root/srv/ibtest-repo/doca" "$root/srv/ibtest-repo" >/dev/null
packaging/vm/doca-fixture/build.sh "$root/srv/ibtest-repo/doca-broken" "$root/srv/ibtest-repo" broken >/dev/null
rm -f "$root/usr/sbin/policy-rc.d"

# The guest's configuration.
echo 'deb [trusted=yes] http://127.0.0.1:8080/ ./' > "$root/etc/apt/sources.list"
rm -rf "$root"/var/lib/apt/lists/*
printf 'Acquire::http::Timeout "900";\nAcquire::Retries "0";\nAcquire::http::Proxy::127.0.0.1 "DIRECT";\n' > "$root/etc/apt/apt.conf.d/90ibtest"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$root/etc/fstab"
echo ibtest > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 ibtest\n' > "$root/etc/hosts"
: > "$root/etc/machine-id"
mkdir -p "$root/etc/cloud/cloud.cfg.d"
echo 'datasource_list: [ NoCloud, None ]' > "$root/etc/cloud/cloud.cfg.d/90-ibtest.cfg"
install -m 0755 packaging/vm/image/ibtest-net packaging/vm/image/ibtest-run packaging/vm/image/ibtest-repo packaging/vm/image/ibtest-export-boot "$root/usr/local/sbin/"
install -m 0644 packaging/vm/image/*.service packaging/vm/image/*.mount "$root/etc/systemd/system/"
in_root systemctl enable ibtest-net.service ibtest-repo.service ibtest.service ibtest-export-boot.service >/dev/null 2>&1
# Nothing on a timer of its own (apt's daily runs would race the handler's apt-get).
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
# The recorded hardware (hbv3: a ConnectX-6 VF whose port is ACTIVE) and the host's KVP record
# of its IPoIB address, for the handler's IPoIB `native` mode.
mkdir -p "$root/var/lib/ibtest/hw" "$root/var/lib/hyperv"
cp -r "$HW/sys" "$root/var/lib/ibtest/hw/"
python3 - "$root/var/lib/hyperv/.kvp_pool_0" <<'PY'
import sys
rec = lambda k, v: k.encode().ljust(512, b"\0") + v.encode().ljust(2048, b"\0")
open(sys.argv[1], "wb").write(rec("IPoIB_Data", "NUMPAIRS:1|00155D33FF2C:172.16.1.4|"))
PY

# Smaller: no documentation, locales, or kernel drivers a virtio guest never loads; dpkg leaves
# the same drivers out of any kernel installed later (and unpacks it faster).
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/cache/apt/*.bin
kver=$(ls "$root/lib/modules" | head -n1)
for d in drivers/gpu drivers/media drivers/net/wireless drivers/staging sound drivers/bluetooth drivers/scsi drivers/usb drivers/hid drivers/input net/wireless net/bluetooth; do
  rm -rf "$root/lib/modules/$kver/kernel/$d"
  echo "path-exclude=/lib/modules/*/kernel/$d/*"
done > "$root/etc/dpkg/dpkg.cfg.d/ibtest-trim"
in_root depmod -a "$kver"
cleanup
cp "$root/boot/vmlinuz-$kver" "$build/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$build/initrd.img"
rm -f "$root/etc/resolv.conf"
log "mkfs.ext4 -d (the disk image)"
mkfs.ext4 -q -F -L ibtest -d "$root" "$build/disk.img" 3G >&2   # it says "Creating regular file" on stdout
{ echo "kernel $kver"; echo "built in $(( $(date +%s) - t0 )) s"; du -sh --apparent-size "$build/disk.img"; du -sh "$build/disk.img"; } > "$build/build.txt"
rm -rf "$root"
find target/vm/image -mindepth 1 -maxdepth 1 -type d ! -name build -exec rm -rf {} +
mkdir -p "$out"
mv "$build/disk.img" "$build/vmlinuz" "$build/initrd.img" "$build/build.txt" "$build/apt.log" "$out/"
rm -rf "$build"
log "image built in $(( $(date +%s) - t0 )) s: $(tr '\n' ' ' < "$out/build.txt")"
echo "$(pwd)/$out"
