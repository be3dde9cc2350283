//! The host's filesystem root and its hardware tree: every host path is read and written under
//! the root (`IBDRIVER_ROOT`), every hardware fact (PCI functions, InfiniBand ports, network
//! interfaces, VMBus devices, the EFI Secure Boot variable) is read under the sysfs directory
//! (`IBDRIVER_SYSFS`, default `<root>/sys`). Tests point them at fake trees; `plan --sysfs`
//! and the VM test tier point the second at a recorded tree while the first stays the real
//! system.

use std::path::{Path, PathBuf};

/// The variable naming the directory that stands for `/sys` (absolute; unset or empty:
/// `<root>/sys`).
pub const SYSFS_VAR: &str = "IBDRIVER_SYSFS";

/// The host's filesystem root (`/` in production) and the directory its hardware facts are
/// read from (`/sys` in production).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    base: PathBuf,
    sysfs: PathBuf,
}

impl Root {
    /// A root whose hardware facts are its own `sys/`.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        let base = base.into();
        Root {
            sysfs: base.join("sys"),
            base,
        }
    }

    /// `IBDRIVER_ROOT` (default `/`) and `IBDRIVER_SYSFS` (default `<root>/sys`).
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        let root = Root::new(var("IBDRIVER_ROOT").unwrap_or_else(|| PathBuf::from("/")));
        match var(SYSFS_VAR) {
            Some(dir) => root.with_sysfs(dir),
            None => root,
        }
    }

    /// The same root with its hardware facts read from `dir` instead.
    pub fn with_sysfs(self, dir: impl Into<PathBuf>) -> Self {
        Root {
            sysfs: dir.into(),
            ..self
        }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `abs` may be written with or without its leading `/`.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.base.join(abs.trim_start_matches('/'))
    }

    /// The directory that stands for `/sys`.
    pub fn sysfs_dir(&self) -> &Path {
        &self.sysfs
    }

    /// A hardware fact: `rel` is the path below `/sys` (`bus/pci/devices`), with or without a
    /// leading `/`. Kernel state that is not hardware (`/sys/module`, `/proc`) stays on
    /// [`Root::path`].
    pub fn sysfs(&self, rel: &str) -> PathBuf {
        self.sysfs.join(rel.trim_start_matches('/'))
    }

    /// Our data directory, outside the versioned handler directory so it survives updates.
    pub fn data_dir(&self) -> PathBuf {
        self.path("var/lib/infiniband-driver-linux")
    }

    /// Is the systemd unit file `name` installed (under /etc, /usr/lib or /lib)?
    pub fn has_unit(&self, name: &str) -> bool {
        [
            "etc/systemd/system",
            "usr/lib/systemd/system",
            "lib/systemd/system",
        ]
        .iter()
        .any(|d| self.path(&format!("{d}/{name}")).exists())
    }

    pub fn systemd_running(&self) -> bool {
        self.path("run/systemd/system").is_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_facts_follow_the_root_unless_moved() {
        let r = Root::new("/tmp/x");
        assert_eq!(r.sysfs_dir(), Path::new("/tmp/x/sys"));
        assert_eq!(
            r.sysfs("/bus/pci/devices"),
            PathBuf::from("/tmp/x/sys/bus/pci/devices")
        );
        let moved = r.with_sysfs("/rec/sysfs");
        assert_eq!(
            moved.sysfs("class/net"),
            PathBuf::from("/rec/sysfs/class/net")
        );
        // Everything else stays on the root.
        assert_eq!(
            moved.path("etc/os-release"),
            PathBuf::from("/tmp/x/etc/os-release")
        );
        assert_eq!(
            moved.path("sys/module/mlx5_ib/srcversion"),
            PathBuf::from("/tmp/x/sys/module/mlx5_ib/srcversion")
        );
        assert_eq!(moved.base(), Path::new("/tmp/x"));
    }
}
