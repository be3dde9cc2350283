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
                .and_then(|p| crate::sys::fsutil::read_trimmed(&p))
                .unwrap_or_default();
            return Err(Failure::new(
                Code::DkmsFailed,
                format!(
                    "DKMS did not build {m} for kernel {kernel}; {}",
                    make_log_summary(&log)
                ),
            ));
        }
    }
    Ok(())
}

/// What a failed build's `make.log` says, in one line: kbuild's log ends with make's own
/// "Error 2" and "Leaving directory" lines, so the compiler's first error comes first, then the
/// end of the log.
pub fn make_log_summary(log: &str) -> String {
    if log.is_empty() {
        return "make.log is missing or empty".into();
    }
    let tail = proc::tail_line(log, 300);
    // gcc's "error:", modpost's "ERROR:".
    match log
        .lines()
        .find(|l| l.to_ascii_lowercase().contains("error:"))
    {
        Some(first) => format!(
            "first error: {}; make.log ends: {tail}",
            proc::tail_line(first, 300)
        ),
        None => format!("make.log ends: {tail}"),
    }
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
    fn make_log_summary_puts_the_compiler_error_first() {
        // A real kbuild log (Debian 12, linux-headers-6.1.0-50-amd64), shortened.
        let log = "DKMS make.log for mlnx-ofed-kernel-25.10 for kernel 6.1.0-50-amd64 (x86_64)\n\
            make: Entering directory '/usr/src/linux-headers-6.1.0-50-amd64'\n\
              CC [M]  /var/lib/dkms/mlnx-ofed-kernel/25.10/build/mlx5_core.o\n\
            /var/lib/dkms/mlnx-ofed-kernel/25.10/build/mlx5_core.c:24:2: error: #error \"does not compile\"\n\
               24 | #error \"does not compile\"\n\
            make[1]: *** [scripts/Makefile.build:255: mlx5_core.o] Error 1\n\
            make: *** [Makefile:2050: build] Error 2\n\
            make: Leaving directory '/usr/src/linux-headers-6.1.0-50-amd64'\n";
        let s = make_log_summary(log);
        assert!(
            s.starts_with("first error: /var/lib/dkms/mlnx-ofed-kernel/25.10/build/mlx5_core.c:24:2: error: #error"),
            "{s}"
        );
        assert!(
            s.ends_with("make: Leaving directory '/usr/src/linux-headers-6.1.0-50-amd64'"),
            "{s}"
        );
        let modpost = make_log_summary(
            "  MODPOST Module.symvers\nERROR: modpost: \"ib_x\" [mlx5_ib.ko] undefined!\nmake: *** Error 2\n",
        );
        assert!(
            modpost.starts_with("first error: ERROR: modpost: \"ib_x\" [mlx5_ib.ko] undefined!;"),
            "{modpost}"
        );
        let plain = make_log_summary("make: *** [Makefile:2050: build] Error 2\n");
        assert_eq!(
            plain,
            "make.log ends: make: *** [Makefile:2050: build] Error 2"
        );
        assert_eq!(make_log_summary(""), "make.log is missing or empty");
    }

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
