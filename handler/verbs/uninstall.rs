//! `uninstall`: disable's cleanup, then everything we added except the drivers: the data
//! directory (checkpoint, request, lock, markers, downloaded artifacts). With
//! `removeDriversOnUninstall: true` in `config/N.settings` for the agent's N, a vendor stack
//! this extension installed (`installed.json`) is removed too ([`crate::stages::install::remove`]);
//! settings that cannot be read keep the drivers (logged). If that removal fails, the
//! marker `installed.json` stays (so what we installed stays known) and uninstall exits 14;
//! the agent only logs an uninstall failure.
//! During an update (the marker `update.json`, written by the new version's update a moment
//! before) the old version's uninstall keeps the data directory and the drivers whatever the
//! settings say: the new version owns them now.
//!
//! What remains on the VM after disable + uninstall: the drivers (unless removed as above),
//! the summary log `/var/log/azure/ib-vmext-status` (and its rotated `.1`), and the agent's log
//! folder `/var/log/azure/<handler>/` with our `ibdriver.log*` in it; both logs are where users
//! and support look after the fact, and the agent owns the folder.

use crate::agent::invocation::Invocation;
use crate::agent::settings;
use crate::engine::stop::UNINSTALL_WAITS;
use crate::error::{Code, Failure};
use crate::host;
use crate::stages::install::remove;
use crate::sys::fsutil;
use crate::sys::logging;
use crate::verbs::disable::stop_enforcement;
use crate::verbs::update::{update_in_progress, UPDATE_MARKER};
use std::path::Path;
use std::time::{Duration, Instant};

/// The agent kills uninstall at 300 s; driver removal stops starting commands before that.
const UNINSTALL_BUDGET: Duration = Duration::from_secs(270);

/// Does `config/N.settings` ask for the drivers to go? Read with the settings parsers but
/// without decrypting the protected part (not needed, and a missing certificate must not
/// decide this). `Err` says why the answer is unknown.
fn removal_requested(inv: &Invocation) -> Result<bool, String> {
    let path = inv.agent.settings_path();
    let text = fsutil::read_text(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let raw = settings::parse_settings_file(&text, &path).map_err(|e| e.to_string())?;
    let public = settings::parse_public(raw.public.as_ref()).map_err(|e| e.to_string())?;
    Ok(public.remove_drivers_on_uninstall)
}

/// Remove the data directory, or, with `keep`, everything in it but that one file.
fn remove_state(data: &Path, keep: Option<&str>) {
    let result = match keep {
        None => std::fs::remove_dir_all(data),
        Some(keep) => std::fs::read_dir(data).and_then(|rd| {
            for e in rd.flatten() {
                if e.file_name() == keep {
                    continue;
                }
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p)?;
                } else {
                    std::fs::remove_file(&p)?;
                }
            }
            Ok(())
        }),
    };
    if let Err(e) = result {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, "cannot remove {}", data.display());
        }
    }
}

/// Remove the drivers if the settings ask for it and we installed them; `Err` when a removal
/// was attempted and failed.
fn remove_drivers(inv: &Invocation, deadline: Instant) -> Result<String, Failure> {
    match removal_requested(inv) {
        Ok(false) => return Ok("drivers kept".into()),
        Ok(true) => {}
        Err(why) => {
            tracing::warn!("settings unreadable ({why}); keeping the drivers");
            return Ok("drivers kept (settings unreadable)".into());
        }
    }
    let marker = match remove::removable(&inv.root) {
        Ok(m) => m,
        Err(why) => {
            tracing::info!("removeDriversOnUninstall: {why}");
            return Ok(format!("drivers kept: {why}"));
        }
    };
    let os = fsutil::read_trimmed(&inv.root.path("etc/os-release"))
        .and_then(|t| host::os_release::parse(&t));
    let Some(family) = os.as_ref().and_then(crate::plan::recipe::family) else {
        return Err(Failure::new(
            Code::PackageInstallFailed,
            "cannot tell the distribution from /etc/os-release; the drivers stay installed",
        ));
    };
    let kernel = host::read_sysfs(&inv.root).kernel;
    let done = remove::run(&inv.root, family, &marker, &kernel, deadline)?;
    tracing::info!(steps = ?done, "driver removal done");
    Ok(format!(
        "{} {} removed",
        marker.stack.as_str(),
        marker.version
    ))
}

pub fn run(inv: &Invocation) -> i32 {
    let deadline = Instant::now() + UNINSTALL_BUDGET;
    let data = inv.root.data_dir();
    let mut failures = stop_enforcement(inv, UNINSTALL_WAITS);
    if update_in_progress(&data, &inv.agent.version()) {
        // The new version's update ran already; it owns the state and the drivers now.
        let _ = std::fs::remove_file(data.join(UPDATE_MARKER));
        tracing::info!("uninstall during an update: state and drivers kept for the new version");
        logging::summary(
            &inv.root,
            &format!("Uninstall version {} (update)", inv.agent.version()),
        );
    } else {
        let drivers = remove_drivers(inv, deadline);
        // Configuration we own. (`OS.EnableRDMA=y` in waagent.conf stays: with the drivers
        // kept, the agent goes on assigning the IPoIB addresses after a reboot.)
        let load = inv.root.path(crate::stages::configure::MODULES_LOAD_FILE);
        if let Err(e) = std::fs::remove_file(&load) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %load.display(), error = %e, "cannot remove");
            }
        }
        let keep_marker = drivers.is_err();
        remove_state(&data, keep_marker.then_some(host::stack::MARKER));
        let outcome = match drivers {
            Ok(s) => s,
            Err(f) => {
                let line = f.message.clone();
                failures.push(f);
                format!("driver removal failed: {line}")
            }
        };
        logging::summary(
            &inv.root,
            &format!(
                "Uninstall version {}: state removed, {outcome}",
                inv.agent.version()
            ),
        );
        tracing::info!("uninstalled: state removed; {outcome}");
    }
    for f in &failures {
        super::report(inv, f);
    }
    failures.first().map_or(0, |f| f.code.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_state_can_keep_the_install_marker() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir_all(data.join("artifacts/x")).unwrap();
        for f in ["state.json", "installed.json", "request.json"] {
            std::fs::write(data.join(f), "{}").unwrap();
        }
        remove_state(&data, Some("installed.json"));
        assert_eq!(crate::sys::fsutil::dir_names(&data), ["installed.json"]);
        remove_state(&data, None);
        assert!(!data.exists());
        remove_state(&data, None);
    }
}
