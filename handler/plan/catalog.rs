//! The built-in driver catalog (`manifest/catalog.json`, embedded at build time) and the choice
//! of stack: NIC generation x distribution x kernel -> DOCA-OFED, MLNX_OFED or the distro's inbox
//! stack, with the artifact's URL and SHA-256. Settings (`stack`, `version`, `package`,
//! `mirror`, protected `packageUrl`) override it. Pure: no I/O beyond the embedded text.

use crate::agent::settings::{PackageRef, PublicSettings, Secret, Stack};
use crate::error::{Code, Failure};
use crate::host::os_release::OsRelease;
use crate::host::pci::NicGeneration;
use crate::host::stack::StackKind;
use crate::net::url::redact_url;
use serde::{Deserialize, Serialize, Serializer};
use std::cmp::Ordering;
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    pub stack: StackKind,
    pub version: String,
    pub distro: String,
    pub distro_version: String,
    pub arch: String,
    pub kind: ArtifactKind,
    pub url: String,
    pub sha256: String,
    /// Still pinned by Azure's HPC images.
    pub current: bool,
}

#[derive(Debug, Deserialize)]
pub struct Catalog {
    pub entries: Vec<Entry>,
}

pub fn builtin() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        serde_json::from_str(include_str!("../../manifest/catalog.json"))
            .expect("the embedded catalog is valid")
    })
}

fn redacted<S: Serializer>(url: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url.expose()))
}

/// What enable would install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "source")]
pub enum Choice {
    /// The distribution's own packages (rdma-core and the kernel's modules).
    Inbox { reason: String },
    Artifact {
        stack: VendorStack,
        version: String,
        /// Shown without query string or credentials; the full URL is used only to download.
        #[serde(serialize_with = "redacted")]
        url: Secret,
        sha256: String,
        kind: ArtifactKind,
        custom: bool,
    },
}

/// Compare dotted/dashed versions numerically where both parts are numbers.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| {
        s.split(['.', '-', '_'])
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// The catalog's distro keys that can serve this OS for a stack, most specific first.
pub fn distro_keys(os: &OsRelease, stack: StackKind) -> Vec<(String, String)> {
    crate::plan::distro::lookup(os)
        .map(|d| crate::plan::distro::catalog_keys(d, os, stack))
        .unwrap_or_default()
}

/// Kernels from 5.6 on cannot build MLNX_OFED 4.9, the last line with ConnectX-3 Pro.
pub fn kernel_at_least(kernel: &str, major: u64, minor: u64) -> bool {
    let mut it = kernel
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let ma: u64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mi: u64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (ma, mi) >= (major, minor)
}

fn inbox_first(os: &OsRelease) -> Option<&'static str> {
    crate::plan::distro::lookup(os).and_then(|d| d.inbox_first)
}

fn from_name(url: &str) -> Option<VendorStack> {
    let name = crate::net::url::file_name(url).to_ascii_lowercase();
    if name.starts_with("doca-host") {
        Some(VendorStack::Doca)
    } else if name.starts_with("mlnx_ofed") {
        Some(VendorStack::MlnxOfed)
    } else {
        None
    }
}

/// A stack an artifact installs: one of the vendor's (the distribution's inbox stack comes
/// from its own package manager, never from an artifact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VendorStack {
    Doca,
    MlnxOfed,
}

impl VendorStack {
    /// The installed-stack kind this becomes on the host.
    pub fn kind(self) -> StackKind {
        match self {
            VendorStack::Doca => StackKind::Doca,
            VendorStack::MlnxOfed => StackKind::MlnxOfed,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.kind().as_str()
    }
}

/// The form of a driver artifact: the catalog says it; for a custom package its URL does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A DOCA repository package for apt.
    Deb,
    /// A DOCA repository package for rpm.
    Rpm,
    /// A gzip'd tarball (MLNX_OFED): unpacked as it downloads.
    Tgz,
    /// Anything else a custom package URL names: stored as it is.
    File,
}

impl ArtifactKind {
    /// The kind a URL's path names (`.deb`, `.rpm`, `.tgz` or `.tar.gz`; else a plain file).
    pub fn of_url(url: &str) -> ArtifactKind {
        let path = crate::net::url::lower_path(url);
        if path.ends_with(".deb") {
            ArtifactKind::Deb
        } else if path.ends_with(".rpm") {
            ArtifactKind::Rpm
        } else if crate::net::url::is_tarball(url) {
            ArtifactKind::Tgz
        } else {
            ArtifactKind::File
        }
    }

    /// Is it unpacked into a directory on download (rather than kept as one file)?
    pub fn is_unpacked(self) -> bool {
        self == ArtifactKind::Tgz
    }
}

impl std::fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArtifactKind::Deb => "deb",
            ArtifactKind::Rpm => "rpm",
            ArtifactKind::Tgz => "tgz",
            ArtifactKind::File => "file",
        })
    }
}

/// Put the mirror's scheme and host (and path prefix) in place of the vendor's.
pub fn apply_mirror(url: &str, mirror: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
    format!("{}{}", mirror.trim_end_matches('/'), path)
}

pub struct Target<'a> {
    pub os: &'a OsRelease,
    pub kernel: &'a str,
    pub arch: &'a str,
    pub nic: NicGeneration,
}

fn unavailable(msg: String) -> Failure {
    Failure::new(Code::StackUnavailable, msg)
}

/// Choose what to install. `package_url` is the protected `packageUrl`, if set.
pub fn select(
    cat: &Catalog,
    t: &Target,
    s: &PublicSettings,
    package_url: Option<&Secret>,
) -> Result<Choice, Failure> {
    if let Some(pkg) = &s.package {
        return custom_package(pkg, s, package_url);
    }
    let stack = match wanted_stack(t, s) {
        Wanted::Inbox(reason) => return Ok(Choice::Inbox { reason }),
        Wanted::Vendor(stack) => stack,
    };
    connectx3_limits(t, s, stack.kind())?;
    let candidates = candidates(cat, t, stack.kind());
    let os_name = format!("{} {}", t.os.id, t.os.version_id);
    if candidates.is_empty() {
        return no_build(t, s, stack.kind(), &os_name);
    }
    let chosen = match &s.version {
        Some(v) => pinned(&candidates, v, stack.kind(), &os_name)?,
        None => newest(&candidates),
    };
    Ok(catalog_artifact(chosen, stack, s.mirror.as_deref()))
}

/// The package the settings name. Its URL: the protected `packageUrl` first, since only that
/// one may carry a SAS token; its stack: the setting, else what its file name says.
fn custom_package(
    pkg: &PackageRef,
    s: &PublicSettings,
    package_url: Option<&Secret>,
) -> Result<Choice, Failure> {
    let url = match (package_url, &pkg.url) {
        (Some(secret), _) => secret.clone(),
        (None, Some(u)) => Secret::new(u.clone()),
        (None, None) => {
            return Err(Failure::new(
                Code::SettingsInvalid,
                "package has no url: set package.url, or the protected setting packageUrl",
            ))
        }
    };
    let stack = match s.stack {
        Stack::Doca => VendorStack::Doca,
        Stack::MlnxOfed => VendorStack::MlnxOfed,
        _ => from_name(url.expose()).ok_or_else(|| {
            Failure::new(
                Code::SettingsInvalid,
                "cannot tell the stack of the custom package from its name; set stack to doca or mlnx-ofed",
            )
        })?,
    };
    Ok(Choice::Artifact {
        stack,
        version: s.version.clone().unwrap_or_else(|| "custom".into()),
        kind: ArtifactKind::of_url(url.expose()),
        url,
        sha256: pkg.sha256.to_ascii_lowercase(),
        custom: true,
    })
}

/// What the settings and the NIC ask for before the catalog is consulted.
enum Wanted {
    /// The distribution's stack, and why.
    Inbox(String),
    Vendor(VendorStack),
}

/// `auto` means MLNX_OFED for ConnectX-3 Pro (the only vendor line that still drives it), the
/// inbox stack where the distribution prefers it and no version is pinned, else DOCA-OFED.
fn wanted_stack(t: &Target, s: &PublicSettings) -> Wanted {
    match s.stack {
        Stack::Inbox => Wanted::Inbox("settings ask for the inbox stack".into()),
        Stack::Doca => Wanted::Vendor(VendorStack::Doca),
        Stack::MlnxOfed => Wanted::Vendor(VendorStack::MlnxOfed),
        Stack::Auto if t.nic.is_mlx4() => Wanted::Vendor(VendorStack::MlnxOfed),
        Stack::Auto => match inbox_first(t.os) {
            Some(reason) if s.version.is_none() => Wanted::Inbox(reason.into()),
            _ => Wanted::Vendor(VendorStack::Doca),
        },
    }
}

/// ConnectX-3 Pro has one vendor line, MLNX_OFED 4.9 LTS, and it does not build on 5.6 and
/// newer kernels: refuse what cannot work before looking for a build.
fn connectx3_limits(t: &Target, s: &PublicSettings, stack: StackKind) -> Result<(), Failure> {
    if !t.nic.is_mlx4() {
        return Ok(());
    }
    if stack == StackKind::Doca {
        return Err(unavailable(
            "DOCA-OFED does not support ConnectX-3 Pro; use stack mlnx-ofed (4.9 LTS) or inbox"
                .into(),
        ));
    }
    if kernel_at_least(t.kernel, 5, 6) && s.version.as_deref().is_none_or(|v| v.starts_with("4.9"))
    {
        return Err(unavailable(format!(
            "ConnectX-3 Pro needs MLNX_OFED 4.9 LTS, which cannot build on kernel {} (5.6 or newer); \
             use an image with an older kernel (such as Ubuntu 20.04 with its 5.4 kernel) or stack inbox",
            t.kernel
        )));
    }
    Ok(())
}

/// The catalog's builds of `stack` for this distribution and architecture that drive this NIC.
fn candidates<'c>(cat: &'c Catalog, t: &Target, stack: StackKind) -> Vec<&'c Entry> {
    let keys = distro_keys(t.os, stack);
    let mut found: Vec<&Entry> = cat
        .entries
        .iter()
        .filter(|e| e.stack == stack && e.arch == t.arch)
        .filter(|e| {
            keys.iter()
                .any(|(d, v)| *d == e.distro && *v == e.distro_version)
        })
        .collect();
    // DOCA 3 dropped ConnectX-4; ConnectX-3 Pro stays on the 4.9 LTS line.
    if t.nic == NicGeneration::ConnectX4 && stack == StackKind::Doca {
        found.retain(|e| compare_versions(&e.version, "3") == Ordering::Less);
    }
    if t.nic.is_mlx4() {
        found.retain(|e| e.version.starts_with("4.9"));
    }
    found
}

/// No build fits: a choice left to us falls back to the inbox stack; a stack or version the
/// settings ask for, or ConnectX-3 Pro's one line, is refused rather than quietly changed.
fn no_build(
    t: &Target,
    s: &PublicSettings,
    stack: StackKind,
    os_name: &str,
) -> Result<Choice, Failure> {
    if s.stack == Stack::Auto && !t.nic.is_mlx4() && s.version.is_none() {
        return Ok(Choice::Inbox {
            reason: format!("the catalog has no DOCA-OFED build for {os_name}"),
        });
    }
    Err(unavailable(format!(
        "the catalog has no {} build for {os_name} on {}; use stack inbox or the package setting",
        stack.as_str(),
        t.arch
    )))
}

/// The candidate of the pinned version; the refusal lists the versions there are.
fn pinned<'c>(
    candidates: &[&'c Entry],
    v: &str,
    stack: StackKind,
    os_name: &str,
) -> Result<&'c Entry, Failure> {
    candidates.iter().find(|e| e.version == v).copied().ok_or_else(|| {
        let mut have: Vec<&str> = candidates.iter().map(|e| e.version.as_str()).collect();
        have.sort_by(|a, b| compare_versions(a, b));
        have.dedup();
        Failure::new(
            Code::VersionNotInCatalog,
            format!(
                "{} version {v} is not in the catalog for {os_name}; available: {}; or use the package setting",
                stack.as_str(),
                have.join(", ")
            ),
        )
    })
}

/// The newest of the builds Azure's HPC images still pin, or of all when none is pinned.
/// `candidates` is not empty.
fn newest<'c>(candidates: &[&'c Entry]) -> &'c Entry {
    let pool: Vec<&&Entry> = if candidates.iter().any(|e| e.current) {
        candidates.iter().filter(|e| e.current).collect()
    } else {
        candidates.iter().collect()
    };
    pool.into_iter()
        .max_by(|a, b| compare_versions(&a.version, &b.version))
        .copied()
        .expect("candidates is not empty")
}

/// The choice of a catalog entry, downloaded from the mirror when the settings name one.
fn catalog_artifact(chosen: &Entry, stack: VendorStack, mirror: Option<&str>) -> Choice {
    let url = match mirror {
        Some(m) => apply_mirror(&chosen.url, m),
        None => chosen.url.clone(),
    };
    Choice::Artifact {
        stack,
        version: chosen.version.clone(),
        url: Secret::new(url),
        sha256: chosen.sha256.clone(),
        kind: chosen.kind,
        custom: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::os_release;

    fn os(id: &str, v: &str) -> OsRelease {
        os_release::parse(&format!("ID={id}\nVERSION_ID=\"{v}\"\n")).unwrap()
    }

    fn pick(
        id: &str,
        v: &str,
        kernel: &str,
        nic: NicGeneration,
        s: &PublicSettings,
    ) -> Result<Choice, Failure> {
        let o = os(id, v);
        select(
            builtin(),
            &Target {
                os: &o,
                kernel,
                arch: "x86_64",
                nic,
            },
            s,
            None,
        )
    }

    fn artifact(c: &Choice) -> (StackKind, &str, &str) {
        match c {
            Choice::Artifact {
                stack,
                version,
                url,
                ..
            } => (stack.kind(), version.as_str(), url.expose()),
            other => panic!("expected an artifact, got {other:?}"),
        }
    }

    #[test]
    fn catalog_is_well_formed() {
        let cat = builtin();
        assert!(cat.entries.len() > 100);
        for e in &cat.entries {
            assert_eq!(e.sha256.len(), 64, "{}", e.url);
            assert!(e.url.starts_with("http"), "{}", e.url);
        }
    }

    #[test]
    fn auto_choices() {
        let d = PublicSettings::default();
        use NicGeneration::*;
        let c = pick("ubuntu", "22.04", "5.15.0-1073-azure", ConnectX6, &d).unwrap();
        assert_eq!(artifact(&c).0, StackKind::Doca);
        assert_eq!(artifact(&c).1, "3.2.1");
        assert_eq!(
            artifact(&pick("ubuntu", "24.04", "6.8.0-1021-azure", Mlx5Gen, &d).unwrap()).1,
            "3.2.3"
        );
        let alma = pick(
            "almalinux",
            "8.10",
            "4.18.0-553.el8_10.x86_64",
            ConnectX6,
            &d,
        )
        .unwrap();
        assert!(artifact(&alma).2.ends_with("_rhel8.x86_64.rpm"), "{alma:?}");
        assert!(
            artifact(&pick("rocky", "9.5", "5.14.0", Mlx5Gen, &d).unwrap())
                .2
                .contains("rhel9")
        );
        for (id, v) in [("sles", "15.5"), ("debian", "12"), ("azurelinux", "3.0")] {
            assert!(
                matches!(
                    pick(id, v, "6.1.0", ConnectX6, &d).unwrap(),
                    Choice::Inbox { .. }
                ),
                "{id}"
            );
        }
        let cx3 = pick("ubuntu", "20.04", "5.4.0-1109-azure", ConnectX3Pro, &d).unwrap();
        assert_eq!(artifact(&cx3).0, StackKind::MlnxOfed);
        assert_eq!(artifact(&cx3).1, "4.9-6.0.6.0");
    }

    #[test]
    fn refusals() {
        let d = PublicSettings::default();
        let e = pick(
            "ubuntu",
            "22.04",
            "5.15.0-1073-azure",
            NicGeneration::ConnectX3Pro,
            &d,
        )
        .unwrap_err();
        assert_eq!(e.code, Code::StackUnavailable);
        assert!(e.message.contains("5.15.0-1073-azure"), "{}", e.message);
        let doca = PublicSettings {
            stack: Stack::Doca,
            ..Default::default()
        };
        assert_eq!(
            pick(
                "ubuntu",
                "20.04",
                "5.4.0",
                NicGeneration::ConnectX3Pro,
                &doca
            )
            .unwrap_err()
            .code,
            Code::StackUnavailable
        );
        assert_eq!(
            pick("debian", "12", "6.1.0", NicGeneration::ConnectX6, &doca)
                .unwrap_err()
                .code,
            Code::StackUnavailable
        );
        let v = PublicSettings {
            stack: Stack::Doca,
            version: Some("9.9.9".into()),
            ..Default::default()
        };
        let e = pick("ubuntu", "22.04", "5.15.0", NicGeneration::ConnectX6, &v).unwrap_err();
        assert_eq!(e.code, Code::VersionNotInCatalog);
        assert!(e.message.contains("3.2.1"), "{}", e.message);
    }

    #[test]
    fn overrides() {
        let pinned = PublicSettings {
            stack: Stack::MlnxOfed,
            version: Some("24.01-0.3.3.1".into()),
            ..Default::default()
        };
        let c = pick(
            "ubuntu",
            "22.04",
            "5.15.0",
            NicGeneration::ConnectX6,
            &pinned,
        )
        .unwrap();
        assert!(artifact(&c)
            .2
            .ends_with("MLNX_OFED_LINUX-24.01-0.3.3.1-ubuntu22.04-x86_64.tgz"));
        let mirrored = PublicSettings {
            mirror: Some("https://mirror.example/nvidia/".into()),
            ..Default::default()
        };
        let c = pick(
            "ubuntu",
            "22.04",
            "5.15.0",
            NicGeneration::ConnectX6,
            &mirrored,
        )
        .unwrap();
        assert!(
            artifact(&c)
                .2
                .starts_with("https://mirror.example/nvidia/downloads/DOCA/"),
            "{c:?}"
        );
        let custom = PublicSettings {
            package: Some(PackageRef {
                url: Some("https://x/doca-host_9-ubuntu2204_amd64.deb".into()),
                sha256: "AB".repeat(32),
            }),
            ..Default::default()
        };
        let c = pick(
            "ubuntu",
            "22.04",
            "5.15.0",
            NicGeneration::ConnectX6,
            &custom,
        )
        .unwrap();
        assert!(
            matches!(&c, Choice::Artifact { stack: VendorStack::Doca, custom: true, kind, .. } if *kind == ArtifactKind::Deb)
        );
        let o = os("ubuntu", "22.04");
        let secret = Secret::new("https://acct.blob/c/MLNX_OFED_LINUX-x.tgz?sig=SECRET".into());
        let nourl = PublicSettings {
            package: Some(PackageRef {
                url: None,
                sha256: "ab".repeat(32),
            }),
            ..Default::default()
        };
        let t = Target {
            os: &o,
            kernel: "5.15.0",
            arch: "x86_64",
            nic: NicGeneration::ConnectX6,
        };
        let c = select(builtin(), &t, &nourl, Some(&secret)).unwrap();
        let shown = serde_json::to_string(&c).unwrap();
        assert!(
            shown.contains("MLNX_OFED_LINUX-x.tgz") && !shown.contains("SECRET"),
            "{shown}"
        );
        assert!(select(builtin(), &t, &nourl, None).is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(compare_versions("3.10.0", "3.2.3"), Ordering::Greater);
        assert_eq!(
            compare_versions("4.9-6.0.6.0", "4.9-3.1.5.0"),
            Ordering::Greater
        );
        assert!(kernel_at_least("5.6.0-1", 5, 6) && !kernel_at_least("5.4.0-1109-azure", 5, 6));
        assert!(kernel_at_least("6.8.0", 5, 6));
        assert_eq!(
            apply_mirror(
                "https://www.mellanox.com/downloads/x.deb",
                "https://m.example/base"
            ),
            "https://m.example/base/downloads/x.deb"
        );
    }
}
