//! Removing a driver stack on uninstall (`removeDriversOnUninstall: true`): only a vendor stack
//! this extension installed (`installed.json` in the data directory), the way its vendor
//! documents it, and only what the install added around it.
//!
//! - DOCA-OFED: unhold the distribution packages held after the install (apt), purge the DOCA
//!   packages (`doca-*`, `flexio*`, `dpa-*` as NVIDIA's removal guide lists them; this takes the
//!   `doca-host` repository package and its repository file with it), run the stack's own
//!   `/usr/sbin/ofed_uninstall.sh --force`, take our `BUILD_DEPENDS` lines out of
//!   `/etc/dkms/{iser,isert,srp}.conf` (apt) or our `exclude=` patterns out of the BaseOS
//!   repositories (dnf/yum).
//! - MLNX_OFED: `/usr/sbin/ofed_uninstall.sh --force`, which the bundle installed.
//! - Then the distribution's RDMA packages are installed again (the stack's own rdma-core had
//!   replaced them and its removal took it), and the initramfs of the running kernel is
//!   rebuilt, so the next boot does not load modules that are gone. Under systemd that rebuild
//!   runs in a transient unit of its own and finishes after uninstall has returned: it takes
//!   minutes on a slow VM, and the agent kills uninstall at 300 s.
//!
//! Never removed: the inbox stack (the distribution's packages, whoever installed them), a
//! stack this extension did not install (no marker, or only an interrupted install's
//! `installing.json`) and the kernel's own modules. Never run: `apt-get autoremove` (it would
//! also take packages others left orphaned). Which commands run is a pure function ([`plan`]); [`run`]
//! carries it out within the uninstall's time budget (the agent kills uninstall at 300 s).

use super::pins;
use crate::error::{Code, Failure};
use crate::host::stack::{self, InstalledMarker, StackKind};
use crate::host::Root;
use crate::plan::recipe::{self, Cmd, CmdKind, Family};
use crate::sys::proc;
use std::time::{Duration, Instant};

/// The stack's own uninstaller, shipped by DOCA-OFED and MLNX_OFED alike.
pub const UNINSTALLER: &str = "usr/sbin/ofed_uninstall.sh";

/// Package names NVIDIA's DOCA removal guide purges.
pub fn is_doca_package(name: &str) -> bool {
    name.contains("doca")
        || ["flexio", "dpa-gdbserver", "dpa-stats", "dpaeumgmt"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// Installed and held packages from a dpkg status file.
pub fn dpkg_packages(status: &str) -> (Vec<String>, Vec<String>) {
    let mut installed = Vec::new();
    let mut held = Vec::new();
    for stanza in status.split("\n\n") {
        let mut name = None;
        let mut state = "";
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                state = v.trim();
            }
        }
        let Some(name) = name else { continue };
        if state.ends_with(" installed") {
            if state.starts_with("hold ") {
                held.push(name.clone());
            }
            installed.push(name);
        }
    }
    (installed, held)
}

/// What the host looks like, as far as removal cares.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Installed package names.
    pub installed: Vec<String>,
    /// Held package names (apt).
    pub held: Vec<String>,
    pub uninstaller: bool,
}

/// One step of a removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Run(Cmd),
    /// Run the stack's uninstaller if it is still there when the step comes (a purge before
    /// it may have taken it).
    Uninstaller,
    /// Take our lines out of `/etc/dkms/{iser,isert,srp}.conf`.
    DkmsOrder,
    /// Take our patterns out of the BaseOS repositories' `exclude=` lines.
    RepoExcludes,
    /// Rebuild the initramfs with this command: in a transient unit under systemd, else here.
    Initramfs(Cmd),
}

fn uninstaller_cmd(root: &Root) -> Cmd {
    Cmd::of_kind(
        CmdKind::Packages,
        "run the stack's uninstaller",
        1800,
        &[&root.path(UNINSTALLER).to_string_lossy(), "--force"],
    )
}

fn remove_packages(f: Family, packages: &[String], lock_wait: u64) -> Cmd {
    let mut c = match f {
        Family::Apt => {
            let mut c = Cmd::of_kind(
                CmdKind::Packages,
                "purge the DOCA packages",
                1800,
                &["apt-get", "purge", "-y", "-q"],
            );
            c.argv.push("-o".into());
            c.argv.push(format!("DPkg::Lock::Timeout={lock_wait}"));
            c.env
                .push(("DEBIAN_FRONTEND".into(), "noninteractive".into()));
            c
        }
        Family::Dnf => Cmd::of_kind(
            CmdKind::Packages,
            "remove the DOCA packages",
            1800,
            &["dnf", "remove", "-y"],
        ),
        Family::Yum => Cmd::of_kind(
            CmdKind::Packages,
            "remove the DOCA packages",
            1800,
            &["yum", "remove", "-y"],
        ),
        Family::Zypper => Cmd::of_kind(
            CmdKind::Packages,
            "remove the DOCA packages",
            1800,
            &["zypper", "--non-interactive", "remove"],
        ),
        Family::Tdnf => Cmd::of_kind(
            CmdKind::Packages,
            "remove the DOCA packages",
            1800,
            &["tdnf", "remove", "-y"],
        ),
    };
    c.argv.extend(packages.iter().cloned());
    c
}

/// The removal of `stack` on family `f`, or why there is nothing this extension may remove.
pub fn plan(
    f: Family,
    stack: StackKind,
    found: &Found,
    kernel: &str,
    lock_wait: u64,
) -> Result<Vec<Step>, Failure> {
    let mut steps = Vec::new();
    match stack {
        StackKind::Inbox => return Ok(steps),
        StackKind::MlnxOfed => {
            if !found.uninstaller {
                return Err(Failure::new(
                    Code::PackageInstallFailed,
                    format!(
                        "MLNX_OFED's uninstaller /{UNINSTALLER} is missing, so the stack cannot be \
                         removed cleanly; the drivers stay installed"
                    ),
                ));
            }
            steps.push(Step::Uninstaller);
        }
        StackKind::Doca => {
            if f == Family::Apt {
                let ours = pins::shadowed(f);
                let held: Vec<String> = found
                    .held
                    .iter()
                    .filter(|p| ours.contains(p))
                    .cloned()
                    .collect();
                if !held.is_empty() {
                    let mut c = Cmd::of_kind(
                        CmdKind::Packages,
                        "release the packages DOCA held",
                        300,
                        &["apt-mark", "unhold"],
                    );
                    c.argv.extend(held);
                    steps.push(Step::Run(c));
                }
            } else {
                steps.push(Step::RepoExcludes);
            }
            let doca: Vec<String> = found
                .installed
                .iter()
                .filter(|p| is_doca_package(p))
                .cloned()
                .collect();
            if !doca.is_empty() {
                steps.push(Step::Run(remove_packages(f, &doca, lock_wait)));
            }
            steps.push(Step::Uninstaller);
            if f == Family::Apt {
                steps.push(Step::DkmsOrder);
            }
        }
    }
    // The stack's removal takes its rdma-core with it, which had replaced the distribution's:
    // the kernel's own drivers stay, and need the distribution's user space back.
    let mut inbox = crate::plan::recipe::install_packages(
        f,
        &crate::plan::recipe::inbox_packages(f),
        lock_wait,
    );
    inbox.purpose = "put back the distribution's RDMA packages".into();
    steps.push(Step::Run(inbox));
    steps.push(Step::Initramfs(recipe::initramfs(f, kernel)));
    Ok(steps)
}

/// Read what [`plan`] needs from the host: the dpkg status file, or `rpm -qa` on rpm hosts.
pub fn survey(root: &Root, f: Family) -> Result<Found, Failure> {
    let (installed, held) = match f {
        Family::Apt => dpkg_packages(
            &std::fs::read_to_string(root.path("var/lib/dpkg/status")).unwrap_or_default(),
        ),
        _ => {
            let root_s = root.base().to_string_lossy().to_string();
            let out = proc::run(
                "rpm",
                &["--root", &root_s, "-qa", "--qf", "%{NAME}\\n"],
                None,
                Duration::from_secs(60),
            )
            .map_err(|e| Failure::new(Code::PackageInstallFailed, format!("rpm -qa: {e}")))?;
            if !out.success() {
                return Err(Failure::new(
                    Code::PackageInstallFailed,
                    format!(
                        "rpm -qa failed ({}): {}",
                        out.describe_exit(),
                        out.stderr_tail(200)
                    ),
                ));
            }
            let names = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            (names, Vec::new())
        }
    };
    Ok(Found {
        installed,
        held,
        uninstaller: root.path(UNINSTALLER).exists(),
    })
}

/// Take our lines and patterns back out of configuration files we changed.
fn undo_dkms_order(root: &Root) -> Result<(), Failure> {
    for m in ["iser", "isert", "srp"] {
        let path = root.path(&format!("etc/dkms/{m}.conf"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let io = |e| Failure::state_io(&path, e);
        match pins::without_build_depends(&text, "mlnx-ofed-kernel") {
            None => {}
            Some(rest) if rest.trim().is_empty() => std::fs::remove_file(&path).map_err(io)?,
            Some(rest) => {
                crate::sys::fsutil::write_system_file(&path, rest.as_bytes()).map_err(io)?
            }
        }
    }
    Ok(())
}

fn undo_repo_excludes(root: &Root, f: Family) -> Result<(), Failure> {
    let dir = root.path("etc/yum.repos.d");
    let patterns = pins::shadowed(f);
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    for name in crate::sys::fsutil::dir_names(&dir)
        .into_iter()
        .filter(|n| n.ends_with(".repo"))
    {
        let path = dir.join(&name);
        let text = std::fs::read_to_string(&path).map_err(|e| Failure::state_io(&path, e))?;
        let new = pins::unexclude_in_repo(&text, &refs);
        if new != text {
            crate::sys::fsutil::write_system_file(&path, new.as_bytes())
                .map_err(|e| Failure::state_io(&path, e))?;
            tracing::info!(repo = %name, "removed our BaseOS excludes");
        }
    }
    Ok(())
}

/// Carry out the removal of the stack `marker` records, before `deadline`. Returns what was
/// done, one line per step, for the log.
pub fn run(
    root: &Root,
    f: Family,
    marker: &InstalledMarker,
    kernel: &str,
    deadline: Instant,
) -> Result<Vec<String>, Failure> {
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let lock_wait = remaining().as_secs().min(60);
    let found = survey(root, f)?;
    let steps = plan(f, marker.stack, &found, kernel, lock_wait)?;
    let mut done = Vec::new();
    for step in steps {
        let cmd = match step {
            Step::DkmsOrder => {
                undo_dkms_order(root)?;
                done.push("removed our DKMS build-order lines".to_string());
                continue;
            }
            Step::RepoExcludes => {
                undo_repo_excludes(root, f)?;
                done.push("removed our BaseOS repository excludes".to_string());
                continue;
            }
            Step::Initramfs(c) if root.systemd_running() && proc::on_path("systemd-run") => {
                match detach(&c) {
                    Ok(unit) => {
                        done.push(format!("{} in the transient unit {unit}", c.purpose));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("{e}; rebuilding the initramfs before uninstall returns");
                        c
                    }
                }
            }
            Step::Initramfs(c) => c,
            Step::Uninstaller if !root.path(UNINSTALLER).exists() => continue,
            Step::Uninstaller => uninstaller_cmd(root),
            Step::Run(c) => c,
        };
        if remaining() < Duration::from_secs(5) {
            return Err(Failure::new(
                Code::PackageInstallFailed,
                format!(
                    "uninstall ran out of time before '{}'; finish by hand: /{UNINSTALLER} --force",
                    cmd.purpose
                ),
            ));
        }
        if cmd.kind == CmdKind::Packages {
            super::locks::wait(
                root,
                f,
                Duration::from_secs(lock_wait),
                Duration::from_secs(1),
                || true,
            )?;
        }
        let mut bounded = cmd.clone();
        bounded.timeout = cmd.timeout.min(remaining());
        super::run(&bounded, Code::PackageInstallFailed)?;
        done.push(cmd.purpose.clone());
    }
    tracing::info!(stack = marker.stack.as_str(), version = %marker.version, "driver stack removed");
    Ok(done)
}

/// Start `cmd` in a transient systemd unit that outlives uninstall (update-initramfs writes a
/// new image and renames it, so a unit stopped midway leaves the old one). Returns the unit.
fn detach(cmd: &Cmd) -> Result<String, proc::Unsuccessful> {
    let unit = crate::sys::systemd::start_transient(
        "ibdriver-initramfs",
        &[],
        &cmd.env,
        &cmd.argv,
        Duration::from_secs(30),
    )?;
    tracing::info!(unit = %unit, "{}: started in a transient unit; it finishes after uninstall returns", cmd.purpose);
    Ok(unit)
}

/// The stack this extension installed and may remove, if any (with the reason when none).
pub fn removable(root: &Root) -> Result<InstalledMarker, String> {
    match stack::read_marker(root) {
        None if root.data_dir().join("installing.json").exists() => Err(
            "an install of ours was interrupted; a stack we cannot prove we installed is kept"
                .into(),
        ),
        None => Err("this extension installed no driver stack".into()),
        Some(m) if m.stack == StackKind::Inbox => {
            Err("the inbox stack belongs to the distribution and is kept".into())
        }
        Some(m) => Ok(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: doca-host\nStatus: install ok installed\nVersion: 3.2.1\n\n\
        Package: doca-ofed\nStatus: install ok installed\nVersion: 3.2.1\n\n\
        Package: rdma-core\nStatus: hold ok installed\nVersion: 2510.0.9\n\n\
        Package: libibverbs1\nStatus: hold ok installed\nVersion: 2510.0.9\n\n\
        Package: bash\nStatus: hold ok installed\nVersion: 5.2\n\n\
        Package: flexio\nStatus: deinstall ok config-files\nVersion: 1\n";

    fn argv(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Run(c) | Step::Initramfs(c) => c.argv.join(" "),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn dpkg_status_lists_installed_and_held() {
        let (installed, held) = dpkg_packages(STATUS);
        assert_eq!(
            installed,
            ["doca-host", "doca-ofed", "rdma-core", "libibverbs1", "bash"]
        );
        assert_eq!(held, ["rdma-core", "libibverbs1", "bash"]);
    }

    #[test]
    fn doca_on_apt_releases_only_our_holds_and_purges_only_doca() {
        let (installed, held) = dpkg_packages(STATUS);
        let found = Found {
            installed,
            held,
            uninstaller: true,
        };
        let steps = plan(Family::Apt, StackKind::Doca, &found, "6.8.0", 30).unwrap();
        assert_eq!(
            argv(&steps),
            [
                "apt-mark unhold rdma-core libibverbs1",
                "apt-get purge -y -q -o DPkg::Lock::Timeout=30 doca-host doca-ofed",
                "Uninstaller",
                "DkmsOrder",
                "apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=30 \
                 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                 rdma-core ibverbs-providers libibverbs1 ibverbs-utils librdmacm1 rdmacm-utils \
                 libibumad3 infiniband-diags",
                "update-initramfs -u -k 6.8.0",
            ]
        );
    }

    #[test]
    fn doca_on_dnf_undoes_excludes_and_uses_dracut() {
        let found = Found {
            installed: vec!["doca-ofed".into(), "rdma-core".into(), "flexio-sdk".into()],
            held: vec![],
            uninstaller: false,
        };
        let steps = plan(Family::Dnf, StackKind::Doca, &found, "5.14", 9).unwrap();
        assert_eq!(
            argv(&steps),
            [
                "RepoExcludes",
                "dnf remove -y doca-ofed flexio-sdk",
                "Uninstaller",
                "dnf install -y -q rdma-core libibverbs libibverbs-utils librdmacm \
                 librdmacm-utils infiniband-diags",
                "dracut -f --kver 5.14",
            ]
        );
    }

    #[test]
    fn mlnx_ofed_needs_its_uninstaller_and_inbox_is_never_removed() {
        let none = Found::default();
        assert_eq!(
            plan(Family::Apt, StackKind::MlnxOfed, &none, "5.4", 9)
                .unwrap_err()
                .code,
            Code::PackageInstallFailed
        );
        let with = Found {
            uninstaller: true,
            ..Found::default()
        };
        assert_eq!(
            argv(&plan(Family::Apt, StackKind::MlnxOfed, &with, "5.4", 9).unwrap()),
            [
                "Uninstaller",
                "apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=9 \
                 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                 rdma-core ibverbs-providers libibverbs1 ibverbs-utils librdmacm1 rdmacm-utils \
                 libibumad3 infiniband-diags",
                "update-initramfs -u -k 5.4"
            ]
        );
        assert!(plan(Family::Apt, StackKind::Inbox, &with, "5.4", 9)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn doca_package_names() {
        for p in [
            "doca-ofed",
            "doca-host",
            "libdoca-common",
            "flexio-sdk",
            "dpa-stats",
        ] {
            assert!(is_doca_package(p), "{p}");
        }
        for p in ["rdma-core", "libibverbs1", "ucx", "mlnx-ofed-kernel-dkms"] {
            assert!(!is_doca_package(p), "{p}");
        }
    }
}
