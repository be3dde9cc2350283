//! The host's filesystem root: every host path is read and written under it, so tests point
//! it (`IBDRIVER_ROOT`) at a fake tree.

use std::path::{Path, PathBuf};

/// The host's filesystem root (`/` in production).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Root {
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Root(base.into())
    }

    pub fn from_env() -> Self {
        Root::new(
            std::env::var_os("IBDRIVER_ROOT")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/")),
        )
    }

    pub fn base(&self) -> &Path {
        &self.0
    }

    /// `abs` may be written with or without its leading `/`.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.0.join(abs.trim_start_matches('/'))
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
