//! `install`, `disable`, `uninstall` and `update` (PROTOCOL.md section 7).
//!
//! - install: prepares the data directory; the work happens in enable.
//! - disable: stops our enforcement and self-repair and leaves the drivers working. The worker
//!   is asked to stop (`request.json` with `stop`) and leaves at its next safe point; one that
//!   does not within a minute gets SIGTERM, then SIGKILL, by its recorded pid and start time
//!   (never by name). The health monitor timer is disabled and its unit files removed. If the
//!   worker is still alive after that, or `systemctl disable --now ibdriver-health.timer` fails
//!   while our unit files exist, disable exits 14 with code 205 (DisableFailed), one line on
//!   stderr saying what to do, and a log entry: the agent then reports 1010, does not run
//!   uninstall, keeps the handler directory and retries the whole sequence on the next goal
//!   state. A package installer a killed worker left running is not stopped: it finishes rather
//!   than leave dpkg or rpm half done.
//!   Heartbeat: disable writes `NotReady` "disabled: ...", which matches what the agent itself
//!   records for a disabled handler ("Plugin disabled", NotReady). Nothing refreshes it
//!   afterwards, so after 600 s the agent shows `Unresponsive`: with the monitor stopped nothing
//!   on the VM reports for the extension any more, which is what that state says. (A `Ready`
//!   heartbeat would claim supervision that no longer exists.) The next enable writes `Ready`
//!   again and reinstalls the monitor.
//! - uninstall: disable's cleanup, then everything we added except the drivers: the data
//!   directory (checkpoint, request, lock, markers, downloaded artifacts). With
//!   `removeDriversOnUninstall: true` in `config/N.settings` for the agent's N, a vendor stack
//!   this extension installed (`installed.json`) is removed too ([`crate::install::remove`]);
//!   settings that cannot be read keep the drivers (logged). If that removal fails, the
//!   marker `installed.json` stays (so what we installed stays known) and uninstall exits 14;
//!   the agent only logs an uninstall failure.
//!   During an update (the marker `update.json`, written by the new version's update a moment
//!   before) the old version's uninstall keeps the data directory and the drivers whatever the
//!   settings say: the new version owns them now.
//! - update: writes `update.json` (idempotent: a failed update retried writes it again) and
//!   checks that the checkpoint is readable. Nothing has to be copied: the checkpoint lives in
//!   the data directory outside the versioned handler directory, and the agent copies `mrseq`
//!   and `status/` into the new one, so the new version's enable with unchanged settings finds
//!   its sequence number done and does nothing. On a downgrade the agent runs the *installed*
//!   (newer) version's update with `VERSION` = `AZURE_GUEST_AGENT_UPDATING_FROM_VERSION` = the
//!   older version: the newer code, which knows both state formats, is the one that migrates.
//!
//! What remains on the VM after disable + uninstall: the drivers (unless removed as above),
//! the summary log `/var/log/azure/ib-vmext-status` (and its rotated `.1`), and the agent's log
//! folder `/var/log/azure/<handler>/` with our `ibdriver.log*` in it; both logs are where users
//! and support look after the fact, and the agent owns the folder.

use crate::enable::{self, Invocation, Request};
use crate::error::{Code, Failure};
use crate::install::{self, remove};
use crate::lock::WorkerLock;
use crate::runner::Store;
use crate::status::HeartbeatState;
use crate::{clock, fsutil, host, logging, monitor, settings};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

const UPDATE_MARKER: &str = "update.json";
/// An update marker older than this is stale (a failed update long ago) and ignored.
const UPDATE_MARKER_TTL_SECS: u64 = 3600;
/// The agent kills uninstall at 300 s; driver removal stops starting commands before that.
const UNINSTALL_BUDGET: Duration = Duration::from_secs(270);

#[derive(Debug, Serialize, Deserialize)]
struct UpdateMarker {
    from: String,
    to: String,
    at: u64,
}

/// Create the data directory; on failure log it and give the exit code.
fn prepare_data_dir(inv: &Invocation, verb: &str) -> Result<std::path::PathBuf, i32> {
    let data = inv.root.data_dir();
    fsutil::create_private_dir(&data).map_err(|e| {
        let f = Failure::state_io(&data, e);
        tracing::error!("{verb}: {f}");
        f.code.exit_code()
    })?;
    Ok(data)
}

pub fn install(inv: &Invocation) -> i32 {
    if let Err(code) = prepare_data_dir(inv, "install") {
        return code;
    }
    logging::summary(
        &inv.root,
        &format!("Install version {}", inv.agent.version()),
    );
    tracing::info!("installed");
    0
}

/// How long stopping the worker waits at each step: for the worker to leave by itself after
/// the stop request, after SIGTERM, after SIGKILL.
#[derive(Debug, Clone, Copy)]
pub struct StopWaits {
    pub request: Duration,
    pub term: Duration,
    pub kill: Duration,
}

pub const DISABLE_WAITS: StopWaits = StopWaits {
    request: Duration::from_secs(60),
    term: Duration::from_secs(10),
    kill: Duration::from_secs(5),
};

const UNINSTALL_WAITS: StopWaits = StopWaits {
    request: Duration::from_secs(30),
    term: Duration::from_secs(10),
    kill: Duration::from_secs(5),
};

/// Ask the worker to stop, wait for it, and as a last resort stop exactly that process.
/// The request is written even when no worker holds the lock yet: one that was just started
/// reads it before it takes the lock and leaves. Fails when the worker outlives SIGKILL
/// (for example stuck in the kernel).
pub fn stop_worker(data: &Path, waits: StopWaits) -> Result<(), Failure> {
    let seq = enable::read_request(data).map(|r| r.seq).unwrap_or(0);
    // Never through a symlinked data directory: the request would land where it points.
    if fsutil::is_real_dir(data) {
        if let Err(f) = enable::write_request(data, &Request { seq, stop: true }) {
            tracing::warn!("cannot ask the worker to stop: {f}");
        }
    }
    let lock = WorkerLock::new(data);
    let gone_within = |wait: Duration, pid: Option<u32>| {
        let deadline = Instant::now() + wait;
        loop {
            let alive = lock
                .holder()
                .is_some_and(|h| pid.is_none_or(|p| p == h.pid));
            if !alive {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    if gone_within(waits.request, None) {
        return Ok(());
    }
    let Some(holder) = lock.holder() else {
        return Ok(());
    };
    let pid = holder.pid;
    tracing::warn!(pid, "worker did not stop in time; sending SIGTERM");
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    if gone_within(waits.term, Some(pid)) {
        return Ok(());
    }
    tracing::warn!(pid, "worker ignored SIGTERM; sending SIGKILL");
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    if gone_within(waits.kill, Some(pid)) {
        return Ok(());
    }
    Err(Failure::new(
        Code::DisableFailed,
        format!(
            "the worker (pid {pid}) is still running after SIGTERM and SIGKILL; see what holds it \
             with 'ps -o pid,stat,wchan -p {pid}', then disable or remove the extension again"
        ),
    ))
}

/// Report a lifecycle failure where users look: stderr (the agent puts it into the handler
/// status message), our log, the summary log and a telemetry event. The settings status is
/// left alone: it describes the last enable, which this failure does not change.
fn report(inv: &Invocation, verb: &str, f: &Failure) {
    crate::tell!("ibdriver {verb}: {f}");
    inv.log_failure(verb, f);
}

/// Stop the worker and remove the health monitor; every failure, in that order.
fn stop_enforcement(inv: &Invocation, waits: StopWaits) -> Vec<Failure> {
    let data = inv.root.data_dir();
    [stop_worker(&data, waits), monitor::remove(&inv.root)]
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

pub fn disable(inv: &Invocation) -> i32 {
    let failures = stop_enforcement(inv, DISABLE_WAITS);
    if let Some(first) = failures.first() {
        for f in &failures {
            report(inv, "Disable", f);
        }
        return first.code.exit_code();
    }
    inv.heartbeat(
        HeartbeatState::NotReady,
        Code::Success,
        "disabled: worker and health monitor stopped; drivers left as they are",
    );
    logging::summary(&inv.root, &format!("Disable seq={}", inv.agent.seq));
    tracing::info!("disabled: worker stopped, health monitor removed; drivers left as they are");
    0
}

/// Is this uninstall the old version's, in an update the new version recorded? Only the
/// version the marker says is being replaced keeps the state: a stale marker (an update whose
/// old-version uninstall never came) cannot turn a real uninstall of the new version into a
/// no-op.
fn update_in_progress(data: &Path, ours: &str) -> bool {
    let Some(m) = fsutil::read_regular(&data.join(UPDATE_MARKER), fsutil::MAX_READ)
        .ok()
        .and_then(|b| serde_json::from_slice::<UpdateMarker>(&b).ok())
    else {
        return false;
    };
    m.from == ours && clock::unix_seconds().saturating_sub(m.at) < UPDATE_MARKER_TTL_SECS
}

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
    let Some(family) = os.as_ref().and_then(install::recipe::family) else {
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

pub fn uninstall(inv: &Invocation) -> i32 {
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
        let load = inv.root.path(crate::configure::MODULES_LOAD_FILE);
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
        report(inv, "Uninstall", f);
    }
    failures.first().map_or(0, |f| f.code.exit_code())
}

pub fn update(inv: &Invocation) -> i32 {
    let data = match prepare_data_dir(inv, "update") {
        Ok(d) => d,
        Err(code) => return code,
    };
    let ours = inv.agent.version();
    let to = inv
        .agent
        .vars
        .version
        .clone()
        .unwrap_or_else(|| ours.clone());
    let mut from = inv
        .agent
        .vars
        .updating_from_version
        .clone()
        .unwrap_or_default();
    if from == to && to != ours {
        // The agent's downgrade: this (newer, installed) version updates to the older one.
        tracing::info!(to = %to, "downgrade: the installed version runs the update");
        from = ours;
    }
    let marker = UpdateMarker {
        from,
        to,
        at: clock::unix_seconds(),
    };
    let bytes = serde_json::to_vec(&marker).expect("marker serializes");
    let path = data.join(UPDATE_MARKER);
    if let Err(e) = fsutil::write_atomic(&path, &bytes) {
        let f = Failure::state_io(&path, e);
        report(inv, "Update", &f);
        return f.code.exit_code();
    }
    // The version that enables next reads this checkpoint; one it could not read would make it
    // start its sequence number afresh (safe, the stages are idempotent, but slower).
    let state = data.join("state.json");
    if state.exists() && Store::new(&data).load().is_none() {
        tracing::warn!("the checkpoint is unreadable; the next enable starts its work afresh");
    }
    logging::summary(
        &inv.root,
        &format!("Update from {} to {}", marker.from, marker.to),
    );
    tracing::info!(from = %marker.from, to = %marker.to, "update recorded");
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> StopWaits {
        StopWaits {
            request: Duration::from_millis(100),
            term: Duration::from_millis(300),
            kill: Duration::from_secs(2),
        }
    }

    fn pretend_worker(data: &Path, script: &str) -> std::process::Child {
        let child = std::process::Command::new("sh")
            .args(["-c", script])
            .spawn()
            .unwrap();
        // Let the shell set its traps before it is signalled.
        std::thread::sleep(Duration::from_millis(200));
        let start = crate::lock::start_time(child.id()).unwrap();
        std::fs::write(
            data.join("worker.pid"),
            format!("{} {start} 3\n", child.id()),
        )
        .unwrap();
        child
    }

    #[test]
    fn no_worker_is_stopped_at_once_and_asked_to_stay_stopped() {
        let d = tempfile::tempdir().unwrap();
        stop_worker(d.path(), tiny()).unwrap();
        assert!(enable::read_request(d.path()).unwrap().stop);
    }

    #[test]
    fn a_worker_that_ignores_the_request_and_sigterm_is_killed() {
        let d = tempfile::tempdir().unwrap();
        let mut child = pretend_worker(d.path(), "trap '' TERM; while :; do sleep 0.1; done");
        stop_worker(d.path(), tiny()).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }

    #[test]
    fn a_worker_that_leaves_on_sigterm_is_not_killed() {
        let d = tempfile::tempdir().unwrap();
        let mut child = pretend_worker(d.path(), "sleep 30");
        stop_worker(d.path(), tiny()).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(15));
    }

    #[test]
    fn removing_state_can_keep_the_install_marker() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir_all(data.join("artifacts/x")).unwrap();
        for f in ["state.json", "installed.json", "request.json"] {
            std::fs::write(data.join(f), "{}").unwrap();
        }
        remove_state(&data, Some("installed.json"));
        assert_eq!(crate::fsutil::dir_names(&data), ["installed.json"]);
        remove_state(&data, None);
        assert!(!data.exists());
        remove_state(&data, None);
    }
}
