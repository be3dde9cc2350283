// SPDX-License-Identifier: GPL-2.0
// TEST FIXTURE, never shipped: a module that does nothing, built by DKMS under one of the names
// of mlnx-ofed-kernel's modules (KBUILD_MODNAME), so that DKMS, depmod, modprobe and the
// kernel's module resolution act on it as on the real stack. See packaging/vm/README.md.
#include <linux/init.h>
#include <linux/module.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ibdriver VM-tier fixture standing in for " KBUILD_MODNAME);
MODULE_VERSION("25.10-1.2.8");

#ifdef FIXTURE_CORE
/* mlx5_core: what mlx5_ib needs from it, so depmod records the dependency. */
int mlx5_fixture_core(void)
{
	return 0;
}
EXPORT_SYMBOL(mlx5_fixture_core);
#endif

#ifdef FIXTURE_IB
/* mlx5_ib needs mlx5_core (ours) and ib_core (the kernel's), as the real one does. */
int mlx5_fixture_core(void);
int ib_register_client(void *client);
static void *const fixture_needs[] __used = { mlx5_fixture_core, ib_register_client };
#endif

static int __init fixture_init(void)
{
	return 0;
}

static void __exit fixture_exit(void)
{
}

module_init(fixture_init);
module_exit(fixture_exit);
