//! What we take from our own process environment, read once at the edge: the seams (root,
//! sysfs directory, IMDS URL, verify timeout), `PATH`, the agent's version variable and the proxy variables.
//! The worker's environment and the health unit's are generated from it.
//!
//! systemd-run starts the worker in a clean environment, so enable hands the values on. The
//! plain ones go on systemd-run's command line (`--setenv`). The proxy variables may carry
//! credentials, and a command line and a unit's `Environment=` are readable by every local
//! user (`ps`, `systemctl show`), so they go through a 0600 file in the data directory
//! instead (`engine::files::PROXY_ENV`), which the worker reads beside its own environment.

use crate::engine::files;
use crate::sys::fsutil;
use std::collections::BTreeMap;
use std::path::Path;

/// Handed to the worker on its command line: none of them is a secret.
pub const PASSED_VARS: [&str; 6] = [
    "IBDRIVER_ROOT",
    "IBDRIVER_SYSFS",
    "IBDRIVER_IMDS_URL",
    "IBDRIVER_VERIFY_TIMEOUT_SECONDS",
    "PATH",
    "AZURE_GUEST_AGENT_EXTENSION_VERSION",
];

/// Handed to the health unit: what it needs to look at the same host (and the same hardware).
pub const UNIT_VARS: [&str; 3] = ["IBDRIVER_ROOT", "IBDRIVER_SYSFS", "IBDRIVER_IMDS_URL"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runtime {
    /// [`PASSED_VARS`] that are set, non-empty and valid UTF-8, in that order.
    pub passed: Vec<(&'static str, String)>,
    /// The proxy variables (`http_proxy`, `https_proxy`, `no_proxy`, either case).
    pub proxy: BTreeMap<String, String>,
}

impl Runtime {
    pub fn from_env() -> Runtime {
        Runtime::from_lookup(|k| std::env::var_os(k)?.into_string().ok())
    }

    /// From any lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Runtime {
        let passed = PASSED_VARS
            .iter()
            .filter_map(|k| Some((*k, get(k).filter(|v| !v.is_empty())?)))
            .collect();
        let proxy = ["http_proxy", "https_proxy", "no_proxy"]
            .iter()
            .flat_map(|k| [k.to_string(), k.to_ascii_uppercase()])
            .filter_map(|k| Some((k.clone(), get(&k)?)))
            .collect();
        Runtime { passed, proxy }
    }

    /// The health unit's `Environment=` values.
    pub fn unit_vars(&self) -> impl Iterator<Item = &(&'static str, String)> {
        self.passed.iter().filter(|(k, _)| UNIT_VARS.contains(k))
    }

    /// Leave the proxy variables for the worker (0600, temp + rename), or remove an old file
    /// when there are none.
    pub fn save_proxy(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = data_dir.join(files::PROXY_ENV);
        if self.proxy.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let bytes = serde_json::to_vec(&self.proxy).expect("a string map serializes");
        fsutil::write_atomic(&path, &bytes)
    }
}

/// What enable left in the data directory for its worker (nothing once the worker took it).
pub fn saved_proxy(data_dir: &Path) -> BTreeMap<String, String> {
    fsutil::read_regular(&data_dir.join(files::PROXY_ENV), fsutil::MAX_READ)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The proxy variables a worker uses: its own environment's, and for each one it lacks, what
/// enable left in the data directory. The file is removed once read: the credentials stay on
/// disk only between enable and its worker's start (the next enable writes them again).
pub fn take_worker_proxy(data_dir: &Path) -> BTreeMap<String, String> {
    let mut proxy = Runtime::from_env().proxy;
    for (k, v) in saved_proxy(data_dir) {
        proxy.entry(k).or_insert(v);
    }
    let path = data_dir.join(files::PROXY_ENV);
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove");
        }
    }
    proxy
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn plain_values_are_passed_in_order_and_proxies_kept_apart() {
        let r = Runtime::from_lookup(lookup(&[
            ("PATH", "/usr/bin"),
            ("IBDRIVER_ROOT", "/tmp/r"),
            ("IBDRIVER_SYSFS", "/rec/sysfs"),
            ("IBDRIVER_IMDS_URL", ""),
            ("https_proxy", "http://u:secret@p:3128"),
            ("NO_PROXY", "169.254.169.254"),
            ("HOME", "/root"),
        ]));
        assert_eq!(
            r.passed,
            vec![
                ("IBDRIVER_ROOT", "/tmp/r".into()),
                ("IBDRIVER_SYSFS", "/rec/sysfs".into()),
                ("PATH", "/usr/bin".into())
            ]
        );
        assert_eq!(
            r.proxy.keys().collect::<Vec<_>>(),
            ["NO_PROXY", "https_proxy"]
        );
        assert!(!r.passed.iter().any(|(_, v)| v.contains("secret")));
        assert_eq!(
            r.unit_vars().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["IBDRIVER_ROOT", "IBDRIVER_SYSFS"]
        );
    }

    #[test]
    fn saved_proxies_are_private_and_fill_what_the_worker_lacks() {
        let d = tempfile::tempdir().unwrap();
        let r = Runtime::from_lookup(lookup(&[("ibdriver_test_only", "x")]));
        r.save_proxy(d.path()).unwrap();
        assert!(!d.path().join(files::PROXY_ENV).exists());
        let mut r = r;
        r.proxy
            .insert("IBDRIVER_TEST_PROXY_VAR".into(), "http://u:p@h:1".into());
        r.save_proxy(d.path()).unwrap();
        let path = d.path().join(files::PROXY_ENV);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        assert_eq!(
            saved_proxy(d.path())["IBDRIVER_TEST_PROXY_VAR"],
            "http://u:p@h:1"
        );
        // No proxies any more: the file goes.
        Runtime::default().save_proxy(d.path()).unwrap();
        assert!(!path.exists());
        // The worker takes them: read once, then gone from the disk.
        r.save_proxy(d.path()).unwrap();
        let got = take_worker_proxy(d.path());
        assert_eq!(got["IBDRIVER_TEST_PROXY_VAR"], "http://u:p@h:1");
        assert!(!path.exists());
    }

    #[test]
    fn a_proxy_file_that_cannot_be_removed_is_an_error_not_a_silent_leftover() {
        // A directory where the file would be: remove_file fails with something other than
        // NotFound, and enable must hear of it (the old credentials would otherwise stay).
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(files::PROXY_ENV)).unwrap();
        assert!(Runtime::default().save_proxy(d.path()).is_err());
        // Nothing there at all is fine.
        let e = tempfile::tempdir().unwrap();
        Runtime::default().save_proxy(e.path()).unwrap();
    }
}
