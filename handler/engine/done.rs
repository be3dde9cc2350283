//! Has this sequence number already finished here? Shared by enable's no-op path and a worker
//! that finds its work done by another: the checkpoint, mrseq and the kernel must agree, and
//! a cheap health check (sysfs and files, no IMDS) must pass. The status file is then
//! rewritten from the checkpoint if it is missing, corrupt or not a file.

use crate::agent::environment;
use crate::agent::invocation::Invocation;
use crate::agent::status::{self, StatusValue, SubStatus};
use crate::engine::checkpoint::{Checkpoint, Stage};
use crate::engine::stage_substatus;
use crate::error::Failure;
use crate::host::{self, Root};
use crate::stages::verify::{self, HealthReport};
use crate::sys::fsutil;
use std::path::Path;
use std::time::Duration;

/// The health verdict as a substatus entry (its message is the report as JSON).
pub fn health_substatus(report: &HealthReport) -> SubStatus {
    let status = if report.healthy {
        StatusValue::Success
    } else {
        StatusValue::Error
    };
    let json = serde_json::to_string(report).expect("health report serializes");
    SubStatus::new("health", status, report.code, json)
}

/// The cheap verdict for the no-op path: sysfs and file checks only, no IMDS, no processes.
/// The stack is the one the last success verified (with the verbs library looked at again);
/// a checkpoint from before that was recorded asks the host once (`ofed_info`, package lists).
pub fn quick_health(root: &Root, cp: &Checkpoint, ip_timeout: Duration) -> HealthReport {
    let sysfs = host::read_sysfs(root);
    let stack = match &cp.verified_stack {
        Some(s) => Some(host::stack::InstalledStack {
            verbs_library: host::stack::has_verbs_library(root),
            ..s.clone()
        }),
        None => host::stack::detect(root),
    };
    let report = verify::evaluate(
        &sysfs.kernel,
        &sysfs.mellanox,
        &sysfs.modules,
        stack.as_ref(),
        &Default::default(),
    );
    // What configure set up must still be there (after a reboot the addresses are gone until
    // something assigns them again). Asking `ip` costs a few milliseconds, only when needed.
    let unmet = crate::stages::configure::unmet_now(root, &sysfs, || {
        crate::host::ip::addresses_within(ip_timeout)
    });
    report.with_unmet(unmet)
}

/// The stages a checkpoint's run planned, for substatus rebuilt from the checkpoint alone.
fn planned_stages(cp: &Checkpoint) -> Vec<Stage> {
    cp.install_stages
        .clone()
        .unwrap_or_else(|| Stage::VERIFY_ONLY.to_vec())
}

/// This sequence number ended in success on this kernel and mrseq says so.
pub fn finished_here(inv: &Invocation, cp: Option<&Checkpoint>) -> Option<Checkpoint> {
    let cp = cp?;
    let seq = inv.agent.seq;
    // A checkpoint from before verified_kernel existed says nothing about the kernel.
    let same_kernel = cp.verified_kernel.as_deref().is_none_or(|k| {
        fsutil::read_trimmed(&inv.root.path("proc/sys/kernel/osrelease")).as_deref() == Some(k)
    });
    (cp.seq == seq
        && cp.is_terminal_success()
        && same_kernel
        && environment::read_mrseq(&inv.agent.mrseq_path()) == Some(seq))
    .then(|| cp.clone())
}

/// Is the status file for this sequence number a regular file holding a `success` document?
/// Never opens anything else (a FIFO planted there must not block enable).
fn status_says_success(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_file()
        && meta.len() <= 256 * 1024
        && status::read(path).is_some_and(|e| e.status.status == StatusValue::Success)
}

/// The no-op path found the status file missing, corrupt or not a file: write it again from
/// the checkpoint's outcome, so the agent reports what the checkpoint knows.
pub fn restore_success_status(
    inv: &Invocation,
    cp: &Checkpoint,
    report: &HealthReport,
) -> Result<(), Failure> {
    let path = inv.agent.status_path();
    if status_says_success(&path) {
        return Ok(());
    }
    tracing::warn!(path = %path.display(), "status file missing or unreadable; writing it again from the checkpoint");
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        // A directory or other non-file at our status path is garbage in our place.
        let gone = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = gone {
            tracing::error!(path = %path.display(), error = %e, "cannot clear the status path");
        }
    }
    let message = cp
        .outcome
        .as_ref()
        .map(|o| o.message.clone())
        .unwrap_or_else(|| report.summary.clone());
    let mut subs = stage_substatus(cp, &planned_stages(cp));
    subs.push(health_substatus(report));
    inv.write_status(
        &inv.report(StatusValue::Success, message)
            .with_substatus(subs),
    )
}
