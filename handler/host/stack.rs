//! Which driver stack is installed: NVIDIA DOCA-OFED or MLNX_OFED (from `ofed_info -s`), or the
//! distro's inbox rdma-core (from the dpkg status file or the rpm database).

use crate::sys::fsutil::read_trimmed;
use crate::sys::proc;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StackKind {
    Doca,
    MlnxOfed,
    Inbox,
}

impl StackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StackKind::Doca => "doca",
            StackKind::MlnxOfed => "mlnx-ofed",
            StackKind::Inbox => "inbox",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledStack {
    pub kind: StackKind,
    pub version: Option<String>,
    /// Whether the user-space verbs library is present (rdma-core's libibverbs).
    pub verbs_library: bool,
}

/// What this handler installed last (`installed.json` in the data directory): lets a later
/// sequence number with the same choice skip the installer and the reboot. A DOCA version
/// cannot be read back from the host (`ofed_info` reports the OFED release), hence the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledMarker {
    pub stack: StackKind,
    pub version: String,
    /// SHA-256 of the artifact, or `inbox`.
    pub sha256: String,
}

pub const MARKER: &str = "installed.json";

pub fn read_marker(root: &crate::host::root::Root) -> Option<InstalledMarker> {
    serde_json::from_slice(
        &crate::sys::fsutil::read_regular(
            &root.data_dir().join(MARKER),
            crate::sys::fsutil::MAX_READ,
        )
        .ok()?,
    )
    .ok()
}

/// `ofed_info -s` prints e.g. `MLNX_OFED_LINUX-24.10-1.1.4.0:` or, for DOCA-OFED,
/// `OFED-internal-25.10-1.2.8:`.
pub fn parse_ofed_info(out: &str) -> Option<(StackKind, String)> {
    let line = out.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = line.trim_end_matches(':');
    if let Some(v) = line.strip_prefix("MLNX_OFED_LINUX-") {
        return Some((StackKind::MlnxOfed, v.to_string()));
    }
    if let Some(v) = line.strip_prefix("OFED-internal-") {
        return Some((StackKind::Doca, v.to_string()));
    }
    None
}

/// Version of an installed package in a dpkg status file.
pub fn dpkg_version(status: &str, package: &str) -> Option<String> {
    for stanza in status.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut installed = false;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if name == Some(package) && installed {
            return version.map(str::to_string);
        }
    }
    None
}

const VERBS_LIBRARY_DIRS: [&str; 6] = [
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "usr/lib64",
    "lib64",
    "usr/lib",
    "lib/x86_64-linux-gnu",
];

pub fn has_verbs_library(root: &crate::host::root::Root) -> bool {
    VERBS_LIBRARY_DIRS
        .iter()
        .any(|d| root.path(d).join("libibverbs.so.1").exists())
}

fn rpm_version(root: &crate::host::root::Root, package: &str) -> Option<String> {
    if !root.path("var/lib/rpm").is_dir() && !root.path("usr/lib/sysimage/rpm").is_dir() {
        return None;
    }
    let root_s = root.base().to_string_lossy().to_string();
    let out = proc::run(
        "rpm",
        &[
            "--root",
            &root_s,
            "-q",
            "--qf",
            "%{VERSION}-%{RELEASE}",
            package,
        ],
        None,
        Duration::from_secs(20),
    )
    .ok()?;
    out.success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Detect the installed stack. `ofed_info` is run only when the host has it, so hosts without
/// OFED pay no process start.
pub fn detect(root: &crate::host::root::Root) -> Option<InstalledStack> {
    let verbs_library = has_verbs_library(root);
    let ofed_info = ["usr/bin/ofed_info", "usr/sbin/ofed_info"]
        .iter()
        .any(|p| root.path(p).exists());
    if ofed_info {
        if let Ok(out) = proc::run("ofed_info", &["-s"], None, Duration::from_secs(20)) {
            if let Some((mut kind, version)) =
                parse_ofed_info(&String::from_utf8_lossy(&out.stdout))
            {
                if root.path("opt/mellanox/doca").is_dir() {
                    kind = StackKind::Doca;
                }
                return Some(InstalledStack {
                    kind,
                    version: Some(version),
                    verbs_library,
                });
            }
        }
    }
    let version = read_trimmed(&root.path("var/lib/dpkg/status"))
        .and_then(|s| dpkg_version(&s, "rdma-core"))
        .or_else(|| rpm_version(root, "rdma-core"));
    if version.is_some() || verbs_library {
        return Some(InstalledStack {
            kind: StackKind::Inbox,
            version,
            verbs_library,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ofed_info_forms() {
        assert_eq!(
            parse_ofed_info("MLNX_OFED_LINUX-24.10-1.1.4.0:\n"),
            Some((StackKind::MlnxOfed, "24.10-1.1.4.0".into()))
        );
        assert_eq!(
            parse_ofed_info("OFED-internal-25.10-1.2.8:\n"),
            Some((StackKind::Doca, "25.10-1.2.8".into()))
        );
        assert_eq!(parse_ofed_info("garbage"), None);
        assert_eq!(parse_ofed_info(""), None);
    }

    #[test]
    fn dpkg_status() {
        let s = "Package: bash\nStatus: install ok installed\nVersion: 5.2\n\n\
                 Package: rdma-core\nStatus: deinstall ok config-files\nVersion: 38.0\n\n\
                 Package: rdma-core\nStatus: install ok installed\nVersion: 39.0-1\n";
        assert_eq!(dpkg_version(s, "rdma-core").as_deref(), Some("39.0-1"));
        assert_eq!(dpkg_version(s, "ibverbs-utils"), None);
    }
}
