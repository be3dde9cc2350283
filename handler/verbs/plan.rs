//! `plan`: what enable would do on this host with these settings, without doing it.
//!
//! `plan --sysfs DIR` replays a recorded hardware tree (a diagnose bundle's `sysfs/`, or any
//! directory laid out like `/sys`): the PCI functions, ports, netdevs, VMBus devices and the
//! EFI Secure Boot variable come from DIR, everything else (os-release, kernel, loaded
//! modules, the installed stack) from this system's root as usual. IMDS is not asked then:
//! its answer would describe this machine, not the recorded one, so the VM size is unknown
//! and Secure Boot is what the recorded EFI variable says.

use crate::agent::settings::{self, PublicSettings};
use crate::host::{self, imds, Root};
use crate::plan;
use crate::verbs::diagnose::{SYSFS, TOP};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The exit code: 0 when enable would install or verify, the refusal's code otherwise; a
/// `--sysfs` that is not a sysfs tree is a usage error.
pub fn run(settings_file: Option<&Path>, sysfs: Option<&Path>, json: bool) -> i32 {
    crate::sys::logging::init(None, false);
    let replay = match sysfs.map(replay_dir).transpose() {
        Ok(dir) => dir,
        Err(why) => {
            crate::tell!(
                "ibdriver: plan --sysfs {}: {why}",
                sysfs.unwrap_or(Path::new("")).display()
            );
            return crate::error::Code::Usage.exit_code();
        }
    };
    let public = match settings_file {
        None => PublicSettings::default(),
        Some(p) => match settings::read_public_settings(p) {
            Ok(s) => s,
            Err(e) => {
                let f = crate::error::Failure::from(e);
                crate::tell!("ibdriver: {f}");
                return f.code.exit_code();
            }
        },
    };
    show(replay.as_deref(), &public, json)
}

/// `dir` as a replay source: an existing directory with `bus/` or `class/` in it (a bundle's
/// top directory, which holds `sysfs/`, is named as the likely mistake). Returned absolute.
fn replay_dir(dir: &Path) -> Result<PathBuf, String> {
    let meta = std::fs::metadata(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such directory".to_string(),
        _ => e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    if !dir.join("bus").is_dir() && !dir.join("class").is_dir() {
        let hint = [dir.join(SYSFS), dir.join(TOP).join(SYSFS)]
            .into_iter()
            .find(|d| d.is_dir())
            .map(|d| format!(" (did you mean {}?)", d.display()))
            .unwrap_or_default();
        return Err(format!(
            "not a sysfs tree: it has neither bus/ nor class/{hint}"
        ));
    }
    std::path::absolute(dir).map_err(|e| e.to_string())
}

#[derive(Serialize)]
struct PlanOutput<'a> {
    /// The recorded tree the hardware facts were replayed from (`--sysfs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed_sysfs: Option<&'a Path>,
    facts: &'a host::HostFacts,
    settings: &'a PublicSettings,
    plan: &'a plan::Plan,
}

/// Detect and decide: on this host, or on the hardware recorded in `replay` without IMDS.
fn show(replay: Option<&Path>, public: &PublicSettings, json: bool) -> i32 {
    let root = match replay {
        Some(dir) => Root::from_env().with_sysfs(dir),
        None => Root::from_env(),
    };
    let policy = imds::Policy::default();
    let facts = host::detect(&root, replay.is_none().then_some(&policy), true);
    let plan = plan::decide(&facts, public, None);
    if json {
        let out = PlanOutput {
            replayed_sysfs: replay,
            facts: &facts,
            settings: public,
            plan: &plan,
        };
        crate::say!(
            "{}",
            serde_json::to_string_pretty(&out).expect("plan serializes")
        );
    } else {
        let os = facts
            .os
            .as_ref()
            .map(|o| o.pretty_name.clone())
            .unwrap_or_else(|| "unknown OS".into());
        crate::say!(
            "host:   {os}, kernel {}, {}",
            facts.kernel,
            facts.vm_size().unwrap_or("size unknown (no IMDS)")
        );
        if let Some(dir) = replay {
            crate::say!("sysfs:  replayed from {}", dir.display());
        }
        for f in facts.infiniband_functions() {
            crate::say!(
                "ib:     {} {:?} {}",
                f.address,
                f.generation,
                f.ib_devices
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        match &facts.stack {
            Some(s) => crate::say!(
                "stack:  {} {}",
                s.kind.as_str(),
                s.version.as_deref().unwrap_or("")
            ),
            None => crate::say!("stack:  none installed"),
        }
        crate::say!("plan:   {}", plan.summary);
    }
    match plan.action {
        plan::Action::Refuse { failure } => failure.code.exit_code(),
        plan::Action::VerifyOnly { .. } | plan::Action::Install { .. } => 0,
    }
}
