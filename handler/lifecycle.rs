//! `install`, `disable`, `uninstall` and `update` (PROTOCOL.md section 7).
//!
//! - install: prepares the data directory; the work happens in enable.
//! - disable: stops our enforcement (the worker at its next safe point, the health monitor);
//!   drivers keep working.
//! - uninstall: disable's cleanup plus our state, unless an update is in progress (the agent runs
//!   the old version's uninstall after the new version's update). Drivers stay installed.
//! - update: records that an update is in progress so the old version's uninstall keeps state.

use crate::enable::{self, Invocation, Request};
use crate::error::Failure;
use crate::lock::WorkerLock;
use crate::{clock, fsutil, logging, monitor};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

const UPDATE_MARKER: &str = "update.json";
/// An update marker older than this is stale (a failed update long ago) and ignored.
const UPDATE_MARKER_TTL_SECS: u64 = 3600;

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

/// Ask the worker to stop, wait for it, and as a last resort stop exactly that process.
/// The request is written even when no worker holds the lock yet: one that was just started
/// reads it before it takes the lock and leaves.
fn stop_worker(data: &Path, wait: Duration) {
    let seq = enable::read_request(data).map(|r| r.seq).unwrap_or(0);
    if data.is_dir() {
        if let Err(f) = enable::write_request(data, &Request { seq, stop: true }) {
            tracing::warn!("cannot ask the worker to stop: {f}");
        }
    }
    let lock = WorkerLock::new(data);
    let running = || lock.holder().is_some();
    let deadline = Instant::now() + wait;
    while running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(holder) = lock.holder() else { return };
    let pid = holder.pid;
    tracing::warn!(pid, "worker did not stop in time; sending SIGTERM");
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if lock.holder().is_some_and(|h| h.pid == pid) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

pub fn disable(inv: &Invocation) -> i32 {
    let data = inv.root.data_dir();
    stop_worker(&data, Duration::from_secs(60));
    monitor::remove(&inv.root);
    logging::summary(&inv.root, &format!("Disable seq={}", inv.agent.seq));
    tracing::info!("disabled: worker stopped, health monitor removed; drivers left as they are");
    0
}

fn update_in_progress(data: &Path) -> bool {
    let Some(m) = std::fs::read(data.join(UPDATE_MARKER))
        .ok()
        .and_then(|b| serde_json::from_slice::<UpdateMarker>(&b).ok())
    else {
        return false;
    };
    clock::unix_seconds().saturating_sub(m.at) < UPDATE_MARKER_TTL_SECS
}

pub fn uninstall(inv: &Invocation) -> i32 {
    let data = inv.root.data_dir();
    stop_worker(&data, Duration::from_secs(30));
    // Safe during an update too: the new version's enable installs its own monitor.
    monitor::remove(&inv.root);
    if update_in_progress(&data) {
        // The new version's update ran already; it owns the state now.
        let _ = std::fs::remove_file(data.join(UPDATE_MARKER));
        tracing::info!("uninstall during an update: state kept for the new version");
        logging::summary(
            &inv.root,
            &format!("Uninstall version {} (update)", inv.agent.version()),
        );
        return 0;
    }
    if let Err(e) = std::fs::remove_dir_all(&data) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, "cannot remove {}", data.display());
        }
    }
    logging::summary(
        &inv.root,
        &format!(
            "Uninstall version {}: state removed, drivers kept",
            inv.agent.version()
        ),
    );
    tracing::info!("uninstalled: state removed; drivers left installed");
    0
}

pub fn update(inv: &Invocation) -> i32 {
    let data = match prepare_data_dir(inv, "update") {
        Ok(d) => d,
        Err(code) => return code,
    };
    let marker = UpdateMarker {
        from: inv
            .agent
            .vars
            .updating_from_version
            .clone()
            .unwrap_or_default(),
        to: inv
            .agent
            .vars
            .version
            .clone()
            .unwrap_or_else(|| inv.agent.version()),
        at: clock::unix_seconds(),
    };
    let bytes = serde_json::to_vec(&marker).expect("marker serializes");
    if let Err(e) = fsutil::write_atomic(&data.join(UPDATE_MARKER), &bytes) {
        let f = Failure::state_io(&data.join(UPDATE_MARKER), e);
        tracing::error!("update: {f}");
        return f.code.exit_code();
    }
    logging::summary(
        &inv.root,
        &format!("Update from {} to {}", marker.from, marker.to),
    );
    tracing::info!(from = %marker.from, to = %marker.to, "update recorded");
    0
}
