//! The configure stage (docs/DOMAIN.md, "Configure"): load the RDMA modules the stack needs, make
//! them load at boot, enable the stack's service, set up IPoIB per the `ipoib` setting, and
//! optionally give HCAs stable names. Every step looks before it acts, so running it twice in
//! a row changes nothing the second time. The network stack is never restarted.
//!
//! What configure expects of the host afterwards (addresses, HCA names) is saved in
//! `configure.json` in the data directory, so verify, the no-op enable and the health monitor
//! check exactly that.

mod ipoib;
pub mod state;
mod waagent;

pub use state::{
    load_state, Assignment, Ctx, IpoibInEffect, State, MODULES_LOAD_FILE, STATE_FILE, WAAGENT_CONF,
};
use state::{run_cmd, save_state};

use ipoib::{ensure_address, has_ip, ipoib_native};
pub use ipoib::{ipoib_key, match_pairs, netdev_of, netdevs};
pub use waagent::enable_rdma;
use waagent::waagent_enable;

use crate::agent::settings::{HcaNaming, IpoibMode};
use crate::error::{Code, Failure};
use crate::host::pci::{LinkLayer, PciFunction, RDMA_MODULES};
use crate::host::Root;
use crate::sys::fsutil;
use crate::sys::proc;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The modules configure loads: the HCA driver, verbs, umad and the connection manager user
/// interface MPI needs; IPoIB unless it is off; `nvidia_peermem` beside an NVIDIA GPU driver.
pub fn wanted_modules(ib: &[&PciFunction], ipoib: bool, gpu: bool) -> Vec<String> {
    let mut m: BTreeSet<&str> = RDMA_MODULES.into();
    m.extend(ib.iter().map(|f| f.driver_modules().ib));
    if ipoib {
        m.insert("ib_ipoib");
    }
    if gpu {
        m.insert("nvidia_peermem");
    }
    m.into_iter().map(str::to_string).collect()
}

/// An NVIDIA GPU driver is loaded (GPUDirect RDMA needs `nvidia_peermem` beside it).
pub fn nvidia_driver(root: &Root, modules: &BTreeSet<String>) -> bool {
    modules.contains("nvidia") || root.path("proc/driver/nvidia").is_dir()
}

/// Stable names: InfiniBand HCAs `mlx5_ib<N>` (`mlx4_ib<N>` for ConnectX-3), Ethernet ones
/// (accelerated networking) `mlx5_an<N>`, numbered in PCI address order. PCI address -> name.
pub fn stable_names(functions: &[PciFunction]) -> BTreeMap<String, (String, String)> {
    let mut sorted: Vec<&PciFunction> = functions.iter().collect();
    sorted.sort_by(|a, b| a.address.cmp(&b.address));
    let mut ib = 0;
    let mut an = 0;
    let mut out = BTreeMap::new();
    for f in sorted {
        for d in &f.ib_devices {
            let ethernet = d
                .ports
                .first()
                .is_some_and(|p| p.link_layer == LinkLayer::Ethernet);
            let prefix = if f.generation.is_some_and(|g| g.is_mlx4()) {
                "mlx4"
            } else {
                "mlx5"
            };
            let name = if ethernet {
                an += 1;
                format!("{prefix}_an{}", an - 1)
            } else {
                ib += 1;
                format!("{prefix}_ib{}", ib - 1)
            };
            out.insert(f.address.clone(), (d.name.clone(), name));
        }
    }
    out
}

fn load_modules(ctx: &Ctx, state: &mut State) -> Result<(), Failure> {
    let ib: Vec<&PciFunction> = ctx.facts.infiniband_functions().collect();
    let loaded = &ctx.facts.modules;
    let gpu = nvidia_driver(ctx.root, loaded);
    let ipoib = ctx.settings.ipoib != IpoibMode::Off;
    let wanted = wanted_modules(&ib, ipoib, gpu);
    let mut failed = Vec::new();
    let mut optional_failed = false;
    for m in wanted.iter().filter(|m| !loaded.contains(*m)) {
        (ctx.progress)(&format!("loading {m}"));
        if let Err(e) = run_cmd("modprobe", &[m], 120) {
            tracing::warn!("{e}");
            if m == "nvidia_peermem" {
                optional_failed = true;
                state.notes.push(format!(
                    "nvidia_peermem did not load ({}); GPUDirect RDMA is unavailable until the GPU driver provides it",
                    proc::tail_line(&e.to_string(), 200)
                ));
            } else {
                failed.push(format!("{m}: {}", proc::tail_line(&e.to_string(), 200)));
            }
        }
    }
    if !failed.is_empty() {
        return Err(Failure::new(
            Code::ConfigureFailed,
            format!(
                "RDMA module(s) would not load: {}; check dmesg, or run diagnose",
                failed.join("; ")
            ),
        ));
    }
    // What verify and the monitor hold the host to, and what loads at boot: everything that
    // loaded (a module that would not load would fail systemd-modules-load at every boot).
    state.modules = wanted
        .into_iter()
        .filter(|m| !(optional_failed && m == "nvidia_peermem"))
        .collect();
    // Load at boot too, so the fabric is usable before the agent runs enable.
    let text = format!(
        "# Written by the InfiniBandDriverLinux extension; removed by its uninstall.\n{}\n",
        state.modules.join("\n")
    );
    let path = ctx.root.path(MODULES_LOAD_FILE);
    if fsutil::read_trimmed(&path).as_deref() != Some(text.trim()) {
        if let Some(dir) = path.parent() {
            let _ = fsutil::ensure_system_dir(dir);
        }
        fsutil::write_system_file(&path, text.as_bytes())
            .map_err(|e| Failure::state_io(&path, e))?;
    }
    Ok(())
}

/// The vendor stacks' `openibd` loads their modules at boot; `systemctl enable` works in an
/// image build too. Configure runs at every boot: an enabled unit is left alone.
fn enable_services(ctx: &Ctx) {
    if ctx.root.has_unit("openibd.service")
        && !crate::sys::systemd::is_enabled("openibd.service", std::time::Duration::from_secs(30))
    {
        if let Err(e) = run_cmd("systemctl", &["enable", "openibd.service"], 120) {
            tracing::warn!("{e}");
        }
    }
}

/// `rdma dev set CURRENT name WANTED`.
fn rename_hca(current: &str, wanted: &str) -> Result<(), proc::Unsuccessful> {
    run_cmd("rdma", &["dev", "set", current, "name", wanted], 30).map(|_| ())
}

fn hca_naming(ctx: &Ctx, state: &mut State) {
    if ctx.settings.hca_naming != HcaNaming::Stable {
        return;
    }
    for (pci, (current, wanted)) in stable_names(&ctx.facts.mellanox) {
        if current != wanted {
            (ctx.progress)(&format!("renaming HCA {current} to {wanted}"));
            if let Err(e) = rename_hca(&current, &wanted) {
                state
                    .notes
                    .push(format!("HCA {current} not renamed to {wanted}: {e}"));
                continue;
            }
        }
        state.hca_names.insert(pci, wanted);
    }
}

/// The whole stage. IPoIB problems are failures (code 224) after modules and names are done.
pub fn run(ctx: &Ctx) -> Result<State, Failure> {
    // Earlier expectations end here: if this run fails half way, nothing stale is enforced.
    let old = ctx.data_dir.join(STATE_FILE);
    if let Err(e) = std::fs::remove_file(&old) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(Failure::state_io(&old, e));
        }
    }
    let mut state = State::default();
    load_modules(ctx, &mut state)?;
    enable_services(ctx);
    hca_naming(ctx, &mut state);
    let pairs = ctx.facts.kvp.ipoib.clone().filter(|p| !p.is_empty());
    let waagent_present = ctx.root.path(WAAGENT_CONF).exists();
    let result = match (ctx.settings.ipoib, pairs) {
        (IpoibMode::Off, _) => {
            state.ipoib = IpoibInEffect::Off;
            Ok(())
        }
        (IpoibMode::Native | IpoibMode::Auto, Some(pairs)) => {
            state.ipoib = IpoibInEffect::Native;
            let r = ipoib_native(ctx, &pairs, &mut state);
            // Keep the agent's own switch consistent: after a reboot it assigns the same
            // addresses from the same record before our enable runs. No restart needed.
            if ctx.settings.ipoib == IpoibMode::Auto && waagent_present {
                if let Err(f) = waagent_enable(ctx, false, false, &mut state) {
                    state.notes.push(f.message);
                }
            }
            r
        }
        (IpoibMode::Native, None) => Err(Failure::new(
            Code::IpoibNotConfigured,
            "ipoib native needs the host's IPoIB_Data record in /var/lib/hyperv/.kvp_pool_0, \
             which is missing; check that the KVP daemon (hv_kvp_daemon) runs, or use ipoib waagent",
        )),
        (IpoibMode::Waagent, pairs) | (IpoibMode::Auto, pairs @ None) => {
            if ctx.settings.ipoib == IpoibMode::Auto && !waagent_present {
                state.ipoib = IpoibInEffect::Off;
                state.notes.push(
                    "no IPoIB_Data record and no guest agent configuration: IPoIB left alone".into(),
                );
                Ok(())
            } else {
                state.ipoib = IpoibInEffect::Waagent;
                // What the agent should assign, when the host says (verify waits for it).
                if let Some(pairs) = pairs {
                    state.assignments = match_pairs(&pairs, &netdevs(ctx.root)).0;
                }
                // With the switch already on, the agent may still be assigning (after a boot it
                // does so in the background): give it a bounded while before calling it stale.
                let switch_on = std::fs::read_to_string(ctx.root.path(WAAGENT_CONF))
                    .is_ok_and(|t| enable_rdma(&t).is_none());
                let stale = switch_on
                    && waagent::addresses_missing_after(
                        ctx,
                        &state.assignments,
                        ctx.netdev_wait.min(Duration::from_secs(30)),
                    );
                waagent_enable(ctx, true, stale, &mut state).map(|_| ())
            }
        }
    };
    save_state(ctx.data_dir, &state)?;
    result.map(|_| state)
}

/// Put back what `state` recorded and the host lost (a module unloaded, an address removed, an
/// HCA renamed back), without settings or the network service: the health monitor's
/// self-repair between enables. Returns one line per action taken.
pub fn restore(root: &Root, state: &State) -> Vec<String> {
    let sysfs = crate::host::read_sysfs(root);
    let mut done = Vec::new();
    for m in state.modules.iter().filter(|m| !sysfs.modules.contains(*m)) {
        match run_cmd("modprobe", &[m], 120) {
            Ok(_) => done.push(format!("loaded {m}")),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    let devs = netdevs(root);
    for a in &state.assignments {
        // The interface with that hardware address now (a reboot may have renamed it).
        let Some(dev) = netdev_of(&devs, &a.mac) else {
            continue;
        };
        match ensure_address(dev, &a.address) {
            Ok(true) => done.push(format!("IPoIB {} on {dev}", a.address)),
            Ok(false) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    let names = stable_names(&sysfs.mellanox);
    for (pci, wanted) in &state.hca_names {
        if let Some((current, _)) = names.get(pci).filter(|(c, _)| c != wanted) {
            match rename_hca(current, wanted) {
                Ok(_) => done.push(format!("HCA {current} renamed {wanted}")),
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }
    done
}

/// What configure recorded (if anything) and the host no longer shows. `addresses` is asked
/// (netdev -> CIDRs) only when an IPoIB address is to be checked.
pub fn unmet_now(
    root: &Root,
    sysfs: &crate::host::Sysfs,
    addresses: impl FnOnce() -> BTreeMap<String, Vec<String>>,
) -> Vec<(Code, String)> {
    let Some(state) = load_state(&root.data_dir()) else {
        return Vec::new();
    };
    let (addresses, devs) = if state.assignments.is_empty() {
        (BTreeMap::new(), Vec::new())
    } else {
        (addresses(), netdevs(root))
    };
    unmet(&state, &sysfs.modules, &addresses, &devs, &sysfs.mellanox)
}

/// The expectations in `state` the host does not meet, each with its code: a module configure
/// loaded that is gone (221), an IPoIB address not on its interface (224), an HCA renamed back
/// (225). `addresses` is netdev -> CIDRs.
pub fn unmet(
    state: &State,
    modules: &BTreeSet<String>,
    addresses: &BTreeMap<String, Vec<String>>,
    netdevs: &[(String, String)],
    functions: &[PciFunction],
) -> Vec<(Code, String)> {
    let mut out = Vec::new();
    let lost: Vec<&str> = state
        .modules
        .iter()
        .filter(|m| !modules.contains(*m))
        .map(String::as_str)
        .collect();
    if !lost.is_empty() {
        out.push((
            Code::ModulesMissing,
            format!("module(s) no longer loaded: {}", lost.join(", ")),
        ));
    }
    for a in &state.assignments {
        // By hardware address, as configure matched it: names may change across boots.
        let Some(dev) = netdev_of(netdevs, &a.mac) else {
            out.push((
                Code::IpoibNotConfigured,
                format!(
                    "no interface has the hardware address of IPoIB {} ({})",
                    a.mac, a.address
                ),
            ));
            continue;
        };
        let have = addresses.get(dev).cloned().unwrap_or_default();
        if !has_ip(&have, &a.address) {
            out.push((
                Code::IpoibNotConfigured,
                if state.ipoib == IpoibInEffect::Waagent {
                    // The agent assigns them in this mode; 2.9.1.1 never did (WALinuxAgent#3025).
                    format!(
                        "IPoIB address {} is not on {dev}: the guest agent has not assigned it \
                         (waagent 2.9.1.1 never does; update the agent or use ipoib native)",
                        a.address
                    )
                } else {
                    format!("IPoIB address {} is not on {dev}", a.address)
                },
            ));
        }
    }
    for (pci, name) in &state.hca_names {
        let now = functions
            .iter()
            .find(|f| &f.address == pci)
            .map(|f| f.ib_devices.iter().any(|d| &d.name == name));
        if now == Some(false) {
            out.push((
                Code::ConfigureFailed,
                format!("HCA {pci} is no longer named {name}"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The InfiniBand functions of a fixture host, as configure sees them.
    fn ib_functions(host: &str) -> Vec<PciFunction> {
        let root = Root::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/hosts")
                .join(host),
        );
        crate::host::read_sysfs(&root)
            .mellanox
            .into_iter()
            .filter(|f| f.is_infiniband())
            .collect()
    }

    fn refs(v: &[PciFunction]) -> Vec<&PciFunction> {
        v.iter().collect()
    }

    #[test]
    fn modules_by_nic_and_options() {
        let cx6 = ib_functions("hbv3");
        let cx3 = ib_functions("nc24rsv3");
        let ndv4 = ib_functions("ndv4");
        assert_eq!((cx6.len(), cx3.len(), ndv4.len()), (1, 1, 8));
        assert_eq!(
            wanted_modules(&refs(&cx6), true, true),
            vec![
                "ib_ipoib",
                "ib_umad",
                "ib_uverbs",
                "mlx5_ib",
                "nvidia_peermem",
                "rdma_ucm"
            ]
        );
        assert_eq!(
            wanted_modules(&refs(&cx3), false, false),
            vec!["ib_umad", "ib_uverbs", "mlx4_ib", "rdma_ucm"]
        );
        // Eight HCAs of one generation need their driver once.
        assert_eq!(
            wanted_modules(&refs(&ndv4), true, false),
            vec!["ib_ipoib", "ib_umad", "ib_uverbs", "mlx5_ib", "rdma_ucm"]
        );
        // Both generations in one VM: both drivers.
        let both: Vec<&PciFunction> = cx6.iter().chain(cx3.iter()).collect();
        let m = wanted_modules(&both, false, false);
        assert!(m.contains(&"mlx4_ib".to_string()) && m.contains(&"mlx5_ib".to_string()));
        // No InfiniBand function: no HCA driver is loaded for nothing.
        assert_eq!(
            wanted_modules(&[], false, false),
            vec!["ib_umad", "ib_uverbs", "rdma_ucm"]
        );
    }

    #[test]
    fn unmet_expectations() {
        let state = State {
            ipoib: IpoibInEffect::Native,
            assignments: vec![Assignment {
                netdev: "ib0".into(),
                mac: "00155d33ff2c".into(),
                address: "172.16.1.4/16".into(),
            }],
            ..Default::default()
        };
        let mut addrs = BTreeMap::new();
        let mut modules = BTreeSet::new();
        let devs = vec![("ib0".to_string(), "00:15:5d:33:ff:2c".to_string())];
        assert!(unmet(&state, &modules, &addrs, &[], &[])[0]
            .1
            .starts_with("no interface has the hardware address"));
        assert_eq!(
            unmet(&state, &modules, &addrs, &devs, &[])[0].0,
            Code::IpoibNotConfigured
        );
        addrs.insert("ib0".to_string(), vec!["172.16.1.4/16".to_string()]);
        assert!(unmet(&state, &modules, &addrs, &devs, &[]).is_empty());
        let state = State {
            modules: vec!["ib_ipoib".into()],
            ..state
        };
        assert_eq!(
            unmet(&state, &modules, &addrs, &devs, &[]),
            vec![(
                Code::ModulesMissing,
                "module(s) no longer loaded: ib_ipoib".to_string()
            )]
        );
        modules.insert("ib_ipoib".to_string());
        assert!(unmet(&state, &modules, &addrs, &devs, &[]).is_empty());
    }

    #[test]
    fn unmet_hca_names_and_the_waagent_wording() {
        let root = Root::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/hbv3"),
        );
        let functions = crate::host::read_sysfs(&root).mellanox;
        // hbv3 has an InfiniBand HCA and an accelerated-networking one: a lookup by the wrong
        // PCI address finds the other's name.
        assert_eq!(functions.len(), 2);
        let ib = functions.iter().find(|f| f.is_infiniband()).unwrap();
        let (pci, name) = (ib.address.clone(), ib.ib_devices[0].name.clone());
        let (modules, addrs) = (BTreeSet::new(), BTreeMap::new());
        let named = |n: &str| State {
            hca_names: [(pci.clone(), n.to_string())].into(),
            ..Default::default()
        };
        assert!(unmet(&named(&name), &modules, &addrs, &[], &functions).is_empty());
        assert_eq!(
            unmet(&named("mlx5_ib7"), &modules, &addrs, &[], &functions),
            vec![(
                Code::ConfigureFailed,
                format!("HCA {pci} is no longer named mlx5_ib7")
            )]
        );
        // A function that is gone (hot-removed) is not held to a name.
        let gone = State {
            hca_names: [("0999:00:00.0".to_string(), "mlx5_ib0".to_string())].into(),
            ..Default::default()
        };
        assert!(unmet(&gone, &modules, &addrs, &[], &functions).is_empty());

        // A missing address: in waagent mode the agent is the one to blame.
        let devs = vec![("ib0".to_string(), "00:15:5d:33:ff:2c".to_string())];
        let missing = |mode: IpoibInEffect| State {
            ipoib: mode,
            assignments: vec![Assignment {
                netdev: "ib0".into(),
                mac: "00155d33ff2c".into(),
                address: "172.16.1.4/16".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            unmet(
                &missing(IpoibInEffect::Native),
                &modules,
                &addrs,
                &devs,
                &[]
            ),
            vec![(
                Code::IpoibNotConfigured,
                "IPoIB address 172.16.1.4/16 is not on ib0".to_string()
            )]
        );
        let waagent = unmet(
            &missing(IpoibInEffect::Waagent),
            &modules,
            &addrs,
            &devs,
            &[],
        );
        assert_eq!(waagent.len(), 1);
        assert!(
            waagent[0].1.contains("the guest agent has not assigned it"),
            "{waagent:?}"
        );
    }
}
