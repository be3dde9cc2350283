//! `disable`: stops our enforcement and self-repair and leaves the drivers working. The worker
//! is asked to stop (`request.json` with `stop`) and leaves at its next safe point; one that
//! does not within a minute gets SIGTERM, then SIGKILL, by its recorded pid and start time
//! (never by name). The health monitor timer is disabled and its unit files removed. If the
//! worker is still alive after that, or `systemctl disable --now ibdriver-health.timer` fails
//! while our unit files exist, disable exits 14 with code 205 (DisableFailed), one line on
//! stderr saying what to do, and a log entry: the agent then reports 1010, does not run
//! uninstall, keeps the handler directory and retries the whole sequence on the next goal
//! state. A package installer a killed worker left running is not stopped: it finishes rather
//! than leave dpkg or rpm half done.
//! Heartbeat: a failed disable writes `NotReady` with the first failure's code and message
//! (agents from 2.15 show the heartbeat's message as the handler's, so the cause and what to
//! do are what the customer sees). A successful disable writes `NotReady` "disabled: ...", which matches what the agent itself
//! records for a disabled handler ("Plugin disabled", NotReady). Nothing refreshes it
//! afterwards, so after 600 s the agent shows `Unresponsive`: with the monitor stopped nothing
//! on the VM reports for the extension any more, which is what that state says. (A `Ready`
//! heartbeat would claim supervision that no longer exists.) The next enable writes `Ready`
//! again and reinstalls the monitor.

use crate::agent::invocation::Invocation;
use crate::agent::status::HeartbeatState;
use crate::engine::stop::{stop_worker, StopWaits, DISABLE_WAITS};
use crate::error::{Code, Failure};
use crate::sys::logging;
use crate::sys::systemd;

/// Stop the worker and remove the health monitor; every failure, in that order.
pub(crate) fn stop_enforcement(inv: &Invocation, waits: StopWaits) -> Vec<Failure> {
    let data = inv.root.data_dir();
    [stop_worker(&data, waits), systemd::remove(&inv.root)]
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

pub fn run(inv: &Invocation) -> i32 {
    let failures = stop_enforcement(inv, DISABLE_WAITS);
    if let Some(first) = failures.first() {
        for f in &failures {
            super::report(inv, f);
        }
        inv.heartbeat(HeartbeatState::NotReady, first.code, &first.message);
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
