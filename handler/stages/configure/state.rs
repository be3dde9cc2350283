//! What configure works with (its context) and what it leaves behind (`configure.json`: the
//! record that verify, the no-op enable and the health monitor check the host against).

use crate::agent::settings::PublicSettings;
use crate::engine::files;
use crate::error::Failure;
use crate::host::{HostFacts, Root};
use crate::sys::{fsutil, proc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Modules listed here load at every boot, before the agent or we run.
pub const MODULES_LOAD_FILE: &str = "etc/modules-load.d/infiniband-driver-linux.conf";
pub const STATE_FILE: &str = files::CONFIGURE_STATE;
pub const WAAGENT_CONF: &str = "etc/waagent.conf";
/// Every IPoIB address Azure hands out is in 172.16.0.0/16 (docs/DOMAIN.md, "IPoIB").
pub const IPOIB_PREFIX: u32 = 16;

/// One IPoIB address configure put (or found) on one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub netdev: String,
    /// The 12-hex-digit key from `IPoIB_Data` that matched the interface's hardware address.
    pub mac: String,
    /// `a.b.c.d/16`.
    pub address: String,
}

/// The IPoIB mode configure put in effect: the setting with `auto` resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpoibInEffect {
    /// IPoIB left alone.
    #[default]
    Off,
    /// We assign the addresses from the host's `IPoIB_Data`.
    Native,
    /// The guest agent assigns them (`OS.EnableRDMA`).
    Waagent,
}

impl std::fmt::Display for IpoibInEffect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IpoibInEffect::Off => "off",
            IpoibInEffect::Native => "native",
            IpoibInEffect::Waagent => "waagent",
        })
    }
}

/// What configure did and what the host must keep showing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub ipoib: IpoibInEffect,
    pub assignments: Vec<Assignment>,
    /// HCA names configure set (`hcaNaming: stable`): PCI address -> name.
    #[serde(default)]
    pub hca_names: BTreeMap<String, String>,
    /// Modules configure made sure of.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Things that did not stop configure but deserve a look (shown in the status).
    #[serde(default)]
    pub notes: Vec<String>,
}

pub fn load_state(data_dir: &Path) -> Option<State> {
    serde_json::from_slice(
        &fsutil::read_regular(&data_dir.join(STATE_FILE), fsutil::MAX_READ).ok()?,
    )
    .ok()
}

pub(super) fn save_state(data_dir: &Path, state: &State) -> Result<(), Failure> {
    let p = data_dir.join(STATE_FILE);
    let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
    fsutil::write_atomic(&p, &bytes).map_err(|e| Failure::state_io(&p, e))
}

/// What the configure stage needs.
pub struct Ctx<'a> {
    pub root: &'a Root,
    pub facts: &'a HostFacts,
    pub settings: &'a PublicSettings,
    pub data_dir: &'a Path,
    /// How long to wait for IPoIB interfaces to appear after the modules load.
    pub netdev_wait: Duration,
    pub keep_going: &'a dyn Fn() -> bool,
    pub progress: &'a dyn Fn(&str),
}

pub(super) fn run_cmd(
    program: &str,
    args: &[&str],
    timeout_secs: u64,
) -> Result<proc::Output, proc::Unsuccessful> {
    let what = format!("{program} {}", args.join(" "));
    tracing::info!("running {what}");
    proc::run_ok(program, args, &what, Duration::from_secs(timeout_secs))
}
