//! The settings as data: the public settings with their defaults, the protected ones, and
//! [`Secret`], the one way a value that must never be printed is held.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stack {
    #[default]
    Auto,
    Doca,
    MlnxOfed,
    Inbox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpoibMode {
    #[default]
    Auto,
    Native,
    Waagent,
    Off,
}

/// HCA device names: leave the kernel's, or give InfiniBand HCAs `mlx5_ib<N>`
/// and accelerated-networking ones `mlx5_an<N>` so every node of a cluster names them alike.
/// See docs/DOMAIN.md, "HCA names".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HcaNaming {
    #[default]
    Kernel,
    Stable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RebootPolicy {
    #[default]
    #[serde(rename = "ifRequired")]
    IfRequired,
    #[serde(rename = "never")]
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRef {
    /// May be left out when the protected setting `packageUrl` carries the URL.
    #[serde(default)]
    pub url: Option<String>,
    pub sha256: String,
}

pub const DEFAULT_LOCK_TIMEOUT_SECONDS: u64 = 900;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PublicSettings {
    #[serde(default)]
    pub stack: Stack,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub package: Option<PackageRef>,
    #[serde(default)]
    pub mirror: Option<String>,
    #[serde(default)]
    pub ipoib: IpoibMode,
    #[serde(default)]
    pub reboot: RebootPolicy,
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout_seconds: u64,
    #[serde(default)]
    pub hca_naming: HcaNaming,
    /// Uninstall removes the driver stack this extension installed (default: drivers stay).
    #[serde(default)]
    pub remove_drivers_on_uninstall: bool,
}

fn default_lock_timeout() -> u64 {
    DEFAULT_LOCK_TIMEOUT_SECONDS
}

impl Default for PublicSettings {
    fn default() -> Self {
        PublicSettings {
            stack: Stack::Auto,
            version: None,
            package: None,
            mirror: None,
            ipoib: IpoibMode::Auto,
            reboot: RebootPolicy::IfRequired,
            lock_timeout_seconds: DEFAULT_LOCK_TIMEOUT_SECONDS,
            hca_naming: HcaNaming::Kernel,
            remove_drivers_on_uninstall: false,
        }
    }
}

/// A value that must never be printed: Debug and Display show a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtectedSettings {
    /// A package URL that may carry a SAS token (instead of `package.url`).
    pub package_url: Option<Secret>,
    /// A proxy URL that may carry credentials.
    pub proxy: Option<Secret>,
}

/// The settings of one sequence number, ready to use.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub public: PublicSettings,
    pub protected: ProtectedSettings,
    /// SHA-256 over the handler settings as the agent wrote them (encrypted blob included,
    /// never the plaintext), so a checkpoint can tell whether the settings changed.
    pub fingerprint: String,
}
