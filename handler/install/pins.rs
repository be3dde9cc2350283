//! Keeping DOCA-OFED's user space in place (DOMAIN.md 2.2-2.3, pain point 13): the distribution
//! ships newer rdma-core packages that would replace DOCA's and break it on the next update.
//! On apt hosts the shadowed packages are held; on dnf/yum hosts they are excluded from the
//! distribution's BaseOS repositories. Also the DKMS build order fix for DOCA's modules.
//! The text transforms are pure; [`apply`] writes them.

use super::recipe::Family;
use crate::host::Root;

/// Distribution packages DOCA-OFED replaces with its own builds: on apt hosts the inbox set
/// itself; on the rpm families name patterns, for repository excludes.
pub fn shadowed(f: Family) -> Vec<String> {
    match f {
        Family::Apt => super::recipe::inbox_packages(f),
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

/// Before DOCA's install: the DKMS build order (apt hosts, where DOCA builds with DKMS).
pub fn before_doca(root: &Root, f: Family) -> std::io::Result<()> {
    if f != Family::Apt {
        return Ok(());
    }
    for m in ["iser", "isert", "srp"] {
        let path = root.path(&format!("etc/dkms/{m}.conf"));
        let existing = std::fs::read_to_string(&path).ok();
        if let Some(text) = build_depends(existing.as_deref(), "mlnx-ofed-kernel") {
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            crate::fsutil::write_atomic(&path, text.as_bytes())?;
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
            for name in crate::fsutil::dir_names(&dir)
                .into_iter()
                .filter(|n| n.ends_with(".repo"))
            {
                let path = dir.join(&name);
                let text = std::fs::read_to_string(&path)?;
                let patterns = shadowed(f);
                let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
                let new = exclude_in_repo(&text, &refs);
                if new != text {
                    crate::fsutil::write_atomic(&path, new.as_bytes())?;
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
}
