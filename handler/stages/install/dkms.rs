//! After a DOCA install: did DKMS build every module of the stack for the running kernel? If
//! not, the failure quotes the end of the module's `make.log`.

use crate::error::{Code, Failure};
use crate::host::Root;
use crate::plan::recipe::{self, Family};
use crate::sys::proc;
use std::path::PathBuf;
use std::time::Duration;

/// `dkms status -k <kernel>` lines: `name/version, kernel, arch: installed`.
pub fn dkms_installed(status: &str, module: &str, kernel: &str) -> bool {
    status.lines().any(|l| {
        let l = l.trim();
        l.starts_with(&format!("{module}/")) || l.starts_with(&format!("{module},"))
    } && l.contains(kernel) && l.contains(": installed"))
}

/// `DkmsFailed` naming the first of the stack's modules DKMS did not install for `kernel`.
pub(super) fn check_dkms(root: &Root, family: Family, kernel: &str) -> Result<(), Failure> {
    let out = proc::run(
        "dkms",
        &["status", "-k", kernel],
        None,
        Duration::from_secs(120),
    )
    .map_err(|e| Failure::new(Code::DkmsFailed, format!("cannot run dkms: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    for m in recipe::dkms_modules(family) {
        if !dkms_installed(&text, m, kernel) {
            let log = find_make_log(root, m)
                .map(|p| {
                    crate::sys::fsutil::read_trimmed(&p)
                        .map(|t| proc::tail_line(&t, 400))
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            return Err(Failure::new(
                Code::DkmsFailed,
                format!("DKMS did not build {m} for kernel {kernel}; make.log ends: {log}"),
            ));
        }
    }
    Ok(())
}

/// The build log of the module's first version that has one.
fn find_make_log(root: &Root, module: &str) -> Option<PathBuf> {
    let base = root.path(&format!("var/lib/dkms/{module}"));
    crate::sys::fsutil::dir_names(&base)
        .into_iter()
        .map(|v| base.join(v).join("build/make.log"))
        .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dkms_status_lines() {
        let s = "mlnx-ofed-kernel/25.10.OFED.25.10.1.2.8.1, 5.15.0-1073-azure, x86_64: installed\n\
                 iser/25.10, 5.15.0-1073-azure, x86_64: built\n";
        assert!(dkms_installed(s, "mlnx-ofed-kernel", "5.15.0-1073-azure"));
        assert!(!dkms_installed(s, "iser", "5.15.0-1073-azure"));
        assert!(!dkms_installed(s, "mlnx-ofed-kernel", "6.8.0"));
        let warned = "mlnx-ofed-kernel/25.10, 6.8.0-1021-azure, x86_64: installed (WARNING! Diff between built and installed module!)";
        assert!(dkms_installed(
            warned,
            "mlnx-ofed-kernel",
            "6.8.0-1021-azure"
        ));
    }
}
