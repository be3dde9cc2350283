#!/usr/bin/env bash
# TEST FIXTURE, never shipped: builds a DOCA-Host-shaped repository package from the sources in
# this directory. `build.sh OUT DEBS [broken]` writes OUT/doca-host_<ver>_amd64.deb, DEBS being a
# directory with Debian's rdma-core, libibverbs1 and ibverbs-providers packages. It installs a
# local apt repository under /usr/share/doca-host-<ver>/repo and its source list
# /etc/apt/sources.list.d/doca.list, as the real one does, holding:
#   doca-ofed               the meta package the handler installs
#   mlnx-ofed-kernel-dkms   a real DKMS source package: do-nothing modules under the stack's
#                           names, built for each kernel with headers (failures masked, as
#                           vendor package scripts do); `broken`: mlx5_core does not compile
#   mlnx-ofed-kernel-utils  ofed_info, ofed_uninstall.sh, openibd (init script and unit)
#   rdma-core libibverbs1 ibverbs-providers   Debian's own, repacked at a higher version than
#                           bookworm's 44.0-2 (DOCA's are rdma-core rebuilt, at 2510mlnx
#                           versions, so apt prefers them and only a hold keeps them)
# Needs dpkg-deb and python3 (packaging/vm/repo-index.py). See packaging/vm/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1 debs=$2 variant=${3:-good}
DOCA=3.2.0-125000-25.10-debian12
[ "$variant" = broken ] && DOCA=3.2.0-125001-25.10-debian12
KVER=25.10.OFED.25.10.1.2.8.1
SHADOW=2510.0.8-1
MODULES="mlx5_core mlx5_ib"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
repo=$work/host/usr/share/doca-host-$DOCA/repo
mkdir -p "$repo" "$out"

# deb NAME VERSION [DEPENDS]: packs $work/pkg/NAME (its DEBIAN/ scripts already there) into the repo.
deb() {
  local d=$work/pkg/$1
  mkdir -p "$d/DEBIAN" "$d/usr/share/doc/$1"
  echo "TEST FIXTURE of the ibdriver VM tier, never shipped." > "$d/usr/share/doc/$1/README.fixture"
  { echo "Package: $1"; echo "Version: $2"; echo "Architecture: amd64"
    echo "Maintainer: ibdriver VM tier <fixture@localhost>"
    [ -n "${3:-}" ] && echo "Depends: $3"
    echo "Description: TEST FIXTURE standing in for DOCA-Host's $1"; } > "$d/DEBIAN/control"
  dpkg-deb --root-owner-group -Zgzip --build "$d" "$repo/${1}_${2}_amd64.deb" >/dev/null
}

# The DKMS source package.
src=$work/pkg/mlnx-ofed-kernel-dkms/usr/src/mlnx-ofed-kernel-$KVER
mkdir -p "$src"
i=0
{ echo "PACKAGE_NAME=\"mlnx-ofed-kernel\""; echo "PACKAGE_VERSION=\"$KVER\""
  echo "MAKE[0]=\"make -C \${kernel_source_dir} M=\${dkms_tree}/\${PACKAGE_NAME}/\${PACKAGE_VERSION}/build modules\""
  echo "CLEAN=\"make -C \${kernel_source_dir} M=\${dkms_tree}/\${PACKAGE_NAME}/\${PACKAGE_VERSION}/build clean\""
  echo "AUTOINSTALL=\"yes\""
  for m in $MODULES; do
    echo "BUILT_MODULE_NAME[$i]=\"$m\""; echo "DEST_MODULE_LOCATION[$i]=\"/updates/dkms\""; i=$((i + 1))
  done; } > "$src/dkms.conf"
for m in $MODULES; do cp "$here/stub.c" "$src/$m.c"; echo "obj-m += $m.o" >> "$src/Kbuild"; done
printf 'CFLAGS_mlx5_core.o := -DFIXTURE_CORE\nCFLAGS_mlx5_ib.o := -DFIXTURE_IB\n' >> "$src/Kbuild"
[ "$variant" = broken ] && echo '#error "fixture variant: this module does not compile"' >> "$src/mlx5_core.c"
d=$work/pkg/mlnx-ofed-kernel-dkms/DEBIAN; mkdir -p "$d"
cat > "$d/postinst" <<SH
#!/bin/sh
# Like vendor DKMS packages: build for every kernel with headers, and exit 0 whatever happens.
[ "\$1" = configure ] || exit 0
dkms add -m mlnx-ofed-kernel -v $KVER >/dev/null 2>&1 || true
for k in \$(ls /lib/modules); do
  [ -e "/lib/modules/\$k/build" ] && dkms install -m mlnx-ofed-kernel -v $KVER -k "\$k" || true
done
exit 0
SH
printf '#!/bin/sh\ndkms remove -m mlnx-ofed-kernel -v %s --all >/dev/null 2>&1 || true\nexit 0\n' "$KVER" > "$d/prerm"
chmod 0755 "$d/postinst" "$d/prerm"
deb mlnx-ofed-kernel-dkms "$KVER-1" "dkms, make, gcc"

# The utilities.
u=$work/pkg/mlnx-ofed-kernel-utils
install -D -m 0755 "$here/ofed_info" "$u/usr/bin/ofed_info"
install -D -m 0755 "$here/ofed_uninstall.sh" "$u/usr/sbin/ofed_uninstall.sh"
install -D -m 0755 "$here/openibd" "$u/etc/init.d/openibd"
install -D -m 0644 "$here/openibd.service" "$u/lib/systemd/system/openibd.service"
deb mlnx-ofed-kernel-utils "$KVER-1" "kmod"

# The shadowing packages: Debian's files and scripts under the fixture's version, their exact
# dependencies on each other moved with it.
for p in rdma-core libibverbs1 ibverbs-providers; do
  f=$(ls "$debs/${p}_"*_amd64.deb | head -n1)
  d=$work/shadow/$p; mkdir -p "$work/shadow"; dpkg-deb -R "$f" "$d"
  v=$(sed -n 's/^Version: //p' "$d/DEBIAN/control")
  sed -i -e "s/^Version: .*/Version: $SHADOW/" -e "s/(= $v)/(= $SHADOW)/g" \
    -e "s/^Description: /Description: TEST FIXTURE (Debian's, repacked) /" "$d/DEBIAN/control"
  mkdir -p "$d/usr/share/doc/$p"
  echo "TEST FIXTURE of the ibdriver VM tier, never shipped." > "$d/usr/share/doc/$p/README.fixture"
  dpkg-deb --root-owner-group -Zgzip --build "$d" "$repo/${p}_${SHADOW}_amd64.deb" >/dev/null
done
mkdir -p "$work/pkg/doca-ofed/opt/mellanox/doca"
echo "$DOCA" > "$work/pkg/doca-ofed/opt/mellanox/doca/VERSION.fixture"
deb doca-ofed "$DOCA" "mlnx-ofed-kernel-dkms (= $KVER-1), mlnx-ofed-kernel-utils (= $KVER-1), rdma-core (= $SHADOW), libibverbs1 (= $SHADOW), ibverbs-providers (= $SHADOW)"
python3 "$here/../repo-index.py" "$repo" >/dev/null

# The repository package itself.
h=$work/host
mkdir -p "$h/DEBIAN" "$h/etc/apt/sources.list.d"
echo "deb [trusted=yes] file:/usr/share/doca-host-$DOCA/repo ./" > "$h/etc/apt/sources.list.d/doca.list"
echo /etc/apt/sources.list.d/doca.list > "$h/DEBIAN/conffiles"
{ echo "Package: doca-host"; echo "Version: $DOCA"; echo "Architecture: amd64"
  echo "Maintainer: ibdriver VM tier <fixture@localhost>"
  echo "Description: TEST FIXTURE standing in for the DOCA-Host repository package"; } > "$h/DEBIAN/control"
dpkg-deb --root-owner-group -Zgzip --build "$h" "$out/doca-host_${DOCA}_amd64.deb" >/dev/null
echo "$out/doca-host_${DOCA}_amd64.deb"
