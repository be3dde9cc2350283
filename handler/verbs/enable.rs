//! `enable`: the synchronous part the agent waits for (no-op check, settings, a bounded
//! preflight, `transitioning`), and the detached worker that runs the remaining stages.

use crate::agent::{self, AgentContext};
use crate::clock::Deadline;
use crate::engine::{
    remove_downloads, run_engine, stage_substatus, success_summary, Engine, EngineEnd,
};
use crate::error::{Code, Failure};
use crate::events::{self, Level};
use crate::health::{self, HealthReport};
use crate::host::{self, imds, Root};
use crate::lock::WorkerLock;
use crate::logging;
use crate::monitor;
use crate::plan;
use crate::runner::{Checkpoint, RunEnd, Stage, Store};
use crate::settings::{self, Settings};
use crate::status::{HeartbeatState, StatusReport, StatusValue, SubStatus};
use crate::{fsutil, status};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything a verb needs about where it runs.
pub struct Invocation {
    pub agent: AgentContext,
    pub root: Root,
    pub exe: PathBuf,
}

impl Invocation {
    pub fn name(&self) -> String {
        if self.agent.env.name.is_empty() {
            "InfiniBandDriverLinux".into()
        } else {
            self.agent.env.name.clone()
        }
    }

    /// Write this sequence number's status file. A status that cannot be written is a
    /// failure (code 201): the agent would go on showing whatever the old file said.
    #[must_use = "a status that cannot be written is a failure to report"]
    pub fn write_status(&self, report: &StatusReport) -> Result<(), Failure> {
        report.write(&self.agent.status_path()).inspect_err(|f| {
            tracing::error!("cannot write status: {f}");
        })
    }

    pub fn heartbeat(&self, state: HeartbeatState, code: Code, message: &str) {
        if let Err(f) =
            status::write_heartbeat(&self.agent.env.heartbeat_file, state, code, message)
        {
            tracing::warn!("cannot write heartbeat: {f}");
        }
    }

    /// Record a terminal failure everywhere a user may look; returns the exit code. When the
    /// status file cannot take it, that is the failure the exit code reports (14, 201): the
    /// agent then shows our exit code instead of a stale status.
    pub fn fail(&self, operation: &str, f: &Failure, subs: Vec<SubStatus>) -> i32 {
        let written = self
            .write_status(&StatusReport::failure(&self.name(), operation, f).with_substatus(subs));
        self.heartbeat(HeartbeatState::NotReady, f.code, &f.message);
        self.log_failure(operation, f);
        match written {
            Ok(()) => f.code.exit_code(),
            Err(io) => {
                crate::tell!("ibdriver: {f}; and {io}");
                self.log_failure(operation, &io);
                io.code.exit_code()
            }
        }
    }

    /// A failure into our log, the summary log and a telemetry event (not the status file).
    pub fn log_failure(&self, operation: &str, f: &Failure) {
        tracing::error!(code = f.code.number(), "{operation} failed: {}", f.message);
        logging::summary(
            &self.root,
            &format!(
                "{operation} seq={}: error {} {}",
                self.agent.seq,
                f.code.number(),
                f.message
            ),
        );
        events::emit(
            self.agent.env.events_folder.as_deref(),
            &self.agent.version(),
            operation,
            Level::Error,
            &f.to_string(),
            &self.agent.seq.to_string(),
        );
    }

    fn write_mrseq(&self) {
        let p = self.agent.mrseq_path();
        if let Err(e) = fsutil::write_atomic(&p, format!("{}\n", self.agent.seq).as_bytes()) {
            tracing::error!(path = %p.display(), error = %e, "cannot write mrseq");
        }
    }
}

/// What enable asks of the worker; the worker leaves at a safe point once this names another
/// sequence number or asks it to stop (disable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub seq: u64,
    #[serde(default)]
    pub stop: bool,
}

pub fn request_path(data_dir: &Path) -> PathBuf {
    data_dir.join("request.json")
}

pub fn read_request(data_dir: &Path) -> Option<Request> {
    serde_json::from_slice(&fsutil::read_regular(&request_path(data_dir), fsutil::MAX_READ).ok()?)
        .ok()
}

pub fn write_request(data_dir: &Path, req: &Request) -> Result<(), Failure> {
    let p = request_path(data_dir);
    fsutil::write_atomic(&p, &serde_json::to_vec(req).expect("request serializes"))
        .map_err(|e| Failure::state_io(&p, e))
}

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

pub fn health_substatus(report: &HealthReport) -> SubStatus {
    let status = if report.healthy {
        StatusValue::Success
    } else {
        StatusValue::Error
    };
    let json = serde_json::to_string(report).expect("health report serializes");
    SubStatus::new("health", status, report.code.number(), json)
}

/// The cheap verdict for the no-op path: sysfs and file checks only, no IMDS, no processes.
/// The stack is the one the last success verified (with the verbs library looked at again);
/// a checkpoint from before that was recorded asks the host once (`ofed_info`, package lists).
fn quick_health(root: &Root, cp: &Checkpoint, ip_timeout: Duration) -> HealthReport {
    let sysfs = host::read_sysfs(root);
    let stack = match &cp.verified_stack {
        Some(s) => Some(host::stack::InstalledStack {
            verbs_library: host::stack::has_verbs_library(root),
            ..s.clone()
        }),
        None => host::stack::detect(root),
    };
    let report = health::evaluate(
        &sysfs.kernel,
        &sysfs.mellanox,
        &sysfs.modules,
        stack.as_ref(),
        &Default::default(),
    );
    // What configure set up must still be there (after a reboot the addresses are gone until
    // something assigns them again). Asking `ip` costs a few milliseconds, only when needed.
    let unmet = crate::configure::unmet_now(root, &sysfs, || health::addresses_within(ip_timeout));
    report.with_unmet(unmet)
}

/// The stages a checkpoint's run planned, for substatus rebuilt from the checkpoint alone.
fn planned_stages(cp: &Checkpoint) -> Vec<Stage> {
    cp.install_stages.clone().unwrap_or_else(|| {
        vec![
            Stage::Preflight,
            Stage::Repair,
            Stage::Configure,
            Stage::Verify,
        ]
    })
}

/// This sequence number ended in success on this kernel and mrseq says so.
fn finished_here(inv: &Invocation, cp: Option<&Checkpoint>) -> Option<Checkpoint> {
    let cp = cp?;
    let seq = inv.agent.seq;
    // A checkpoint from before verified_kernel existed says nothing about the kernel.
    let same_kernel = cp.verified_kernel.as_deref().is_none_or(|k| {
        fsutil::read_trimmed(&inv.root.path("proc/sys/kernel/osrelease")).as_deref() == Some(k)
    });
    (cp.seq == seq
        && cp.is_terminal_success()
        && same_kernel
        && agent::read_mrseq(&inv.agent.mrseq_path()) == Some(seq))
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
fn restore_success_status(
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
        &StatusReport::new(&inv.name(), "Enable", StatusValue::Success, 0, message)
            .with_substatus(subs),
    )
}

pub fn enable(inv: &Invocation) -> i32 {
    let started = Instant::now();
    let deadline = Deadline::after(ENABLE_BUDGET);
    let seq = inv.agent.seq;
    let data = inv.root.data_dir();
    if let Err(e) = fsutil::create_private_dir(&data) {
        return inv.fail("Enable", &Failure::state_io(&data, e), vec![]);
    }
    let store = Store::new(&data);
    let prev = store.load();
    let lock = WorkerLock::new(&data);

    // A worker already busy with this sequence number: nothing to add.
    if lock.holder().is_some_and(|h| h.seq == seq)
        && read_request(&data).is_some_and(|r| r.seq == seq && !r.stop)
    {
        tracing::info!(seq, "a worker is already running for this sequence number");
        return 0;
    }
    // Same sequence number, finished successfully, host still verifies: no work.
    if let Some(done) = finished_here(inv, prev.as_ref()) {
        let report = quick_health(&inv.root, &done, deadline.budget(Duration::from_secs(2)));
        if report.healthy {
            tracing::info!(
                seq,
                "sequence number already applied and the host verifies; nothing to do"
            );
            if let Err(f) = restore_success_status(inv, &done, &report) {
                return inv.fail("Enable", &f, vec![]);
            }
            if inv.root.systemd_running()
                && !monitor::is_current(&inv.root, &inv.exe, &inv.agent.handler_dir)
            {
                // After an update the timer still names the old version's binary.
                monitor::install(
                    &inv.root,
                    &inv.exe,
                    &inv.agent.handler_dir,
                    deadline.budget(Duration::from_secs(4)),
                );
            }
            inv.heartbeat(HeartbeatState::Ready, Code::Success, &report.summary);
            return 0;
        }
        tracing::warn!(
            seq,
            "host no longer verifies ({}); running again",
            report.summary
        );
    }
    // From here on this sequence number is the one wanted: an older worker leaves at its next
    // safe point, whatever happens below.
    if let Err(f) = write_request(&data, &Request { seq, stop: false }) {
        return inv.fail("Enable", &f, vec![]);
    }
    // A terminal failure without a worker: record it, and keep the heartbeat truthful.
    let finish_failed = |f: &Failure, subs: Vec<SubStatus>| -> i32 {
        inv.write_mrseq();
        let code = inv.fail("Enable", f, subs);
        monitor::install(
            &inv.root,
            &inv.exe,
            &inv.agent.handler_dir,
            deadline.budget(Duration::from_secs(2)),
        );
        code
    };

    let settings = match settings::load(&inv.agent, deadline.budget(Duration::from_secs(3))) {
        Ok(s) => s,
        Err(f) => return finish_failed(&f, vec![]),
    };
    let facts = host::detect(&inv.root, Some(&preflight_imds_policy(&deadline)), false);
    let refusal = plan::refusal(&facts);
    tracing::info!(seq, refused = refusal.is_some(), "preflight");

    // Preflight judges the host as it is now, so it runs on every enable. Its verdict lives in
    // memory only: the checkpoint is written by the worker, under the worker lock, never here
    // (an enable racing a worker would otherwise put back a checkpoint older than the
    // worker's).
    let mut cp = Checkpoint::resume(prev, seq, &settings.fingerprint, &facts.boot_id);
    cp.completed.retain(|s| *s != Stage::Preflight);
    cp.begin(Stage::Preflight);
    let stages = [
        Stage::Preflight,
        Stage::Repair,
        Stage::Configure,
        Stage::Verify,
    ];
    if let Some(f) = refusal {
        cp.fail(f.clone());
        return finish_failed(&f, stage_substatus(&cp, &stages));
    }
    cp.complete(Stage::Preflight);
    // A status the agent cannot read is a failure (201): no worker starts behind it.
    if let Err(f) = inv.write_status(
        &StatusReport::new(
            &inv.name(),
            "Enable",
            StatusValue::Transitioning,
            0,
            "preflight passed; worker starting",
        )
        .with_substatus(stage_substatus(&cp, &stages)),
    ) {
        return inv.fail("Enable", &f, vec![]);
    }
    inv.heartbeat(HeartbeatState::Ready, Code::Success, "enable in progress");
    if let Err(f) = crate::worker::spawn(inv, deadline.budget(Duration::from_secs(4))) {
        return inv.fail("Enable", &f, vec![]);
    }
    tracing::info!(
        seq,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "worker started; enable returns"
    );
    0
}

/// The detached worker for sequence number `inv.agent.seq`.
pub fn worker(inv: &Invocation) -> i32 {
    let seq = inv.agent.seq;
    let data = inv.root.data_dir();
    let wanted = || read_request(&data).is_some_and(|r| r.seq == seq && !r.stop);
    let lock = WorkerLock::new(&data);
    // A second worker for the same sequence number (enable ran twice before the first one
    // took the lock) leaves at once; an older one leaves at its next safe point, so wait.
    let first_try = match lock.try_acquire(seq) {
        Ok(h) => h,
        Err(e) => return inv.fail("Enable", &Failure::state_io(&lock_path(&data), e), vec![]),
    };
    let held = match first_try {
        Some(h) => h,
        None if lock.holder().is_some_and(|h| h.seq == seq) => {
            tracing::info!(seq, "another worker already runs this sequence number");
            return 0;
        }
        // The holder may not have written its record yet when the lock was tried: it is
        // looked at again while waiting, so a duplicate of this sequence number leaves.
        None => match lock.acquire(
            seq,
            Duration::from_secs(900),
            Duration::from_millis(200),
            || !wanted() || lock.holder().is_some_and(|h| h.seq == seq),
        ) {
            Ok(Some(h)) => h,
            Ok(None) if !wanted() => {
                tracing::info!(seq, "superseded before starting");
                return 0;
            }
            Ok(None) if lock.holder().is_some_and(|h| h.seq == seq) => {
                tracing::info!(seq, "another worker already runs this sequence number");
                return 0;
            }
            Ok(None) => {
                let f = Failure::new(
                    Code::WorkerStart,
                    "another worker held the lock for 15 minutes; run enable again",
                );
                return inv.fail("Enable", &f, vec![]);
            }
            Err(e) => return inv.fail("Enable", &Failure::state_io(&lock_path(&data), e), vec![]),
        },
    };
    let _held = held;
    // Checked again under the lock: a disable or a newer sequence number that came while this
    // worker was starting has the last word, so its heartbeat and status stay as it wrote them.
    if !wanted() {
        tracing::info!(
            seq,
            "no longer wanted (disabled or superseded) before starting"
        );
        return 0;
    }
    // Another worker of this sequence number finished while this one waited for the lock
    // (concurrent enables): the work is done, each stage ran once.
    if let Some(done) = finished_here(inv, Store::new(&data).load().as_ref()) {
        let report = quick_health(&inv.root, &done, Duration::from_secs(2));
        if report.healthy {
            tracing::info!(
                seq,
                "another worker completed this sequence number; nothing to do"
            );
            return match restore_success_status(inv, &done, &report) {
                Ok(()) => 0,
                Err(f) => inv.fail("Enable", &f, vec![]),
            };
        }
    }
    let beat = crate::worker::Heartbeat::start(inv.agent.env.heartbeat_file.clone(), {
        let data = data.clone();
        move || read_request(&data).is_some_and(|r| r.seq == seq && !r.stop)
    });

    let settings: Settings = match settings::load(&inv.agent, Duration::from_secs(30)) {
        Ok(s) => s,
        Err(f) => return inv.fail("Enable", &f, vec![]),
    };
    let status_name = inv.name();
    let progress = |line: &str, subs: &[SubStatus]| {
        // A progress line that cannot be written is logged (status.rs); the final status
        // decides the exit code.
        let _ = inv.write_status(
            &StatusReport::new(&status_name, "Enable", StatusValue::Transitioning, 0, line)
                .with_substatus(subs.to_vec()),
        );
        beat.set_message(&format!("enable in progress: {line}"));
    };
    let EngineEnd {
        end,
        mut cp,
        stages,
        report,
        notes: configure_notes,
    } = run_engine(&Engine {
        operation: "Enable",
        store: &Store::new(&data),
        root: &inv.root,
        seq,
        settings: &settings,
        keep_going: &wanted,
        progress: &progress,
    });
    beat.stop();
    let mut subs = stage_substatus(&cp, &stages);
    subs.push(health_substatus(&report));
    match end {
        Ok(RunEnd::Failed(Failure {
            code: Code::Rebooting,
            ..
        })) => {
            tracing::info!(seq, "worker ends: the VM reboots");
            0
        }
        Ok(RunEnd::Stopped)
        | Ok(RunEnd::Failed(Failure {
            code: Code::Superseded,
            ..
        })) => {
            tracing::info!(seq, "stopping at a safe point: superseded or disabled");
            0
        }
        Ok(RunEnd::Failed(f)) => {
            inv.write_mrseq();
            let code = inv.fail("Enable", &f, subs);
            monitor::install(
                &inv.root,
                &inv.exe,
                &inv.agent.handler_dir,
                monitor::SYSTEMCTL_TIMEOUT,
            );
            code
        }
        Err(f) => inv.fail("Enable", &f, subs),
        Ok(RunEnd::Completed) => {
            let summary = success_summary(&report.summary, &data, &configure_notes);
            cp.succeed(summary.clone());
            if let Err(f) = Store::new(&data).save(&mut cp) {
                return inv.fail("Enable", &f, subs);
            }
            remove_downloads(&data);
            // mrseq before the success status: a status that says success always has it.
            inv.write_mrseq();
            // The checkpoint says success; a status that cannot say so is this run's failure
            // (exit 14, 201), and the next enable writes it again from the checkpoint.
            if let Err(f) = inv.write_status(
                &StatusReport::new(
                    &status_name,
                    "Enable",
                    StatusValue::Success,
                    0,
                    summary.clone(),
                )
                .with_substatus(subs.clone()),
            ) {
                return inv.fail("Enable", &f, subs);
            }
            inv.heartbeat(HeartbeatState::Ready, Code::Success, &summary);
            monitor::install(
                &inv.root,
                &inv.exe,
                &inv.agent.handler_dir,
                monitor::SYSTEMCTL_TIMEOUT,
            );
            logging::summary(&inv.root, &format!("Enable seq={seq}: success {summary}"));
            events::emit(
                inv.agent.env.events_folder.as_deref(),
                &inv.agent.version(),
                "Enable",
                Level::Informational,
                &summary,
                &seq.to_string(),
            );
            0
        }
    }
}

fn lock_path(data: &Path) -> PathBuf {
    data.join("worker.lock")
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
