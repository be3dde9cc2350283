//! The verify stage's judgement, pure: the health report (stack and version, modules, every
//! InfiniBand port with state and rate, IPoIB addresses, the HCA -> netdev -> IP map) from the
//! host's InfiniBand functions, loaded modules, installed stack and addresses.

use crate::error::{Code, Failure};
use crate::host::pci::{IbDevice, IbPort, LinkLayer, NicGeneration, PciFunction};
use crate::host::stack::InstalledStack;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortReport {
    pub port: u32,
    pub state: String,
    pub phys_state: String,
    pub rate: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetdevReport {
    pub name: String,
    pub operstate: Option<String>,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HcaReport {
    pub name: String,
    pub pci: String,
    pub nic: Option<NicGeneration>,
    pub fw: Option<String>,
    pub ports: Vec<PortReport>,
    pub netdevs: Vec<NetdevReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub healthy: bool,
    pub code: Code,
    pub summary: String,
    pub kernel: String,
    pub stack: Option<InstalledStack>,
    pub modules_required: Vec<String>,
    pub modules_missing: Vec<String>,
    pub hcas: Vec<HcaReport>,
    pub problems: Vec<String>,
}

impl HealthReport {
    /// Fold in what configure set up (modules, IPoIB addresses, HCA names) and the host no
    /// longer shows: a healthy report becomes unhealthy with the first one's code.
    pub fn with_unmet(mut self, unmet: Vec<(Code, String)>) -> Self {
        let Some((code, _)) = unmet.first() else {
            return self;
        };
        let lines: Vec<String> = unmet.iter().map(|(_, l)| l.clone()).collect();
        if self.healthy {
            self.healthy = false;
            self.code = *code;
            self.summary = format!(
                "{}; the health monitor puts it back within 5 minutes (or reboot), else run diagnose",
                lines.join("; ")
            );
        }
        self.problems.extend(lines);
        self
    }

    pub fn failure(&self) -> Option<Failure> {
        (!self.healthy).then(|| Failure::new(self.code, self.summary.clone()))
    }

    /// Port count and rates in a few words, for the status message and heartbeat.
    pub fn port_summary(&self) -> String {
        let ports: Vec<&PortReport> = self.hcas.iter().flat_map(|h| h.ports.iter()).collect();
        let active = ports.iter().filter(|p| p.state == "ACTIVE").count();
        let mut rates: BTreeSet<&str> = ports.iter().map(|p| p.rate.as_str()).collect();
        rates.remove("");
        format!(
            "{active}/{} InfiniBand port(s) ACTIVE ({})",
            ports.len(),
            rates.into_iter().collect::<Vec<_>>().join(", ")
        )
    }
}

pub fn required_modules(functions: &[&PciFunction]) -> Vec<String> {
    let mut req: BTreeSet<&str> = ["ib_core", "ib_uverbs"].into();
    for f in functions {
        let m = f.driver_modules();
        req.extend([m.core, m.ib]);
    }
    req.into_iter().map(str::to_string).collect()
}

const NO_VERBS_LIBRARY: &str = "the user-space verbs library (libibverbs.so.1) is not installed";

/// Judge the InfiniBand functions. `addresses` maps netdev -> IPv4 CIDRs (empty when not asked).
pub fn evaluate(
    kernel: &str,
    mellanox: &[PciFunction],
    modules: &BTreeSet<String>,
    stack: Option<&InstalledStack>,
    addresses: &BTreeMap<String, Vec<String>>,
) -> HealthReport {
    let ib: Vec<&PciFunction> = mellanox.iter().filter(|f| f.is_infiniband()).collect();
    let required = required_modules(&ib);
    let found = Findings {
        infiniband: !ib.is_empty(),
        devices: devices(&ib, addresses),
        missing: required
            .iter()
            .filter(|m| !modules.contains(*m))
            .cloned()
            .collect(),
        verbs_library: stack.is_some_and(|s| s.verbs_library),
    };
    let (code, summary) = found.verdict();
    let problems = found.problems();
    let mut report = HealthReport {
        healthy: code == Code::Success,
        code,
        summary,
        kernel: kernel.to_string(),
        stack: stack.cloned(),
        modules_required: required,
        modules_missing: found.missing,
        hcas: found.devices.hcas,
        problems,
    };
    if report.healthy {
        report.summary = ready_summary(&report, stack);
    }
    report
}

/// What the judgement goes on.
struct Findings {
    /// The VM has an InfiniBand function at all.
    infiniband: bool,
    devices: Devices,
    /// Required modules that are not loaded.
    missing: Vec<String>,
    verbs_library: bool,
}

/// What the walk over the InfiniBand functions found.
#[derive(Default)]
struct Devices {
    hcas: Vec<HcaReport>,
    /// InfiniBand ports (an Ethernet port of the same device is not one).
    ports: usize,
    /// One line per port that is not active.
    down: Vec<String>,
    /// One line per function with no registered InfiniBand device.
    unregistered: Vec<String>,
}

impl Findings {
    /// The code and message of the first problem, the most basic first: no device, no
    /// driver, modules, the link, then the user-space library.
    fn verdict(&self) -> (Code, String) {
        if !self.infiniband {
            (
                Code::NoInfiniBand,
                "no Mellanox InfiniBand device on this VM".to_string(),
            )
        } else if self.devices.ports == 0 {
            (
                Code::NoIbPorts,
                "no InfiniBand port is registered with the kernel; the RDMA driver is not loaded"
                    .to_string(),
            )
        } else if !self.missing.is_empty() {
            (
                Code::ModulesMissing,
                format!(
                    "RDMA kernel modules not loaded: {}; load them with modprobe or reboot",
                    self.missing.join(", ")
                ),
            )
        } else if !self.devices.down.is_empty() {
            (
                Code::PortsNotActive,
                format!(
                    "InfiniBand port(s) not active: {}; the fabric link is down, redeploy or contact support if it persists",
                    self.devices.down.join("; ")
                ),
            )
        } else if !self.verbs_library {
            (Code::InstallUnavailable, NO_VERBS_LIBRARY.to_string())
        } else {
            (Code::Success, String::new())
        }
    }

    /// Every problem found, whatever the verdict.
    fn problems(&self) -> Vec<String> {
        let mut problems = self.devices.unregistered.clone();
        if !self.verbs_library {
            problems.push(NO_VERBS_LIBRARY.into());
        }
        problems.extend(self.devices.down.iter().cloned());
        if !self.missing.is_empty() {
            problems.push(format!("missing modules: {}", self.missing.join(", ")));
        }
        problems
    }
}

fn devices(ib: &[&PciFunction], addresses: &BTreeMap<String, Vec<String>>) -> Devices {
    let mut found = Devices::default();
    for f in ib {
        if f.ib_devices.is_empty() {
            found.unregistered.push(format!(
                "PCI {} has no registered InfiniBand device",
                f.address
            ));
        }
        for d in &f.ib_devices {
            let ports: Vec<&IbPort> = d
                .ports
                .iter()
                .filter(|p| p.link_layer != LinkLayer::Ethernet)
                .collect();
            found.ports += ports.len();
            found.down.extend(
                ports
                    .iter()
                    .filter(|p| !p.is_active())
                    .map(|p| format!("{}/{} is {} ({})", d.name, p.number, p.state, p.phys_state)),
            );
            found.hcas.push(hca_report(f, d, &ports, addresses));
        }
    }
    found
}

fn hca_report(
    f: &PciFunction,
    d: &IbDevice,
    ports: &[&IbPort],
    addresses: &BTreeMap<String, Vec<String>>,
) -> HcaReport {
    HcaReport {
        name: d.name.clone(),
        pci: f.address.clone(),
        nic: f.generation,
        fw: d.fw_ver.clone(),
        ports: ports
            .iter()
            .map(|p| PortReport {
                port: p.number,
                state: p.state.clone(),
                phys_state: p.phys_state.clone(),
                rate: p.rate.clone(),
            })
            .collect(),
        netdevs: f
            .netdevs
            .iter()
            .map(|n| NetdevReport {
                name: n.name.clone(),
                operstate: n.operstate.clone(),
                addresses: addresses.get(&n.name).cloned().unwrap_or_default(),
            })
            .collect(),
    }
}

/// The success line: ports and rates, then the stack and its version.
fn ready_summary(report: &HealthReport, stack: Option<&InstalledStack>) -> String {
    let stack_text = stack
        .map(|s| {
            format!(
                "{} {}",
                s.kind.as_str(),
                s.version.clone().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    format!(
        "RDMA ready: {}; {}",
        report.port_summary(),
        stack_text.trim()
    )
}
