//! Host facts, read through the seams of docs/ARCHITECTURE.md, "Seams": every path under
//! `IBDRIVER_ROOT`, the hardware (PCI, InfiniBand, VMBus, EFI) under `IBDRIVER_SYSFS`
//! ([`Root::sysfs`]), IMDS at `IBDRIVER_IMDS_URL`, programs from `PATH`. Reading changes
//! nothing.

pub mod imds;
pub mod ip;
pub mod kvp;
pub mod os_release;
pub mod pci;
pub mod root;
pub mod stack;

pub use root::Root;

use crate::sys::fsutil::{dir_names, read_trimmed};
use serde::Serialize;
use std::collections::BTreeSet;

pub const VMBUS_PCI_PASSTHROUGH: &str = "44c4f61d-4444-4400-9d52-802e27ede19f";
pub const VMBUS_NETWORK_DIRECT: &str = "8c2eaf3d-32a7-4b09-ab99-bd1f1c86b501";
/// The EFI Secure Boot variable, below the sysfs directory (a hardware fact: firmware).
pub const EFI_SECURE_BOOT: &str =
    "firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// The PCI functions, below the sysfs directory.
pub const PCI_DEVICES: &str = "bus/pci/devices";
/// The VMBus devices, below the sysfs directory.
pub const VMBUS_DEVICES: &str = "bus/vmbus/devices";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Vmbus {
    pub devices: usize,
    pub pci_passthrough: usize,
    pub network_direct: bool,
}

/// The VMBus devices' `class_id`s, from the sysfs directory.
pub fn read_vmbus(root: &Root) -> Vmbus {
    let dir = root.sysfs(VMBUS_DEVICES);
    let mut v = Vmbus::default();
    for name in dir_names(&dir) {
        v.devices += 1;
        let class = read_trimmed(&dir.join(&name).join("class_id"))
            .unwrap_or_default()
            .trim_matches(|c| c == '{' || c == '}')
            .to_ascii_lowercase();
        if class == VMBUS_PCI_PASSTHROUGH {
            v.pci_passthrough += 1;
        } else if class == VMBUS_NETWORK_DIRECT {
            v.network_direct = true;
        }
    }
    v
}

/// Names of loaded modules from `/proc/modules`.
pub fn parse_proc_modules(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The EFI variable: 4 bytes of attributes, then one byte, 1 = enabled.
pub fn parse_efi_secure_boot(bytes: &[u8]) -> Option<bool> {
    bytes.get(4).map(|b| *b == 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecureBoot {
    Enabled,
    Disabled,
    Unknown,
}

/// Either source saying "on" means on: modules must then be signed.
pub fn secure_boot(efi: Option<bool>, imds: Option<bool>) -> SecureBoot {
    match (efi, imds) {
        (Some(true), _) | (_, Some(true)) => SecureBoot::Enabled,
        (Some(false), _) | (_, Some(false)) => SecureBoot::Disabled,
        _ => SecureBoot::Unknown,
    }
}

/// Everything the planner and verifier need; serialized as `plan --json`'s `facts`.
#[derive(Debug, Clone, Serialize)]
pub struct HostFacts {
    pub os: Option<os_release::OsRelease>,
    pub kernel: String,
    pub boot_id: String,
    pub hyperv: bool,
    pub vmbus: Vmbus,
    pub mellanox: Vec<pci::PciFunction>,
    pub kvp: kvp::KvpFacts,
    pub modules: BTreeSet<String>,
    pub secure_boot: SecureBoot,
    pub stack: Option<stack::InstalledStack>,
    /// What this handler installed last, if anything.
    pub installed_by_us: Option<stack::InstalledMarker>,
    pub imds: Option<imds::Compute>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imds_error: Option<String>,
}

impl HostFacts {
    pub fn infiniband_functions(&self) -> impl Iterator<Item = &pci::PciFunction> {
        self.mellanox.iter().filter(|f| f.is_infiniband())
    }

    pub fn vm_size(&self) -> Option<&str> {
        self.imds
            .as_ref()
            .map(|c| c.vm_size.as_str())
            .filter(|s| !s.is_empty())
    }
}

/// The parts that are pure file reads: cheap enough for the no-op enable and the monitor.
/// The Mellanox functions come from the sysfs directory; the kernel, boot id and modules are
/// the running system's state and come from the root's `/proc` and `lib/modules`.
pub struct Sysfs {
    pub kernel: String,
    pub boot_id: String,
    pub mellanox: Vec<pci::PciFunction>,
    pub modules: BTreeSet<String>,
}

pub fn read_sysfs(root: &Root) -> Sysfs {
    let kernel = read_trimmed(&root.path("proc/sys/kernel/osrelease")).unwrap_or_default();
    Sysfs {
        boot_id: read_trimmed(&root.path("proc/sys/kernel/random/boot_id")).unwrap_or_default(),
        mellanox: pci::scan(&root.sysfs(PCI_DEVICES)),
        modules: loaded_modules(root, &kernel),
        kernel,
    }
}

/// Loaded modules plus those built into the running kernel (`modules.builtin`), which never
/// appear in `/proc/modules` but work all the same.
fn loaded_modules(root: &Root, kernel: &str) -> BTreeSet<String> {
    let mut set = read_trimmed(&root.path("proc/modules"))
        .map(|t| parse_proc_modules(&t))
        .unwrap_or_default();
    if !kernel.is_empty() {
        if let Some(text) =
            read_trimmed(&root.path(&format!("lib/modules/{kernel}/modules.builtin")))
        {
            set.extend(parse_modules_builtin(&text));
        }
    }
    set
}

/// `kernel/drivers/infiniband/core/ib_core.ko` -> `ib_core` (dashes become underscores).
pub fn parse_modules_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter_map(|f| f.strip_suffix(".ko"))
        .map(|m| m.replace('-', "_"))
        .collect()
}

/// Full detection. IMDS is asked only when `imds_policy` is given; the installed stack (which
/// may run `ofed_info` or `rpm`) only when `probe_stack` is set.
pub fn detect(root: &Root, imds_policy: Option<&imds::Policy>, probe_stack: bool) -> HostFacts {
    let sysfs = read_sysfs(root);
    let vmbus = read_vmbus(root);
    let os = read_trimmed(&root.path("etc/os-release")).and_then(|t| os_release::parse(&t));
    let kvp = crate::sys::fsutil::read_regular(
        &root.path("var/lib/hyperv/.kvp_pool_0"),
        crate::sys::fsutil::MAX_READ,
    )
    .map(|b| kvp::facts(&b))
    .unwrap_or_default();
    let (imds, imds_error) = match imds_policy {
        Some(p) => match imds::fetch_compute(&imds::base_url(), p) {
            Ok(c) => (Some(c), None),
            Err(e) => {
                tracing::warn!(error = %e, "IMDS not available; relying on hardware probes");
                (None, Some(e))
            }
        },
        None => (None, None),
    };
    let efi = crate::sys::fsutil::read_regular(&root.sysfs(EFI_SECURE_BOOT), 64)
        .ok()
        .and_then(|b| parse_efi_secure_boot(&b));
    let secure_boot = secure_boot(efi, imds.as_ref().and_then(|c| c.secure_boot()));
    HostFacts {
        os,
        kernel: sysfs.kernel,
        boot_id: sysfs.boot_id,
        hyperv: vmbus.devices > 0,
        vmbus,
        mellanox: sysfs.mellanox,
        kvp,
        modules: sysfs.modules,
        secure_boot,
        stack: if probe_stack {
            stack::detect(root)
        } else {
            None
        },
        installed_by_us: stack::read_marker(root),
        imds,
        imds_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn root_joins_absolute_paths() {
        let r = Root::new("/tmp/x");
        assert_eq!(
            r.path("/etc/os-release"),
            PathBuf::from("/tmp/x/etc/os-release")
        );
        assert_eq!(r.path("sys"), PathBuf::from("/tmp/x/sys"));
    }

    #[test]
    fn modules_and_efi() {
        let m = parse_proc_modules("mlx5_ib 458752 0 - Live 0x0\nib_core 1 2 mlx5_ib, Live 0x0\n");
        assert!(m.contains("mlx5_ib") && m.contains("ib_core"));
        assert_eq!(parse_efi_secure_boot(&[6, 0, 0, 0, 1]), Some(true));
        assert_eq!(parse_efi_secure_boot(&[6, 0, 0, 0, 0]), Some(false));
        assert_eq!(parse_efi_secure_boot(&[6]), None);
        assert_eq!(secure_boot(Some(false), Some(true)), SecureBoot::Enabled);
        assert_eq!(secure_boot(None, Some(false)), SecureBoot::Disabled);
        assert_eq!(secure_boot(None, None), SecureBoot::Unknown);
        let b = parse_modules_builtin(
            "kernel/drivers/infiniband/core/ib_core.ko\nkernel/net/x/mlx5-core.ko\n",
        );
        assert!(b.contains("ib_core") && b.contains("mlx5_core"));
    }
}
