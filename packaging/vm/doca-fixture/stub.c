// SPDX-License-Identifier: GPL-2.0
// TEST FIXTURE, never shipped: a module that does nothing, built by DKMS under one of the names
// of mlnx-ofed-kernel's modules (KBUILD_MODNAME), so that DKMS, depmod, modprobe and the
// kernel's module resolution act on it as on the real stack. See packaging/vm/README.md.
#include <linux/init.h>
#include <linux/module.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ibdriver VM-tier fixture standing in for " KBUILD_MODNAME);
MODULE_VERSION("25.10-1.2.8");

static int __init fixture_init(void)
{
	return 0;
}

static void __exit fixture_exit(void)
{
}

module_init(fixture_init);
module_exit(fixture_exit);
