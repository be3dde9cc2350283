//! What enable would do on this host, as a pure function of the host facts and the settings.
//! Refusals happen here, before anything on the host changes.

pub mod catalog;
pub mod distro;
pub mod recipe;
pub mod stage;

use crate::agent::settings::{PublicSettings, Secret, Stack};
use crate::error::{Code, Failure};
use crate::host::os_release::OsRelease;
use crate::host::pci::NicGeneration;
use crate::host::stack::StackKind;
use crate::host::{HostFacts, SecureBoot};
use crate::plan::catalog::{Choice, Target};
use crate::plan::stage::Stage;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Action {
    /// Drivers are present: verify them and report.
    VerifyOnly { stack: StackKind },
    /// Install what `choice` names, activate, then verify.
    Install {
        reason: String,
        /// Shown as the plan's `install` (the JSON of the plan verb and the status).
        #[serde(skip)]
        choice: Choice,
    },
    /// Refuse with this failure.
    Refuse { failure: Failure },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub action: Action,
    pub stages: Vec<Stage>,
    pub summary: String,
}

impl Plan {
    /// What the catalog and settings chose, when drivers must be installed.
    pub fn install(&self) -> Option<&Choice> {
        match &self.action {
            Action::Install { choice, .. } => Some(choice),
            _ => None,
        }
    }
}

impl Serialize for Plan {
    /// `action`, `stages`, `summary`, and `install` (the choice) when there is one.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut m = s.serialize_struct("Plan", 4)?;
        m.serialize_field("action", &self.action)?;
        m.serialize_field("stages", &self.stages)?;
        m.serialize_field("summary", &self.summary)?;
        match self.install() {
            Some(choice) => m.serialize_field("install", choice)?,
            None => m.skip_field("install")?,
        }
        m.end()
    }
}

/// Distros this handler serves (docs/DOMAIN.md, "Distributions"). `Err` says why not.
pub fn os_supported(os: &OsRelease) -> Result<(), String> {
    match distro::lookup(os) {
        Some(_) => Ok(()),
        None => Err(format!(
            "{} {} is not a supported distribution",
            os.id, os.version_id
        )),
    }
}

/// Sizes with Network Direct (non-SR-IOV) RDMA, all retired (docs/DOMAIN.md, "Detection").
fn network_direct_size(size: &str) -> bool {
    let s = size.to_ascii_lowercase();
    let s = s.strip_prefix("standard_").unwrap_or(&s);
    ["a8", "a9", "h16r", "h16mr", "nc24r", "nc24rs_v2", "nd24rs"].contains(&s)
}

fn stack_matches(wanted: Stack, have: StackKind) -> bool {
    matches!(
        (wanted, have),
        (Stack::Auto, _)
            | (Stack::Doca, StackKind::Doca)
            | (Stack::MlnxOfed, StackKind::MlnxOfed)
            | (Stack::Inbox, StackKind::Inbox)
    )
}

fn refuse(failure: Failure) -> Plan {
    Plan {
        summary: failure.message.clone(),
        action: Action::Refuse { failure },
        stages: vec![Stage::Preflight],
    }
}

fn describe(choice: &Choice) -> String {
    match choice {
        Choice::Inbox { reason } => format!("the distribution's inbox stack ({reason})"),
        Choice::Artifact {
            stack,
            version,
            url,
            ..
        } => {
            let name = crate::net::url::file_name(url.expose());
            format!("{} {version} ({name})", stack.as_str())
        }
    }
}

/// The refusals with their own exit codes (10-13): no Hyper-V, no InfiniBand device, an
/// unsupported distribution, a Network Direct size. Needs no stack probe, so enable can decide
/// them within its time limit.
pub fn refusal(facts: &HostFacts) -> Option<Failure> {
    let size = facts.vm_size().unwrap_or("unknown size").to_string();
    if !facts.hyperv {
        return Some(Failure::new(
            Code::NotHyperV,
            "this is not an Azure (Hyper-V) guest: no VMBus devices in /sys/bus/vmbus; \
             the extension only runs on Azure VMs",
        ));
    }
    if facts.infiniband_functions().next().is_none() {
        let nd = facts.vmbus.network_direct
            || facts.kvp.nd_driver_version.is_some()
            || facts.vm_size().is_some_and(network_direct_size);
        if nd {
            return Some(Failure::new(
                Code::VmSizeUnsupported,
                format!(
                    "{size} uses Network Direct (non-SR-IOV) RDMA, which this extension does not \
                     support; use an SR-IOV InfiniBand size such as HBv3, HBv4 or NDv4"
                ),
            ));
        }
        return Some(Failure::new(
            Code::NoInfiniBand,
            format!(
                "no Mellanox InfiniBand device on this VM ({size}); use an InfiniBand-enabled \
                 size (an 'r' size such as HB120rs_v3 or ND96asr_v4) or remove the extension"
            ),
        ));
    }
    let Some(os) = &facts.os else {
        return Some(Failure::new(
            Code::OsUnsupported,
            "cannot identify the distribution: /etc/os-release is missing or has no ID",
        ));
    };
    if let Err(why) = os_supported(os) {
        return Some(Failure::new(
            Code::OsUnsupported,
            format!("{why}; use {}", distro::supported_list()),
        ));
    }
    None
}

/// `package_url` is the protected `packageUrl` setting, if any.
pub fn decide(facts: &HostFacts, settings: &PublicSettings, package_url: Option<&Secret>) -> Plan {
    if let Some(failure) = refusal(facts) {
        return refuse(failure);
    }
    let ib: Vec<_> = facts.infiniband_functions().collect();
    let os = facts.os.as_ref().expect("refusal() checked the OS");
    // An installed stack whose device the kernel has not registered (modules not loaded, or
    // missing for a new kernel) is not reinstalled: repair and configure see to it.
    let ours = facts.installed_by_us.as_ref();
    let install_reason = match &facts.stack {
        None => Some("no InfiniBand driver stack is installed".to_string()),
        Some(st) if !stack_matches(settings.stack, st.kind) => Some(format!(
            "settings ask for stack {:?} but {} is installed",
            settings.stack,
            st.kind.as_str()
        )),
        // A DOCA version cannot be read back from the host; what we installed is recorded.
        Some(st)
            if settings.version.is_some()
                && st.version.as_deref() != settings.version.as_deref()
                && !ours.is_some_and(|m| {
                    m.stack == st.kind && Some(m.version.as_str()) == settings.version.as_deref()
                }) =>
        {
            Some(format!(
                "settings pin version {} but {} is installed",
                settings.version.as_deref().unwrap_or_default(),
                st.version.as_deref().unwrap_or("an unknown version")
            ))
        }
        Some(_)
            if settings.package.as_ref().is_some_and(|p| {
                !ours.is_some_and(|m| m.sha256.eq_ignore_ascii_case(&p.sha256))
            }) =>
        {
            Some("settings name a custom driver package".to_string())
        }
        Some(_) => None,
    };
    match install_reason {
        Some(reason) => install_plan(facts, settings, package_url, reason),
        None => verify_plan(facts, os, ib.len()),
    }
}

/// Like [`decide`], but an install this sequence number already started (`underway`, from the
/// checkpoint) is carried on to its end: the kernel's own module may register the device and
/// make the host look ready while the install has not finished or not been activated.
pub fn decide_resuming(
    facts: &HostFacts,
    settings: &PublicSettings,
    package_url: Option<&Secret>,
    underway: bool,
) -> Plan {
    let plan = decide(facts, settings, package_url);
    if underway && matches!(plan.action, Action::VerifyOnly { .. }) {
        return install_plan(
            facts,
            settings,
            package_url,
            "resuming the install this sequence number started".into(),
        );
    }
    plan
}

fn install_plan(
    facts: &HostFacts,
    settings: &PublicSettings,
    package_url: Option<&Secret>,
    reason: String,
) -> Plan {
    let os = facts.os.as_ref().expect("refusal() checked the OS");
    // The NIC the choice is keyed on: the first InfiniBand function (all match on Azure).
    let nic = facts
        .infiniband_functions()
        .find_map(|f| f.generation)
        .unwrap_or(NicGeneration::ConnectX6);
    let target = Target {
        os,
        kernel: &facts.kernel,
        arch: std::env::consts::ARCH,
        nic,
    };
    let mut choice = match catalog::select(catalog::builtin(), &target, settings, package_url) {
        Ok(c) => c,
        Err(f) => return refuse(f),
    };
    // Vendor modules are built on the VM by DKMS and not signed (docs/DOMAIN.md, "Secure Boot"):
    // with Secure Boot on, prefer the distribution's signed modules, or refuse up front.
    if facts.secure_boot == SecureBoot::Enabled && matches!(choice, Choice::Artifact { .. }) {
        if settings.stack == Stack::Auto
            && settings.package.is_none()
            && settings.version.is_none()
            && !nic.is_mlx4()
        {
            choice = Choice::Inbox {
                reason: "Secure Boot is on: the distribution's signed modules".into(),
            };
        } else {
            return refuse(Failure::new(
                Code::SecureBootBlocks,
                format!(
                    "Secure Boot is on and {} builds unsigned kernel modules that would not load; \
                     use stack inbox, or turn Secure Boot off (Trusted Launch settings)",
                    describe(&choice)
                ),
            ));
        }
    }
    let stages = match choice {
        Choice::Inbox { .. } => Stage::INBOX_INSTALL.to_vec(),
        Choice::Artifact { .. } => Stage::VENDOR_INSTALL.to_vec(),
    };
    Plan {
        summary: format!("{reason}: install {}", describe(&choice)),
        action: Action::Install { reason, choice },
        stages,
    }
}

fn verify_plan(facts: &HostFacts, os: &OsRelease, functions: usize) -> Plan {
    let stack = facts
        .stack
        .as_ref()
        .map(|s| s.kind)
        .unwrap_or(StackKind::Inbox);
    Plan {
        summary: format!(
            "{} {} with {} {}: verify {functions} InfiniBand function(s)",
            os.id,
            os.version_id,
            stack.as_str(),
            facts
                .stack
                .as_ref()
                .and_then(|s| s.version.clone())
                .unwrap_or_default(),
        ),
        action: Action::VerifyOnly { stack },
        stages: Stage::VERIFY_ONLY.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::os_release;

    fn os(id: &str, v: &str) -> OsRelease {
        os_release::parse(&format!("ID={id}\nVERSION_ID=\"{v}\"\n")).unwrap()
    }

    #[test]
    fn supported_distros() {
        for (id, v) in [
            ("ubuntu", "22.04"),
            ("ubuntu", "24.04"),
            ("almalinux", "8.10"),
            ("rocky", "9.5"),
            ("rhel", "8.10"),
            ("sles", "15.5"),
            ("debian", "12"),
            ("azurelinux", "3.0"),
        ] {
            assert!(os_supported(&os(id, v)).is_ok(), "{id} {v}");
        }
        for (id, v) in [
            ("ubuntu", "18.04"),
            ("fedora", "40"),
            ("debian", "11"),
            ("alpine", "3.19"),
            ("rhel", "7.9"),
        ] {
            assert!(os_supported(&os(id, v)).is_err(), "{id} {v}");
        }
    }

    #[test]
    fn nd_sizes() {
        assert!(network_direct_size("Standard_H16r"));
        assert!(network_direct_size("standard_nc24rs_v2"));
        assert!(!network_direct_size("Standard_HB120rs_v3"));
    }
}
