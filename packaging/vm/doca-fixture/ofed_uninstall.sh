#!/bin/sh
# TEST FIXTURE: the stack's own uninstaller removes every package the stack brought.
[ "${1:-}" = --force ] || { echo "usage: ofed_uninstall.sh --force" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
pkgs=$(dpkg-query -W -f '${Package} ${db:Status-Status}\n' mlnx-ofed-kernel-dkms mlnx-ofed-kernel-utils \
  rdma-core libibverbs1 ibverbs-providers 2>/dev/null | awk '$2 != "not-installed" {print $1}')
[ -z "$pkgs" ] || dpkg --purge --force-depends $pkgs
