//! The one distribution table: which releases we support, how each installs packages, which
//! catalog entries serve it and whether its own (inbox) stack comes first. `plan` (supported or
//! not), `recipe` (the package family) and `catalog` (keys, inbox-first) all read it.

use crate::host::os_release::OsRelease;
use crate::host::stack::StackKind;
use serde::Serialize;

/// How a distribution installs packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Apt,
    Dnf,
    Yum,
    Zypper,
    Tdnf,
}

/// How the catalog names a distribution's builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogKey {
    /// No vendor build: the inbox stack only.
    None,
    /// `(name, VERSION_ID)`, e.g. `ubuntu 22.04`, `sles 15.6`.
    Exact(&'static str),
    /// RHEL and its rebuilds: `rhel VERSION_ID`; DOCA's packages are per major release, so
    /// for DOCA `rhel MAJOR` too (MLNX_OFED tarballs match one minor only).
    Rhel,
    /// One fixed key, whatever the VERSION_ID (Azure Linux 3: `alinux 3.2`).
    Fixed(&'static str, &'static str),
}

/// One supported release line.
#[derive(Debug, Clone, Copy)]
pub struct Distro {
    /// os-release `ID`s.
    pub ids: &'static [&'static str],
    /// Supported releases: a `VERSION_ID` exactly (`"22.04"`) or a major (`"9"` matches 9.x).
    pub releases: &'static [&'static str],
    /// Shown in the refusal message.
    pub shown: &'static str,
    pub family: Family,
    pub catalog: CatalogKey,
    /// Why `stack: auto` keeps the distribution's own stack before any vendor build.
    pub inbox_first: Option<&'static str>,
}

pub const DISTROS: &[Distro] = &[
    Distro {
        ids: &["ubuntu"],
        releases: &["20.04", "22.04", "24.04"],
        shown: "Ubuntu 20.04-24.04",
        family: Family::Apt,
        catalog: CatalogKey::Exact("ubuntu"),
        inbox_first: None,
    },
    Distro {
        ids: &["rhel", "almalinux", "rocky"],
        releases: &["8", "9"],
        shown: "RHEL/AlmaLinux/Rocky 8-9",
        family: Family::Dnf,
        catalog: CatalogKey::Rhel,
        inbox_first: None,
    },
    Distro {
        ids: &["centos"],
        releases: &["7"],
        shown: "CentOS 7",
        family: Family::Yum,
        catalog: CatalogKey::Rhel,
        inbox_first: None,
    },
    Distro {
        ids: &["centos"],
        releases: &["8"],
        shown: "CentOS 8",
        family: Family::Dnf,
        catalog: CatalogKey::Rhel,
        inbox_first: None,
    },
    Distro {
        ids: &["sles", "sles_sap", "sle_hpc"],
        releases: &["15"],
        shown: "SLES 15",
        family: Family::Zypper,
        catalog: CatalogKey::Exact("sles"),
        inbox_first: Some("SLES 15 ships the InfiniBand stack in its own kernel and rdma-core"),
    },
    Distro {
        ids: &["debian"],
        releases: &["12"],
        shown: "Debian 12",
        family: Family::Apt,
        catalog: CatalogKey::None,
        inbox_first: Some(
            "Debian 12 has no vendor build; its kernel and rdma-core serve InfiniBand",
        ),
    },
    Distro {
        ids: &["azurelinux"],
        releases: &["3"],
        shown: "Azure Linux 3",
        family: Family::Tdnf,
        catalog: CatalogKey::Fixed("alinux", "3.2"),
        inbox_first: Some("Azure Linux carries the InfiniBand packages in its own repositories"),
    },
    Distro {
        ids: &["mariner"],
        releases: &["2"],
        shown: "CBL-Mariner 2",
        family: Family::Tdnf,
        catalog: CatalogKey::None,
        inbox_first: Some("Azure Linux carries the InfiniBand packages in its own repositories"),
    },
];

fn major(os: &OsRelease) -> &str {
    os.version_id.split('.').next().unwrap_or("")
}

/// The supported release line `os` belongs to.
pub fn lookup(os: &OsRelease) -> Option<&'static Distro> {
    DISTROS.iter().find(|d| {
        d.ids.contains(&os.id.as_str())
            && d.releases
                .iter()
                .any(|r| *r == os.version_id || (!r.contains('.') && *r == major(os)))
    })
}

/// What the refusal of an unsupported distribution offers instead.
pub fn supported_list() -> String {
    let shown: Vec<&str> = DISTROS.iter().map(|d| d.shown).collect();
    let (last, rest) = shown.split_last().expect("the table is not empty");
    format!("{} or {last}", rest.join(", "))
}

/// The catalog keys that may serve `os` with `stack`, most specific first.
pub fn catalog_keys(d: &Distro, os: &OsRelease, stack: StackKind) -> Vec<(String, String)> {
    let v = os.version_id.as_str();
    match d.catalog {
        CatalogKey::None => Vec::new(),
        CatalogKey::Exact(name) => vec![(name.into(), v.into())],
        CatalogKey::Rhel => {
            let mut keys = vec![("rhel".to_string(), v.to_string())];
            if stack == StackKind::Doca {
                keys.push(("rhel".into(), major(os).into()));
            }
            keys
        }
        CatalogKey::Fixed(name, version) => vec![(name.into(), version.into())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(id: &str, v: &str) -> OsRelease {
        OsRelease {
            id: id.into(),
            id_like: Vec::new(),
            version_id: v.into(),
            pretty_name: String::new(),
        }
    }

    #[test]
    fn every_row_answers_for_its_releases_and_nothing_else() {
        for (id, v, family) in [
            ("ubuntu", "22.04", Family::Apt),
            ("rocky", "9.4", Family::Dnf),
            ("centos", "7.9.2009", Family::Yum),
            ("centos", "8", Family::Dnf),
            ("sle_hpc", "15.6", Family::Zypper),
            ("debian", "12", Family::Apt),
            ("azurelinux", "3.0", Family::Tdnf),
            ("mariner", "2.0", Family::Tdnf),
        ] {
            assert_eq!(
                lookup(&os(id, v)).map(|d| d.family),
                Some(family),
                "{id} {v}"
            );
        }
        for (id, v) in [
            ("ubuntu", "22.10"),
            ("ubuntu", "22"),
            ("rhel", "7.9"),
            ("centos", "9"),
            ("debian", "11"),
            ("fedora", "40"),
        ] {
            assert!(lookup(&os(id, v)).is_none(), "{id} {v}");
        }
        assert!(
            supported_list().ends_with(" or CBL-Mariner 2"),
            "{}",
            supported_list()
        );
    }

    #[test]
    fn catalog_keys_follow_each_rows_rule() {
        let keys = |id: &str, v: &str, stack| {
            let o = os(id, v);
            catalog_keys(lookup(&o).unwrap(), &o, stack)
        };
        let k = |n: &str, v: &str| (n.to_string(), v.to_string());
        assert_eq!(
            keys("ubuntu", "24.04", StackKind::Doca),
            [k("ubuntu", "24.04")]
        );
        assert_eq!(
            keys("almalinux", "8.10", StackKind::Doca),
            [k("rhel", "8.10"), k("rhel", "8")]
        );
        assert_eq!(
            keys("almalinux", "8.10", StackKind::MlnxOfed),
            [k("rhel", "8.10")]
        );
        assert_eq!(
            keys("azurelinux", "3.0", StackKind::Doca),
            [k("alinux", "3.2")]
        );
        assert!(keys("debian", "12", StackKind::Doca).is_empty());
        assert!(keys("mariner", "2.0", StackKind::Doca).is_empty());
    }
}
