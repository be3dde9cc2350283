//! The verify stage's judgement and the health report: stack and version, modules, every
//! InfiniBand port with state and rate, IPoIB addresses, and the HCA -> netdev -> IP map.
//! [`evaluate`] is pure; [`addresses`] asks `ip` for IPv4 addresses.

use crate::error::{Code, Failure};
use crate::host::pci::{LinkLayer, NicGeneration, PciFunction};
use crate::host::stack::InstalledStack;
use crate::host::{self, Root};
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
    let missing: Vec<String> = required
        .iter()
        .filter(|m| !modules.contains(*m))
        .cloned()
        .collect();
    let mut problems = Vec::new();
    let mut hcas = Vec::new();
    let mut ports_total = 0;
    let mut ports_down = Vec::new();
    for f in &ib {
        if f.ib_devices.is_empty() {
            problems.push(format!(
                "PCI {} has no registered InfiniBand device",
                f.address
            ));
        }
        for d in &f.ib_devices {
            let mut ports = Vec::new();
            for p in d
                .ports
                .iter()
                .filter(|p| p.link_layer != LinkLayer::Ethernet)
            {
                ports_total += 1;
                if !p.is_active() {
                    ports_down.push(format!(
                        "{}/{} is {} ({})",
                        d.name, p.number, p.state, p.phys_state
                    ));
                }
                ports.push(PortReport {
                    port: p.number,
                    state: p.state.clone(),
                    phys_state: p.phys_state.clone(),
                    rate: p.rate.clone(),
                });
            }
            let netdevs = f
                .netdevs
                .iter()
                .map(|n| NetdevReport {
                    name: n.name.clone(),
                    operstate: n.operstate.clone(),
                    addresses: addresses.get(&n.name).cloned().unwrap_or_default(),
                })
                .collect();
            hcas.push(HcaReport {
                name: d.name.clone(),
                pci: f.address.clone(),
                nic: f.generation,
                fw: d.fw_ver.clone(),
                ports,
                netdevs,
            });
        }
    }
    if stack.is_none_or(|s| !s.verbs_library) {
        problems.push("the user-space verbs library (libibverbs.so.1) is not installed".into());
    }
    let (code, summary) = if ib.is_empty() {
        (
            Code::NoInfiniBand,
            "no Mellanox InfiniBand device on this VM".to_string(),
        )
    } else if ports_total == 0 {
        (
            Code::NoIbPorts,
            "no InfiniBand port is registered with the kernel; the RDMA driver is not loaded"
                .to_string(),
        )
    } else if !missing.is_empty() {
        (
            Code::ModulesMissing,
            format!(
                "RDMA kernel modules not loaded: {}; load them with modprobe or reboot",
                missing.join(", ")
            ),
        )
    } else if !ports_down.is_empty() {
        (
            Code::PortsNotActive,
            format!(
                "InfiniBand port(s) not active: {}; the fabric link is down, redeploy or contact support if it persists",
                ports_down.join("; ")
            ),
        )
    } else if stack.is_none_or(|s| !s.verbs_library) {
        (
            Code::InstallUnavailable,
            "the user-space verbs library (libibverbs.so.1) is not installed".to_string(),
        )
    } else {
        (Code::Success, String::new())
    };
    problems.extend(ports_down);
    if !missing.is_empty() {
        problems.push(format!("missing modules: {}", missing.join(", ")));
    }
    let mut report = HealthReport {
        healthy: code == Code::Success,
        code,
        summary,
        kernel: kernel.to_string(),
        stack: stack.cloned(),
        modules_required: required,
        modules_missing: missing,
        hcas,
        problems,
    };
    if report.healthy {
        let stack_text = stack
            .map(|s| {
                format!(
                    "{} {}",
                    s.kind.as_str(),
                    s.version.clone().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        report.summary = format!(
            "RDMA ready: {}; {}",
            report.port_summary(),
            stack_text.trim()
        );
    }
    report
}

/// One health check: the report, then the heartbeat that carries it. What the configure stage
/// set up (`configure.json`) is checked too.
pub fn check(root: &Root) -> HealthReport {
    let sysfs = host::read_sysfs(root);
    let stack = host::stack::detect(root);
    let addresses = crate::host::ip::addresses();
    let report = evaluate(
        &sysfs.kernel,
        &sysfs.mellanox,
        &sysfs.modules,
        stack.as_ref(),
        &addresses,
    );
    let unmet = crate::stages::configure::unmet_now(root, &sysfs, move || addresses);
    report.with_unmet(unmet)
}
