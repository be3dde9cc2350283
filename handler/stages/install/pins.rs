//! Keeping DOCA-OFED's user space (docs/DOMAIN.md, "Keeping DOCA's packages"): the distribution
//! ships newer rdma-core packages that would replace DOCA's and break it on the next update.
//! On apt hosts the shadowed packages are held; on dnf/yum hosts they are excluded from the
//! distribution's BaseOS repositories. Also the DKMS build order fix for DOCA's modules.
//! The text transforms are pure; [`apply`] writes them.

use crate::host::Root;
use crate::plan::recipe::Family;

/// Distribution packages DOCA-OFED replaces with its own builds: on apt hosts the inbox set
/// itself; on the rpm families name patterns, for repository excludes.
pub fn shadowed(f: Family) -> Vec<String> {
    match f {
        Family::Apt => crate::plan::recipe::inbox_packages(f),
        _ => [
            "rdma-core*",
            "libibverbs*",
            "librdmacm*",
            "libibumad*",
            "infiniband-diags*",
            "ucx*",
            "openmpi*",
        ]
        .iter()
        .map(|p| p.to_string())
        .collect(),
    }
}

/// Add `packages` to the `exclude=` line of every section of a `.repo` file whose id names a
/// BaseOS repository, keeping every other line as it is. Idempotent.
pub fn exclude_in_repo(text: &str, packages: &[&str]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut in_baseos = false;
    let mut pending = false; // a BaseOS section still without an exclude line
    let flush = |out: &mut Vec<String>, pending: &mut bool| {
        if *pending {
            // Before trailing blank lines of the section.
            let at = out
                .iter()
                .rposition(|l| !l.trim().is_empty())
                .map(|i| i + 1)
                .unwrap_or(out.len());
            out.insert(at, format!("exclude={}", packages.join(" ")));
            *pending = false;
        }
    };
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            flush(&mut out, &mut pending);
            in_baseos = t.to_ascii_lowercase().contains("baseos");
            pending = in_baseos;
            out.push(line.to_string());
            continue;
        }
        if in_baseos {
            if let Some(v) = t
                .strip_prefix("exclude")
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix('='))
            {
                let mut have: Vec<String> = v
                    .split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                for p in packages {
                    if !have.iter().any(|h| h == p) {
                        have.push(p.to_string());
                    }
                }
                out.push(format!("exclude={}", have.join(" ")));
                pending = false;
                continue;
            }
        }
        out.push(line.to_string());
    }
    flush(&mut out, &mut pending);
    let mut s = out.join("\n");
    if text.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The inverse of [`exclude_in_repo`]: take `packages` out of the `exclude=` lines of BaseOS
/// sections, dropping a line left empty. Other sections and other patterns stay. Idempotent.
pub fn unexclude_in_repo(text: &str, packages: &[&str]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut in_baseos = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            in_baseos = t.to_ascii_lowercase().contains("baseos");
        } else if in_baseos {
            if let Some(v) = t
                .strip_prefix("exclude")
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix('='))
            {
                let words: Vec<&str> = v.split([' ', ',']).filter(|s| !s.is_empty()).collect();
                if !words.iter().any(|w| packages.contains(w)) {
                    // Not a line we touched: byte for byte as it was.
                    out.push(line.to_string());
                    continue;
                }
                let kept: Vec<&str> = words
                    .into_iter()
                    .filter(|s| !packages.contains(s))
                    .collect();
                if !kept.is_empty() {
                    out.push(format!("exclude={}", kept.join(" ")));
                }
                continue;
            }
        }
        out.push(line.to_string());
    }
    let mut s = out.join("\n");
    if text.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// `/etc/dkms/<m>.conf` so iser, isert and srp build after mlnx-ofed-kernel (DKMS builds in
/// alphabetical order otherwise). `None` when the file already says so.
pub fn build_depends(existing: Option<&str>, on: &str) -> Option<String> {
    let line = format!("BUILD_DEPENDS=\"{on}\"");
    match existing {
        Some(t) if t.lines().any(|l| l.trim() == line) => None,
        Some(t) => {
            let mut kept: Vec<&str> = t
                .lines()
                .filter(|l| !l.trim_start().starts_with("BUILD_DEPENDS="))
                .collect();
            kept.push(&line);
            Some(kept.join("\n") + "\n")
        }
        None => Some(line + "\n"),
    }
}

/// The inverse of [`build_depends`]: the file without our `BUILD_DEPENDS` line, or `None`
/// when it has none.
pub fn without_build_depends(existing: &str, on: &str) -> Option<String> {
    let line = format!("BUILD_DEPENDS=\"{on}\"");
    if !existing.lines().any(|l| l.trim() == line) {
        return None;
    }
    let kept: Vec<&str> = existing.lines().filter(|l| l.trim() != line).collect();
    Some(if kept.is_empty() {
        String::new()
    } else {
        kept.join("\n") + "\n"
    })
}

/// Before DOCA's install: the DKMS build order (apt hosts, where DOCA builds with DKMS).
pub fn before_doca(root: &Root, f: Family) -> std::io::Result<()> {
    if f != Family::Apt {
        return Ok(());
    }
    for m in ["iser", "isert", "srp"] {
        let path = root.path(&format!("etc/dkms/{m}.conf"));
        let existing = std::fs::read_to_string(&path).ok();
        if let Some(text) = build_depends(existing.as_deref(), "mlnx-ofed-kernel") {
            crate::sys::fsutil::ensure_system_dir(path.parent().expect("has a parent"))?;
            crate::sys::fsutil::write_system_file(&path, text.as_bytes())?;
        }
    }
    Ok(())
}

/// After DOCA's install: BaseOS excludes (rpm families). Holds on apt hosts are commands,
/// returned for the caller to run: `apt-mark hold` with the shadowed packages installed.
pub fn after_doca(root: &Root, f: Family) -> std::io::Result<Vec<String>> {
    match f {
        Family::Apt => {
            let status =
                std::fs::read_to_string(root.path("var/lib/dpkg/status")).unwrap_or_default();
            let installed: Vec<String> = shadowed(f)
                .into_iter()
                .filter(|p| crate::host::stack::dpkg_version(&status, p).is_some())
                .collect();
            Ok(installed)
        }
        Family::Dnf | Family::Yum => {
            let dir = root.path("etc/yum.repos.d");
            for name in crate::sys::fsutil::dir_names(&dir)
                .into_iter()
                .filter(|n| n.ends_with(".repo"))
            {
                let path = dir.join(&name);
                let text = std::fs::read_to_string(&path)?;
                let patterns = shadowed(f);
                let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
                let new = exclude_in_repo(&text, &refs);
                if new != text {
                    crate::sys::fsutil::write_system_file(&path, new.as_bytes())?;
                    tracing::info!(repo = %name, "excluded DOCA-shadowed packages from BaseOS");
                }
            }
            Ok(Vec::new())
        }
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "[baseos]\nname=AlmaLinux 8 - BaseOS\nbaseurl=https://x/BaseOS\n\n[appstream]\nname=AppStream\n\n[BaseOS-debug]\nexclude=kernel*\nenabled=0\n";

    #[test]
    fn repo_excludes_touch_only_baseos_and_are_idempotent() {
        let once = exclude_in_repo(REPO, &["rdma-core*", "libibverbs*"]);
        assert_eq!(
            once,
            "[baseos]\nname=AlmaLinux 8 - BaseOS\nbaseurl=https://x/BaseOS\nexclude=rdma-core* libibverbs*\n\n[appstream]\nname=AppStream\n\n[BaseOS-debug]\nexclude=kernel* rdma-core* libibverbs*\nenabled=0\n"
        );
        assert_eq!(exclude_in_repo(&once, &["rdma-core*", "libibverbs*"]), once);
    }

    #[test]
    fn repo_excludes_are_undone_exactly() {
        let pats = ["rdma-core*", "libibverbs*"];
        let once = exclude_in_repo(REPO, &pats);
        assert_eq!(unexclude_in_repo(&once, &pats), REPO);
        assert_eq!(unexclude_in_repo(REPO, &pats), REPO);
    }

    #[test]
    fn dkms_build_order_is_undone() {
        let ours = build_depends(None, "mlnx-ofed-kernel").unwrap();
        assert_eq!(
            without_build_depends(&ours, "mlnx-ofed-kernel").as_deref(),
            Some("")
        );
        let mixed = "MAKE=x\nBUILD_DEPENDS=\"mlnx-ofed-kernel\"\n";
        assert_eq!(
            without_build_depends(mixed, "mlnx-ofed-kernel").as_deref(),
            Some("MAKE=x\n")
        );
        assert_eq!(without_build_depends("MAKE=x\n", "mlnx-ofed-kernel"), None);
    }

    #[test]
    fn dkms_build_order() {
        assert_eq!(
            build_depends(None, "mlnx-ofed-kernel").unwrap(),
            "BUILD_DEPENDS=\"mlnx-ofed-kernel\"\n"
        );
        assert_eq!(
            build_depends(
                Some("BUILD_DEPENDS=\"mlnx-ofed-kernel\"\n"),
                "mlnx-ofed-kernel"
            ),
            None
        );
        assert_eq!(
            build_depends(
                Some("MAKE=x\nBUILD_DEPENDS=\"other\"\n"),
                "mlnx-ofed-kernel"
            )
            .unwrap(),
            "MAKE=x\nBUILD_DEPENDS=\"mlnx-ofed-kernel\"\n"
        );
    }

    #[test]
    fn lines_we_did_not_touch_stay_byte_for_byte() {
        let text = "[baseos]\nexclude=kernel*,foo\n";
        assert_eq!(unexclude_in_repo(text, &["rdma-core"]), text);
    }

    #[test]
    fn system_files_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.repo");
        std::fs::write(&p, "a").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        crate::sys::fsutil::write_system_file(&p, b"b").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let q = dir.path().join("new.conf");
        crate::sys::fsutil::write_system_file(&q, b"c").unwrap();
        assert_eq!(
            std::fs::metadata(&q).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
}
