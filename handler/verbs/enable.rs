//! `enable`: the synchronous part the agent waits for (no-op check, settings, a bounded
//! preflight, `transitioning`); the detached worker (`engine::worker`) runs the rest.

use crate::agent::invocation::Invocation;
use crate::agent::settings;
use crate::agent::status::{HeartbeatState, StatusValue, SubStatus};
use crate::engine::checkpoint::{Checkpoint, Stage, Store};
use crate::engine::done::{finished_here, quick_health, restore_success_status};
use crate::engine::lock::WorkerLock;
use crate::engine::request::{wants, write_request, Request};
use crate::engine::stage_substatus;
use crate::error::{Code, Failure};
use crate::host::{self, imds};
use crate::plan;
use crate::sys::clock::Deadline;
use crate::sys::fsutil;
use crate::sys::systemd;
use std::time::{Duration, Instant};

/// The whole synchronous part of enable ends within this (the issue allows 10 s; the agent 300 s).
const ENABLE_BUDGET: Duration = Duration::from_secs(9);

/// IMDS within enable: a short attempt, two quick retries, inside the remaining budget.
fn preflight_imds_policy(deadline: &Deadline) -> imds::Policy {
    imds::Policy {
        attempt_timeout: Duration::from_millis(1000),
        pauses: vec![Duration::from_millis(200), Duration::from_millis(500)],
        deadline: deadline.budget(Duration::from_secs(3)),
    }
}

pub fn run(inv: &Invocation) -> i32 {
    let started = Instant::now();
    let deadline = Deadline::after(ENABLE_BUDGET);
    let seq = inv.agent.seq;
    let data = inv.root.data_dir();
    if let Err(e) = fsutil::create_private_dir(&data) {
        return inv.fail(&Failure::state_io(&data, e), vec![]);
    }
    let prev = Store::new(&data).load();
    // A worker already busy with this sequence number: nothing to add.
    if WorkerLock::new(&data)
        .holder()
        .is_some_and(|h| h.seq == seq)
        && wants(&data, seq)
    {
        tracing::info!(seq, "a worker is already running for this sequence number");
        return 0;
    }
    if let Some(code) = nothing_to_do(inv, prev.as_ref(), &deadline) {
        return code;
    }
    // From here on this sequence number is the one wanted: an older worker leaves at its next
    // safe point, whatever happens below.
    if let Err(f) = write_request(&data, &Request::run(seq)) {
        return inv.fail(&f, vec![]);
    }
    let cp = match preflight(inv, prev, &deadline) {
        Ok(cp) => cp,
        Err(code) => return code,
    };
    // A status the agent cannot read is a failure (201): no worker starts behind it.
    let report = inv.report(
        StatusValue::Transitioning,
        "preflight passed; worker starting",
    );
    let subs = stage_substatus(&cp, &Stage::VERIFY_ONLY);
    if let Err(f) = inv.write_status(&report.with_substatus(subs)) {
        return inv.fail(&f, vec![]);
    }
    inv.heartbeat(HeartbeatState::Ready, Code::Success, "enable in progress");
    if let Err(f) = crate::engine::spawn::spawn(inv, deadline.budget(Duration::from_secs(4))) {
        return inv.fail(&f, vec![]);
    }
    tracing::info!(
        seq,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "worker started; enable returns"
    );
    0
}

/// Same sequence number, finished successfully, host still verifies: no work. Returns the
/// exit code when enable is done; `None` when it has to run again.
fn nothing_to_do(inv: &Invocation, prev: Option<&Checkpoint>, deadline: &Deadline) -> Option<i32> {
    let done = finished_here(inv, prev)?;
    let report = quick_health(&inv.root, &done, deadline.budget(Duration::from_secs(2)));
    if !report.healthy {
        tracing::warn!(
            seq = inv.agent.seq,
            "host no longer verifies ({}); running again",
            report.summary
        );
        return None;
    }
    tracing::info!(
        seq = inv.agent.seq,
        "sequence number already applied and the host verifies; nothing to do"
    );
    if let Err(f) = restore_success_status(inv, &done, &report) {
        return Some(inv.fail(&f, vec![]));
    }
    if inv.root.systemd_running()
        && !systemd::is_current(&inv.root, &inv.exe, &inv.agent.handler_dir)
    {
        // After an update the timer still names the old version's binary.
        systemd::install(
            &inv.root,
            &inv.exe,
            &inv.agent.handler_dir,
            deadline.budget(Duration::from_secs(4)),
        );
    }
    inv.heartbeat(HeartbeatState::Ready, Code::Success, &report.summary);
    Some(0)
}

/// Settings and a bounded look at the host. Preflight judges the host as it is now, so it
/// runs on every enable. Its verdict lives in memory only: the checkpoint is written by the
/// worker, under the worker lock, never here (an enable racing a worker would otherwise put
/// back a checkpoint older than the worker's). A refusal is terminal: `Err` is the exit code.
fn preflight(
    inv: &Invocation,
    prev: Option<Checkpoint>,
    deadline: &Deadline,
) -> Result<Checkpoint, i32> {
    let seq = inv.agent.seq;
    // A terminal failure without a worker: record it, and keep the heartbeat truthful.
    let finish_failed = |f: &Failure, subs: Vec<SubStatus>| -> i32 {
        inv.write_mrseq();
        let code = inv.fail(f, subs);
        systemd::install(
            &inv.root,
            &inv.exe,
            &inv.agent.handler_dir,
            deadline.budget(Duration::from_secs(2)),
        );
        code
    };
    let settings = settings::load(&inv.agent, deadline.budget(Duration::from_secs(3)))
        .map_err(|f| finish_failed(&f, vec![]))?;
    let facts = host::detect(&inv.root, Some(&preflight_imds_policy(deadline)), false);
    let refusal = plan::refusal(&facts);
    tracing::info!(seq, refused = refusal.is_some(), "preflight");
    let mut cp = Checkpoint::resume(prev, seq, &settings.fingerprint, &facts.boot_id);
    cp.completed.retain(|s| *s != Stage::Preflight);
    cp.begin(Stage::Preflight);
    if let Some(f) = refusal {
        cp.fail(f.clone());
        return Err(finish_failed(&f, stage_substatus(&cp, &Stage::VERIFY_ONLY)));
    }
    cp.complete(Stage::Preflight);
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enables_imds_attempts_are_short_and_inside_its_budget() {
        let p = preflight_imds_policy(&Deadline::after(ENABLE_BUDGET));
        assert_eq!(p.attempt_timeout, Duration::from_millis(1000));
        assert_eq!(
            p.pauses,
            vec![Duration::from_millis(200), Duration::from_millis(500)]
        );
        assert_eq!(p.deadline, Duration::from_secs(3));
        // With less left than its share, the share shrinks to what is left (200 ms at least).
        let late = preflight_imds_policy(&Deadline::after(Duration::from_millis(1)));
        assert_eq!(late.deadline, Duration::from_millis(200));
        assert_ne!(p.attempt_timeout, imds::Policy::default().attempt_timeout);
    }
}
