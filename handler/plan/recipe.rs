//! What to run to install each stack on each distribution family (docs/DOMAIN.md, "Install
//! recipes"), as data: argv lists with their purpose and time limit. Pure; [`super`] runs them.

use crate::host::os_release::OsRelease;
use crate::host::stack::StackKind;
use crate::plan::catalog::{Choice, VendorStack};
use std::path::Path;
use std::time::Duration;

pub use crate::plan::distro::Family;

/// The package family of a supported distribution (`plan::distro`).
pub fn family(os: &OsRelease) -> Option<Family> {
    crate::plan::distro::lookup(os).map(|d| d.family)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub purpose: String,
    pub timeout: Duration,
    pub kind: CmdKind,
}

/// What a command is, which decides how it is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdKind {
    /// Runs the package manager, itself or inside (apt, dnf, the stack's uninstaller): it
    /// starts only once the package locks are free.
    Packages,
    /// mlnxofedinstall: run without waiting for the package locks; its exit code has a
    /// documented meaning ([`mlnxofedinstall_exit`]).
    OfedInstaller,
    /// Needs no package lock (DKMS, depmod, the initramfs).
    Plain,
}

impl Cmd {
    /// A command of `kind` built outside the recipes (repair, uninstall).
    pub fn of_kind(kind: CmdKind, purpose: &str, timeout_secs: u64, argv: &[&str]) -> Cmd {
        Cmd {
            kind,
            ..Cmd::new(purpose, timeout_secs, argv)
        }
    }

    /// A package-manager command, as every recipe builds but one.
    fn new(purpose: &str, timeout_secs: u64, argv: &[&str]) -> Cmd {
        Cmd {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            purpose: purpose.to_string(),
            timeout: Duration::from_secs(timeout_secs),
            kind: CmdKind::Packages,
        }
    }

    fn arg(mut self, a: impl Into<String>) -> Cmd {
        self.argv.push(a.into());
        self
    }

    fn args<S: AsRef<str>>(mut self, a: &[S]) -> Cmd {
        self.argv.extend(a.iter().map(|s| s.as_ref().to_string()));
        self
    }
}

const PKG_TIMEOUT: u64 = 1800;
/// MLNX_OFED with --add-kernel-support rebuilds every package: 20-40 minutes is normal.
const OFED_TIMEOUT: u64 = 3600;

/// The package manager's "install these, non-interactively" command. apt waits for its own
/// locks for up to `lock_wait` seconds.
pub fn install_packages(f: Family, packages: &[String], lock_wait: u64) -> Cmd {
    let c = match f {
        Family::Apt => {
            let mut c = Cmd::new(
                "install packages",
                PKG_TIMEOUT,
                &["apt-get", "install", "-y", "-q", "--no-install-recommends"],
            )
            .args(&[
                "-o".to_string(),
                format!("DPkg::Lock::Timeout={lock_wait}"),
                "-o".into(),
                "Dpkg::Options::=--force-confdef".into(),
                "-o".into(),
                "Dpkg::Options::=--force-confold".into(),
            ]);
            c.env
                .push(("DEBIAN_FRONTEND".into(), "noninteractive".into()));
            c
        }
        Family::Dnf => Cmd::new(
            "install packages",
            PKG_TIMEOUT,
            &["dnf", "install", "-y", "-q"],
        ),
        Family::Yum => Cmd::new(
            "install packages",
            PKG_TIMEOUT,
            &["yum", "install", "-y", "-q"],
        ),
        Family::Zypper => Cmd::new(
            "install packages",
            PKG_TIMEOUT,
            &["zypper", "--non-interactive", "install", "--no-recommends"],
        ),
        Family::Tdnf => Cmd::new(
            "install packages",
            PKG_TIMEOUT,
            &["tdnf", "install", "-y", "-q"],
        ),
    };
    c.args(packages)
}

/// Refresh package lists (apt only needs it; the rpm families refresh on install).
pub fn refresh(f: Family) -> Option<Cmd> {
    match f {
        Family::Apt => {
            let mut c = Cmd::new("refresh package lists", 600, &["apt-get", "update", "-q"]);
            c.env
                .push(("DEBIAN_FRONTEND".into(), "noninteractive".into()));
            Some(c)
        }
        _ => None,
    }
}

/// The distribution's RDMA user space and tools (the inbox stack).
pub fn inbox_packages(f: Family) -> Vec<String> {
    let list: &[&str] = match f {
        Family::Apt => &[
            "rdma-core",
            "ibverbs-providers",
            "libibverbs1",
            "ibverbs-utils",
            "librdmacm1",
            "rdmacm-utils",
            "libibumad3",
            "infiniband-diags",
        ],
        Family::Dnf | Family::Yum => &[
            "rdma-core",
            "libibverbs",
            "libibverbs-utils",
            "librdmacm",
            "librdmacm-utils",
            "infiniband-diags",
        ],
        Family::Zypper => &[
            "rdma-core",
            "libibverbs-utils",
            "librdmacm-utils",
            "infiniband-diags",
        ],
        Family::Tdnf => &[
            "rdma-core",
            "libibverbs",
            "libibverbs-utils",
            "librdmacm",
            "librdmacm-utils",
            "infiniband-diags",
        ],
    };
    list.iter().map(|s| s.to_string()).collect()
}

/// Kernel headers for exactly the running kernel: never another tree.
pub fn header_packages(f: Family, kernel: &str) -> Vec<String> {
    match f {
        Family::Apt => vec![format!("linux-headers-{kernel}")],
        Family::Dnf | Family::Yum | Family::Tdnf => vec![format!("kernel-devel-{kernel}")],
        Family::Zypper => {
            // 5.14.21-150500.55.65-azure -> kernel-azure-devel-5.14.21-150500.55.65
            let (version, flavour) = kernel.rsplit_once('-').unwrap_or((kernel, "default"));
            vec![format!("kernel-{flavour}-devel-{version}")]
        }
    }
}

/// Build tools the vendor stacks need (DKMS builds for DOCA, `--add-kernel-support` for MLNX_OFED).
pub fn build_packages(f: Family, stack: StackKind) -> Vec<String> {
    let list: &[&str] = match (f, stack) {
        (_, StackKind::Inbox) => &[],
        (Family::Apt, _) => &[
            "build-essential",
            "dkms",
            "python3",
            "perl",
            "pciutils",
            "lsof",
        ],
        // dkms itself comes with doca-ofed: it is in EPEL, not in BaseOS/AppStream.
        (Family::Dnf | Family::Yum, StackKind::Doca) => &[
            "gcc",
            "make",
            "elfutils-libelf-devel",
            "kernel-rpm-macros",
            "perl",
            "pciutils",
        ],
        (Family::Dnf | Family::Yum, StackKind::MlnxOfed) => &[
            "gcc",
            "gcc-c++",
            "make",
            "rpm-build",
            "createrepo",
            "elfutils-libelf-devel",
            "kernel-rpm-macros",
            "python3-devel",
            "perl",
            "tcl",
            "tk",
            "pciutils",
            "lsof",
        ],
        (Family::Zypper, _) => &["gcc", "make", "rpm-build", "perl", "pciutils"],
        (Family::Tdnf, _) => &["gcc", "make", "binutils", "glibc-devel", "perl", "pciutils"],
    };
    list.iter().map(|s| s.to_string()).collect()
}

/// Rebuild the initramfs of `kernel`, so the next boot loads the modules on disk now
/// (`update-initramfs` on apt, `dracut` elsewhere).
pub fn initramfs(f: Family, kernel: &str) -> Cmd {
    let argv: &[&str] = match f {
        Family::Apt => &["update-initramfs", "-u", "-k", kernel],
        _ => &["dracut", "-f", "--kver", kernel],
    };
    Cmd::of_kind(CmdKind::Plain, "rebuild the initramfs", 600, argv)
}

/// Ask whether a package can be installed at all (to tell "headers missing" from other errors).
pub fn available_query(f: Family, package: &str) -> Cmd {
    match f {
        Family::Apt => Cmd::new("look up package", 120, &["apt-cache", "show", package]),
        Family::Dnf => Cmd::new("look up package", 300, &["dnf", "list", "-q", package]),
        Family::Yum => Cmd::new("look up package", 300, &["yum", "list", "-q", package]),
        Family::Zypper => Cmd::new(
            "look up package",
            300,
            &["zypper", "--non-interactive", "info", package],
        ),
        Family::Tdnf => Cmd::new("look up package", 300, &["tdnf", "list", package]),
    }
}

/// Where the kernel build tree of `kernel` lives once its headers are installed.
pub fn kernel_sources(f: Family, kernel: &str) -> String {
    match f {
        Family::Apt => format!("/usr/src/linux-headers-{kernel}"),
        Family::Zypper => format!("/lib/modules/{kernel}/build"),
        _ => format!("/usr/src/kernels/{kernel}"),
    }
}

/// The installing commands for `choice`. `artifact` is the fetched file (a DOCA repo package)
/// or the unpacked MLNX_OFED directory; `root` prefixes host paths (IBDRIVER_ROOT).
pub fn install_cmds(
    f: Family,
    choice: &Choice,
    artifact: Option<&Path>,
    kernel: &str,
    lock_wait: u64,
) -> Vec<Cmd> {
    let artifact = artifact
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    match choice {
        Choice::Inbox { .. } => {
            let mut v: Vec<Cmd> = refresh(f).into_iter().collect();
            v.push(install_packages(f, &inbox_packages(f), lock_wait));
            v
        }
        Choice::Artifact {
            stack: VendorStack::Doca,
            ..
        } => doca_cmds(f, &artifact, lock_wait),
        Choice::Artifact {
            stack: VendorStack::MlnxOfed,
            ..
        } => vec![mlnxofedinstall(f, &artifact, kernel)],
    }
}

/// DOCA-OFED: the repository package `pkg` added, the lists refreshed, `doca-ofed` installed.
fn doca_cmds(f: Family, pkg: &str, lock_wait: u64) -> Vec<Cmd> {
    let mut v = Vec::new();
    match f {
        Family::Apt => {
            let mut add = Cmd::new("add the DOCA repository", 600, &["dpkg", "-i", pkg]);
            add.env
                .push(("DEBIAN_FRONTEND".into(), "noninteractive".into()));
            v.push(add);
        }
        _ => v.push(Cmd::new(
            "add the DOCA repository",
            600,
            &["rpm", "-Uvh", "--replacepkgs", pkg],
        )),
    }
    v.extend(refresh(f));
    let mut install = install_packages(f, &["doca-ofed".to_string()], lock_wait);
    if f == Family::Apt {
        // An upgrade must replace the packages held after the previous DOCA install.
        install.argv.insert(
            install.argv.len() - 1,
            "--allow-change-held-packages".into(),
        );
    }
    v.push(install);
    v
}

/// MLNX_OFED: the bundle's installer in the unpacked directory `dir`, built for `kernel`.
fn mlnxofedinstall(f: Family, dir: &str, kernel: &str) -> Cmd {
    let mut c = Cmd::of_kind(
        CmdKind::OfedInstaller,
        "run mlnxofedinstall",
        OFED_TIMEOUT,
        &[],
    )
    .arg(format!("{dir}/mlnxofedinstall"))
    // Never flash firmware from a VM: the VF's firmware belongs to the host.
    .args(&[
        "--without-fw-update",
        "--force",
        "--skip-unsupported-devices-check",
        "--add-kernel-support",
    ])
    .args(&["--kernel", kernel])
    .arg("--kernel-sources")
    .arg(kernel_sources(f, kernel));
    if f != Family::Apt {
        c = c.arg("--skip-repo");
    }
    c.args(&["--tmpdir", &format!("{dir}.tmp")])
}

/// `mlnxofedinstall` exit codes (NVIDIA's manual) in words.
pub fn mlnxofedinstall_exit(code: i32) -> &'static str {
    match code {
        1 => "the installation failed",
        2 => "no firmware was found for the adapter",
        22 => "an invalid parameter was given",
        28 => "there is not enough free disk space",
        171 => "the installer found no supported hardware",
        172 => "prerequisites are not met",
        173 => "the mst driver did not start",
        _ => "the installer failed",
    }
}

/// DKMS modules the vendor stacks must have built for the running kernel.
pub fn dkms_modules(f: Family) -> &'static [&'static str] {
    match f {
        Family::Apt => &["mlnx-ofed-kernel"],
        _ => &["mlnx-ofa_kernel"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::settings::Secret;
    use crate::host::os_release;
    use crate::plan::catalog::ArtifactKind;

    fn os(id: &str, v: &str) -> OsRelease {
        os_release::parse(&format!("ID={id}\nVERSION_ID=\"{v}\"\n")).unwrap()
    }

    #[test]
    fn families() {
        assert_eq!(family(&os("ubuntu", "22.04")), Some(Family::Apt));
        assert_eq!(family(&os("centos", "7")), Some(Family::Yum));
        assert_eq!(family(&os("rocky", "9.5")), Some(Family::Dnf));
        assert_eq!(family(&os("sles", "15.5")), Some(Family::Zypper));
        assert_eq!(family(&os("azurelinux", "3.0")), Some(Family::Tdnf));
        assert_eq!(family(&os("fedora", "40")), None);
    }

    #[test]
    fn exact_headers() {
        assert_eq!(
            header_packages(Family::Apt, "5.15.0-1073-azure"),
            vec!["linux-headers-5.15.0-1073-azure"]
        );
        assert_eq!(
            header_packages(Family::Dnf, "4.18.0-553.el8_10.x86_64"),
            vec!["kernel-devel-4.18.0-553.el8_10.x86_64"]
        );
        assert_eq!(
            header_packages(Family::Zypper, "5.14.21-150500.55.65-azure"),
            vec!["kernel-azure-devel-5.14.21-150500.55.65"]
        );
    }

    #[test]
    fn doca_on_ubuntu() {
        let choice = Choice::Artifact {
            stack: VendorStack::Doca,
            version: "3.2.1".into(),
            url: Secret::new("https://x/doca-host.deb".into()),
            sha256: "0".repeat(64),
            kind: ArtifactKind::Deb,
            custom: false,
        };
        let cmds = install_cmds(
            Family::Apt,
            &choice,
            Some(Path::new("/d/doca-host.deb")),
            "5.15.0",
            900,
        );
        let argv: Vec<String> = cmds.iter().map(|c| c.argv.join(" ")).collect();
        assert_eq!(argv[0], "dpkg -i /d/doca-host.deb");
        assert!(cmds.iter().all(|c| c.kind == CmdKind::Packages), "{cmds:?}");
        assert_eq!(argv[1], "apt-get update -q");
        assert!(argv[2].starts_with(
            "apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=900"
        ));
        assert!(argv[2].ends_with(" --allow-change-held-packages doca-ofed"));
        assert!(cmds[2]
            .env
            .contains(&("DEBIAN_FRONTEND".into(), "noninteractive".into())));
    }

    #[test]
    fn mlnx_ofed_never_flashes_firmware() {
        let choice = Choice::Artifact {
            stack: VendorStack::MlnxOfed,
            version: "4.9-6.0.6.0".into(),
            url: Secret::new("https://x/MLNX.tgz".into()),
            sha256: "0".repeat(64),
            kind: ArtifactKind::Tgz,
            custom: false,
        };
        let cmds = install_cmds(
            Family::Dnf,
            &choice,
            Some(Path::new("/d/ofed/MLNX_OFED_LINUX-4.9")),
            "4.18.0-553.el8_10.x86_64",
            900,
        );
        let a = cmds[0].argv.join(" ");
        assert_eq!(cmds[0].kind, CmdKind::OfedInstaller);
        assert!(
            a.starts_with("/d/ofed/MLNX_OFED_LINUX-4.9/mlnxofedinstall --without-fw-update"),
            "{a}"
        );
        assert!(a.contains("--kernel 4.18.0-553.el8_10.x86_64 --kernel-sources /usr/src/kernels/4.18.0-553.el8_10.x86_64 --skip-repo"));
        assert_eq!(
            mlnxofedinstall_exit(28),
            "there is not enough free disk space"
        );
    }
}
